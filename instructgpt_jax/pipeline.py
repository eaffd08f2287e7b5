"""Runs a stage after every earlier stage that the workdir does not hold yet.

`python -m instructgpt_jax.main --config=configs/ppo.py` therefore pretrains the base model,
fine-tunes it, labels comparisons, trains the reward model's base model (pretraining and NLP
tasks) and then the reward model, runs PPO and PPO-ptx, and evaluates,
reusing whatever a previous (possibly preempted) run already finished.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

from absl import logging

from instructgpt_jax import loop, multihost
from instructgpt_jax.workspace import Workspace

# Stage name -> the module that holds its state, its pure step and its `run(ws)`, in order.
STAGE_MODULES = {
  "pretrain": "pretrain",
  "sft": "sft",
  "label": "label",
  # Needs only the data and the tokenizer; placed here so that runs up to SFT or labelling do
  # not pay for it, and its config (configs/rm_base.py) holds the RM's shape that rm reads.
  "rm_base": "rm_base",
  "rm": "rm",
  "ppo": "ppo",
  "dpo": "dpo",
  "eval": "evaluate",
}
STAGES = tuple(STAGE_MODULES)
# Stages beyond the paper that run only when asked for (`--config=configs/dpo.py`), after the
# stages they need and before the evaluation, which then reports them beside whatever else the
# workdir holds.
OPTIONAL_STAGES: dict[str, tuple[str, ...]] = {"dpo": ("pretrain", "sft", "label")}
# The earlier stages a stage's output depends on, where not all of them: rm_base reads only the
# data and the tokenizer, so a retrained SFT policy (or new comparisons) reuses it.
STAGE_NEEDS: dict[str, tuple[str, ...]] = {"rm_base": ()}


def stage_module(name: str) -> types.ModuleType:
  """A stage's module, imported on first use (so `--help` and one stage load only what they
  need). Tools that drive a stage's step (the dry run, the benchmark) look stages up here:
  no stage module imports another."""
  check_stage(name)
  return importlib.import_module(f"instructgpt_jax.{STAGE_MODULES[name]}")


# What each stage does, for the one line the terminal shows when it starts.
STAGE_DOC = {
  "pretrain": "the base model on the plain-text corpus",
  "sft": "fine-tuning on demonstrations",
  "label": "sampling K responses per prompt, ranked by the training labelers",
  "rm_base": "the RM-sized base model: pretraining, the NLP tasks, then the demonstrations",
  "rm": "the reward model on the rankings",
  "ppo": "PPO and PPO-ptx against the reward model",
  "dpo": "DPO on the comparisons, from SFT with SFT as the reference",
  "eval": "every policy, judged by held-out labelers",
}


def headline(summary: dict[str, Any]) -> str:
  """A stage summary's top-level numbers as ": k=v, ..." (at most six), or ""."""
  items = [
    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
    for k, v in summary.items()
    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds"
  ][:6]
  return ": " + ", ".join(items) if items else ""


def _runners() -> dict[str, Callable[[Workspace], dict[str, Any]]]:
  return {name: stage_module(name).run for name in STAGES}


def check_stage(stage: str) -> None:
  if stage not in STAGES:
    raise ValueError(f"Unknown stage {stage!r}; valid stages: {list(STAGES)}.")


def stages_to_run(stage: str) -> list[str]:
  """The stage and everything before it but the optional stages (an optional stage: the stages
  it needs); PPO and DPO are followed by the evaluation report."""
  check_stage(stage)
  if stage in OPTIONAL_STAGES:
    return [*OPTIONAL_STAGES[stage], stage, "eval"]
  todo = [s for s in STAGES[: STAGES.index(stage) + 1] if s == stage or s not in OPTIONAL_STAGES]
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
    needs = STAGE_NEEDS.get(name)
    upstream = run_ids if needs is None else {n: run_ids[n] for n in needs if n in run_ids}
    stale = changed_upstream(done, upstream)
    if done is not None and not stale and not (name == stage and ws.config.overwrite):
      print(f"[{name}] already complete in {stage_dir} (reused)", flush=True)
      summaries[name] = done
      run_ids[name] = done.get("run_id", "")
      continue
    loop.raise_if_preempted(f"before stage {name!r}")
    if done is not None:  # Redo a finished stage from scratch, not from its checkpoint.
      if stale:
        logging.warning("[%s] redone: %s changed since it was made", name, ", ".join(stale))
      else:
        logging.warning("[%s] overwrite: removing the finished stage in %s", name, stage_dir)
      multihost.on_main(f"redo {stage_dir}", functools.partial(shutil.rmtree, stage_dir))
    print(f"[{name}] running ({STAGE_DOC[name]})", flush=True)
    t0 = time.perf_counter()
    summary = dict(runners[name](ws))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["run_id"] = uuid.uuid4().hex
    summary["upstream"] = dict(upstream)
    loop.mark_done(stage_dir, summary)
    logging.info("[%s] done in %.1fs: %s", name, summary["seconds"], summary)
    print(f"[{name}] done in {summary['seconds']:.0f} s{headline(summary)}", flush=True)
    summaries[name] = summary
    run_ids[name] = summary["run_id"]
  return summaries
