"""Runs a stage after every earlier stage that the workdir does not hold yet.

`python -m instructgpt_jax.main --config=configs/ppo.py` therefore pretrains the base model,
fine-tunes it, labels comparisons, trains the reward model, runs PPO and PPO-ptx, and evaluates,
reusing whatever a previous (possibly preempted) run already finished.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable

from absl import logging

from instructgpt_jax import loop
from instructgpt_jax import presets
from instructgpt_jax.workspace import Workspace

STAGES = presets.STAGES


def _runners() -> dict[str, Callable[[Workspace], dict[str, Any]]]:
  # Imported here so that a stage's module (and its dependencies) load only when used.
  from instructgpt_jax import evaluate, label, pretrain, ppo, rm, sft  # pylint: disable=import-outside-toplevel
  return {"pretrain": pretrain.run, "sft": sft.run, "label": label.run, "rm": rm.run,
          "ppo": ppo.run, "eval": evaluate.run}


def check_stage(stage: str) -> None:
  if stage not in STAGES:
    raise ValueError(f"Unknown stage {stage!r}; valid stages: {list(STAGES)}.")


def stages_to_run(stage: str) -> list[str]:
  """The stage and everything before it; PPO is followed by the evaluation report."""
  check_stage(stage)
  todo = list(STAGES[:STAGES.index(stage) + 1])
  if stage == "ppo":
    todo.append("eval")
  return todo


def run(ws: Workspace, stage: str) -> dict[str, Any]:
  """Runs the missing stages up to `stage`; returns {stage: summary}."""
  runners = _runners()
  summaries = {}
  ran = False
  for name in stages_to_run(stage):
    stage_dir = ws.stage_dir(name)
    done = loop.stage_done(stage_dir)
    # The evaluation report is redone whenever a stage it reads was (re)trained in this run.
    rerun = (name == stage and ws.config.overwrite) or (name == "eval" and ran)
    if done is not None and not rerun:
      logging.info("[%s] already complete in %s (reused; --config.overwrite=True redoes the "
                   "requested stage)", name, stage_dir)
      summaries[name] = done
      continue
    loop.raise_if_preempted(f"before stage {name!r}")
    if done is not None:  # Asked to redo a finished stage: from scratch, not from its checkpoint.
      logging.warning("[%s] overwrite: removing the finished stage in %s", name, stage_dir)
      shutil.rmtree(stage_dir)
    ran = True
    t0 = time.perf_counter()
    summary = dict(runners[name](ws))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    loop.mark_done(stage_dir, summary)
    logging.info("[%s] done in %.1fs: %s", name, summary["seconds"], summary)
    summaries[name] = summary
  return summaries
