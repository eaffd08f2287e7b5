"""Runs a stage after every earlier stage that the workdir does not hold yet.

`python -m instructgpt_jax.main --config=configs/ppo.py` therefore pretrains the base model,
fine-tunes it, labels comparisons, trains the reward model's base model (pretraining and NLP
tasks) and then the reward model, runs PPO and PPO-ptx, and evaluates,
reusing whatever a previous (possibly preempted) run already finished.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import time
import types
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import logging

from instructgpt_jax import loop, multihost, settings
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
# Settings whose change only adds policies beside the finished ones: the stage is extended in
# place (ppo trains each policy into its own directory and skips the finished ones).
EXTENDED_BY: dict[str, tuple[str, ...]] = {
  "ppo": ("ppo.estimator", "ppo.variants", "ppo.group_size")
}
# Stages whose saved parts carry a fingerprint of what made them (evaluate.py's per-policy
# files): a change of their settings or inputs redoes them in place, reusing what still holds.
REDONE_IN_PLACE = ("eval",)


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


def stage_settings(config: Any, name: str) -> dict[str, Any]:
  """The settings that shape stage `name` (settings.of_stage), recorded in its DONE.json."""
  return settings.of_stage(config, settings.STAGE_SETTINGS[name])


def check_settings(ws: Workspace, stage: str) -> None:
  """The run's model and data settings and its files (`Workspace.check_settings`), then every
  stage the run will do checks its own (`<module>.check_settings(ws)`), so a bad value is
  refused in one line before any stage starts."""
  ws.check_settings()
  for name in stages_to_run(stage):
    if name == "pretrain" and ws.hf_base:
      continue
    stage_module(name).check_settings(ws)


class Action(NamedTuple):
  """What the run does with one stage: "reuse" it, "run" it (nothing finished), "redo" it from
  scratch, or "extend" it in place (add the missing policies, or re-evaluate what changed)."""

  name: str
  action: str
  reason: str = ""


def plan(ws: Workspace, stage: str) -> list[Action]:
  """What the run will do with each stage, decided before any of them starts.

  A finished stage is reused unless an earlier stage is redone (its inputs changed), its
  settings changed, or it is the requested stage with `overwrite`. Changed settings that only
  add policies (EXTENDED_BY) extend it; those of a stage whose saved parts are fingerprinted
  (REDONE_IN_PLACE) redo it in place; any other change is refused with the differing keys,
  unless `overwrite` is set, which then redoes every stage whose settings changed.
  """
  overwrite = bool(ws.config.overwrite)
  actions, run_ids, refused = [], {}, []
  for name in stages_to_run(stage):
    if name == "pretrain" and ws.hf_base:
      run_ids[name] = ws.config.model.init
      continue
    done = loop.stage_done(ws.stage_dir(name))
    needs = STAGE_NEEDS.get(name)
    upstream = run_ids if needs is None else {n: run_ids[n] for n in needs if n in run_ids}
    if done is None:
      action = Action(name, "run")
    else:
      diffs = settings.differences(done.get("settings"), stage_settings(ws.config, name))
      extends = bool(diffs) and set(diffs) <= set(EXTENDED_BY.get(name, ()))
      if extends:
        # Only which policies to train changed: the finished ones it reuses must still match.
        parts = stage_module(name).finished_part_differences(ws)
        diffs = {f"{part}: {key}": diff for part, d in parts.items() for key, diff in d.items()}
        extends = not diffs
      stale = changed_upstream(done, upstream)
      action = _action_for_finished(
        name, diffs, stale, extends, overwrite and name == stage, overwrite
      )
      if action is None:
        refused.append(f"[{name}] {settings.describe(diffs)}")
        action = Action(name, "reuse")
    actions.append(action)
    # A stage that runs again gets a new run id, so every stage built on it is stale.
    run_ids[name] = done.get("run_id", "") if action.action == "reuse" else f"new:{name}"
  if refused:
    raise settings.SettingError(
      f"finished stages in {ws.workdir} were built with other settings: {'; '.join(refused)}. "
      "Add --config.overwrite=True to redo them (and the stages built on them), or use a new "
      "--workdir."
    )
  return actions


def _action_for_finished(
  name: str,
  diffs: dict,
  stale: list[str],
  extends: bool,
  requested_overwrite: bool,
  overwrite: bool,
) -> Action | None:
  """The Action for a finished stage (None: refused, its settings changed). `extends`: the
  settings changed only in which policies it trains (EXTENDED_BY)."""
  if requested_overwrite:
    return Action(name, "redo", "overwrite")
  if name in REDONE_IN_PLACE and (stale or diffs):
    changed = stale or list(diffs)
    return Action(name, "extend", f"{', '.join(changed)} changed since it was made")
  if stale:
    return Action(name, "redo", f"{', '.join(stale)} changed since it was made")
  if extends:
    return Action(name, "extend", "training the policies it lacks")
  if not diffs:
    return Action(name, "reuse")
  if overwrite:
    return Action(name, "redo", f"settings changed: {settings.describe(diffs)}")
  return None


def run(ws: Workspace, stage: str) -> dict[str, Any]:
  """Runs the missing stages up to `stage`; returns {stage: summary}.

  Every setting of those stages is checked first, and what each stage will do is decided
  (`plan`) before any of them starts. A finished stage is reused unless an earlier stage was
  redone since it was made (for example SFT retrained with `--config.overwrite=True`): then it
  is redone too, so a report never mixes a new SFT policy with a reward model trained on the
  old one's samples.
  """
  check_settings(ws, stage)
  actions = plan(ws, stage)
  runners = _runners()
  summaries: dict[str, Any] = {}
  run_ids: dict[str, str] = {}  # Current run of every stage handled so far.
  if ws.hf_base and "pretrain" in stages_to_run(stage):
    # The imported checkpoint is the base model; its path identifies it for later stages.
    logging.info("[pretrain] skipped: model.init=%s is the base model", ws.config.model.init)
    summaries["pretrain"] = {"init": ws.config.model.init}
    run_ids["pretrain"] = ws.config.model.init
  for name, action, reason in actions:
    stage_dir = ws.stage_dir(name)
    needs = STAGE_NEEDS.get(name)
    upstream = run_ids if needs is None else {n: run_ids[n] for n in needs if n in run_ids}
    if action == "reuse":
      done = loop.stage_done(stage_dir) or {}
      print(f"[{name}] already complete in {stage_dir} (reused)", flush=True)
      summaries[name] = done
      run_ids[name] = done.get("run_id", "")
      continue
    loop.raise_if_preempted(f"before stage {name!r}")
    if action == "redo":  # From scratch, not from its checkpoint.
      logging.warning(
        "[%s] redone (%s): removing the finished stage in %s", name, reason, stage_dir
      )
      multihost.on_main(f"redo {stage_dir}", functools.partial(shutil.rmtree, stage_dir))
    elif action == "extend":  # Its finished parts stay and are reused where still valid.
      print(f"[{name}] extended: {reason}", flush=True)
      done_file = os.path.join(stage_dir, loop.DONE_FILE)
      multihost.on_main(f"extend {stage_dir}", functools.partial(os.remove, done_file))
    print(f"[{name}] running ({STAGE_DOC[name]})", flush=True)
    t0 = time.perf_counter()
    summary = dict(runners[name](ws))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["run_id"] = uuid.uuid4().hex
    summary["upstream"] = dict(upstream)
    summary["settings"] = stage_settings(ws.config, name)
    loop.mark_done(stage_dir, summary)
    logging.info("[%s] done in %.1fs: %s", name, summary["seconds"], summary)
    print(f"[{name}] done in {summary['seconds']:.0f} s{headline(summary)}", flush=True)
    summaries[name] = summary
    run_ids[name] = summary["run_id"]
  return summaries
