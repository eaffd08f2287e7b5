"""Runs a stage after every earlier stage that the workdir does not hold yet.

`python -m instructgpt_jax.main --config=configs/ppo.py` therefore pretrains the base model,
fine-tunes it, labels comparisons, trains the reward model, runs PPO and PPO-ptx, and evaluates,
reusing whatever a previous (possibly preempted) run already finished.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from absl import logging

from instructgpt_jax import loop, presets
from instructgpt_jax.workspace import Workspace

STAGES = presets.STAGES


def _runners() -> dict[str, Callable[[Workspace], dict[str, Any]]]:
  # Imported here so that a stage's module (and its dependencies) load only when used.
  from instructgpt_jax import evaluate, label, ppo, pretrain, rm, sft  # pylint: disable=import-outside-toplevel

  return {
    "pretrain": pretrain.run,
    "sft": sft.run,
    "label": label.run,
    "rm": rm.run,
    "ppo": ppo.run,
    "eval": evaluate.run,
  }


def check_stage(stage: str) -> None:
  if stage not in STAGES:
    raise ValueError(f"Unknown stage {stage!r}; valid stages: {list(STAGES)}.")


def stages_to_run(stage: str) -> list[str]:
  """The stage and everything before it; PPO is followed by the evaluation report."""
  check_stage(stage)
  todo = list(STAGES[: STAGES.index(stage) + 1])
  if stage == "ppo":
    todo.append("eval")
  return todo


def changed_upstream(done: dict[str, Any] | None, run_ids: dict[str, str]) -> list[str]:
  """The earlier stages whose finished run differs from the one `done` was built from.

  `done` is a stage's DONE record; `run_ids` the current run id of every earlier stage. Records
  written without the `upstream` key (older workdirs) are trusted.
  """
  upstream = (done or {}).get("upstream")
  if upstream is None:
    return []
  return [name for name, run_id in run_ids.items() if upstream.get(name) != run_id]


def run(ws: Workspace, stage: str) -> dict[str, Any]:
  """Runs the missing stages up to `stage`; returns {stage: summary}.

  A finished stage is reused unless an earlier stage was redone since it was made (for example
  SFT retrained with `--config.overwrite=True`): then it is redone too, so a report never mixes
  a new SFT policy with a reward model trained on the old one's samples.
  """
  runners = _runners()
  summaries = {}
  run_ids: dict[str, str] = {}  # Current run of every stage handled so far.
  for name in stages_to_run(stage):
    if name == "pretrain" and ws.hf_base:
      # The imported checkpoint is the base model; its path identifies it for later stages.
      logging.info("[pretrain] skipped: model.init=%s is the base model", ws.config.model.init)
      summaries[name] = {"init": ws.config.model.init}
      run_ids[name] = ws.config.model.init
      continue
    stage_dir = ws.stage_dir(name)
    done = loop.stage_done(stage_dir)
    stale = changed_upstream(done, run_ids)
    if done is not None and not stale and not (name == stage and ws.config.overwrite):
      logging.info(
        "[%s] already complete in %s (reused; --config.overwrite=True redoes the requested stage)",
        name,
        stage_dir,
      )
      summaries[name] = done
      run_ids[name] = done.get("run_id", "")
      continue
    loop.raise_if_preempted(f"before stage {name!r}")
    if done is not None:  # Redo a finished stage from scratch, not from its checkpoint.
      if stale:
        logging.warning("[%s] redone: %s changed since it was made", name, ", ".join(stale))
      else:
        logging.warning("[%s] overwrite: removing the finished stage in %s", name, stage_dir)
      shutil.rmtree(stage_dir)
    t0 = time.perf_counter()
    summary = dict(runners[name](ws))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["run_id"] = uuid.uuid4().hex
    summary["upstream"] = dict(run_ids)
    loop.mark_done(stage_dir, summary)
    logging.info("[%s] done in %.1fs: %s", name, summary["seconds"], summary)
    summaries[name] = summary
    run_ids[name] = summary["run_id"]
  return summaries
