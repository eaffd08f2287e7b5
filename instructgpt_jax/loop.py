"""The training loop every stage shares (pretrain, sft, rm_base, rm, ppo), and the stage
bookkeeping.

One readable loop: resume from the newest checkpoint (state + data position), run the jitted
pure step, stop on a non-finite metric, log, checkpoint, and on SIGTERM save and exit cleanly.
Randomness is `fold_in(seed_key, step)`, so a resumed run draws the same numbers as an
uninterrupted one without storing an RNG. On several processes every process runs the loop on
its rows of each batch, all stop at the same step after a SIGTERM to any of them
(`multihost.stop_requested`), and process 0 writes the metrics and DONE records.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from instructgpt_jax import checkpoint as ckpt_lib
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax import multihost, settings, sharding, train_state

DONE_FILE = "DONE.json"


class Preempted(Exception):
  """Raised after a SIGTERM-triggered checkpoint was written; main exits 0."""


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN/inf; the message names the step, metric and last checkpoint."""


class PreemptionGuard:
  """The first SIGTERM asks the loop to save and stop at the next step boundary; a second exits.

  Process-wide: main installs one around the whole pipeline, so a SIGTERM that arrives between
  training loops (data preparation, labelling, evaluation) stops the run at the next stage or
  step boundary too. Nested guards (the loop's own) share the outer one's flag. On several
  processes no handler is installed: JAX's preemption service holds SIGTERM and tells every
  process (`multihost.stop_requested`).
  """

  _active: PreemptionGuard | None = None

  def __init__(self):
    self.requested = False
    self._previous = None
    self._outer: PreemptionGuard | None = None

  def __enter__(self) -> PreemptionGuard:
    self._outer = PreemptionGuard._active
    if self._outer is not None:  # Share the installed handler's flag.
      return self._outer
    if jax.process_count() > 1:  # JAX's preemption service handles SIGTERM.
      PreemptionGuard._active = self
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a notebook worker): no handler.
      self._previous = None
      return self
    PreemptionGuard._active = self
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.requested:
      print("Second SIGTERM: exiting now without saving.", file=sys.stderr, flush=True)
      os._exit(143)  # pylint: disable=protected-access
    self.requested = True
    logging.warning(
      "SIGTERM received: saving a checkpoint at the next step boundary "
      "(a second SIGTERM exits at once)."
    )

  def __exit__(self, *exc) -> None:
    if self._outer is not None:
      return
    if PreemptionGuard._active is self:
      PreemptionGuard._active = None
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def preemption_requested() -> bool:
  """Whether to stop here: this process's SIGTERM flag, or on several processes the point that
  all of them agree on (call it at the same places on every process)."""
  guard = PreemptionGuard._active  # pylint: disable=protected-access
  return multihost.stop_requested(guard is not None and guard.requested)


def raise_if_preempted(where: str) -> None:
  """Between stages: stop cleanly (exit 0) if a SIGTERM arrived; finished stages are kept."""
  if preemption_requested():
    raise Preempted(
      f"preempted {where}; every finished stage and checkpoint is kept; re-run "
      f"the same command to continue."
    )


def stage_done(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def mark_done(stage_dir: str, summary: Mapping[str, Any]) -> None:
  """Records a finished stage, once every process has finished it; process 0 writes."""

  def write():
    os.makedirs(stage_dir, exist_ok=True)
    write_json(os.path.join(stage_dir, DONE_FILE), dict(summary), indent=2)

  multihost.barrier(f"finished {stage_dir}")
  multihost.on_main(f"marked {stage_dir}", write)


def write_json(path: str, obj: Any, indent: int | None = None) -> None:
  """Writes `obj` as JSON so that a crash leaves the old file or the new one, never a torn one."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def encode_iterator_state(state: Any) -> Any:
  """grain iterator states are bytes; JSON needs text."""
  if isinstance(state, bytes):
    return {"b64": base64.b64encode(state).decode("ascii")}
  return state


def decode_iterator_state(state: Any) -> Any:
  if isinstance(state, dict) and set(state) == {"b64"}:
    return base64.b64decode(state["b64"])
  return state


ON_NONFINITE = ("stop", "skip")


def check_loop(section: ml_collections.ConfigDict, path: str, batch_divisor: int) -> None:
  """A training loop's section (configs/common.py `loop`) at config path `path`; its batch must
  split evenly over the mesh's `batch_divisor` data-parallel shards."""
  settings.divides(section, path, "batch_size", batch_divisor, "the mesh's data-parallel shards")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    value = section[key]
    settings.require(isinstance(value, int) and value >= 1, f"{path}.{key}", value, "must be >= 1")
  settings.one_of(section, path, "on_nonfinite", ON_NONFINITE)


def _nonfinite(metrics: Mapping[str, Any]) -> list[str]:
  bad = []
  for name, value in metrics.items():
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
      bad.append(f"{name}={arr.tolist()}")
  return bad


def check_finite(step: int, metrics: Mapping[str, Any], last_checkpoint: str) -> None:
  """Raises NonFiniteError naming the step, the offending metrics and the last checkpoint."""
  bad = _nonfinite(metrics)
  if bad:
    raise NonFiniteError(
      f"Non-finite {', '.join(bad)} at step {step}. Stopped without saving this "
      f"state; the last good checkpoint is {last_checkpoint}. Lower the learning rate, "
      f"check the batch, or set on_nonfinite='skip' to drop such updates."
    )


def _skip_states(tree: Any) -> list[Any]:
  """The optax.apply_if_finite states inside a train state (PPO has two)."""
  is_skip = lambda x: isinstance(x, optax.ApplyIfFiniteState)
  return [x for x in jax.tree.leaves(tree, is_leaf=is_skip) if is_skip(x)]


def skipped_updates(state: Any) -> int:
  """Updates dropped so far by `on_nonfinite="skip"` (optax.apply_if_finite's counter)."""
  return int(sum(int(jax.device_get(s.total_notfinite)) for s in _skip_states(state)))


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [
    x
    for x in jax.tree.leaves(tree)
    if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)
  ]
  if not leaves:
    return jax.numpy.asarray(True)
  return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))


def train(
  *,
  name: str,
  stage_dir: str,
  state: Any,
  state_shardings: Any,
  step_fn: Callable[[Any, Any, jax.Array], tuple[Any, Any]],
  batches: Iterator,
  total_steps: int,
  mesh: Mesh,
  rules: sharding.Rules,
  seed: int,
  loop_cfg: Any,
  const_args: tuple = (),
  const_shardings: tuple = (),
  after_step: Callable[[int, Any], None] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
  """Runs `step_fn` from the newest checkpoint in `stage_dir/ckpt` to `total_steps`.

  `step_fn(state, batch, rng, *const_args) -> (state, metrics)`. `const_args` are arrays the
  step reads but never changes (PPO's frozen reference and reward models); they are passed as
  arguments, not closed over, so they are not baked into the program or checkpointed.
  `batches` must have `get_state()`/`set_state()` (a grain iterator) so the data position is
  checkpointed; it yields this process's rows of each global batch (`Workspace.batches`),
  which `rules`' "batch" entry places on the mesh. Returns the final state and every logged
  metric row of the run (rows written before a resume included, read back from metrics.jsonl),
  so summaries do not depend on whether the run was interrupted.
  `after_step(step, state)`, if given, runs after each step (steps count from 1), e.g. to keep
  the parameters of chosen steps.

  Faults: a non-finite metric stops the stage before the state can be saved
  (`NonFiniteError`), unless `loop_cfg.on_nonfinite == "skip"`, where the optimizer drops the
  update and the running count is logged as `skipped_updates`; the state is also checked to be
  finite before every save. A SIGTERM saves at the next step boundary and raises `Preempted`.
  """
  on_nonfinite = loop_cfg.get("on_nonfinite", "stop") if hasattr(loop_cfg, "get") else "stop"
  if on_nonfinite not in ON_NONFINITE:
    raise ValueError(f"{name}.on_nonfinite={on_nonfinite!r} is not one of {list(ON_NONFINITE)}.")
  skip = on_nonfinite == "skip"
  if skip and not _skip_states(state):
    raise ValueError(
      f"{name}.on_nonfinite='skip' but the optimizer does not skip non-finite "
      f"updates (build it with train_state.make_optimizer(..., skip_nonfinite="
      f"True))."
    )
  ckpt = ckpt_lib.Checkpointer(
    os.path.join(stage_dir, "ckpt"),
    keep=loop_cfg.keep_checkpoints,
    save_every=loop_cfg.checkpoint_every,
  )
  writer = None
  try:
    start = 0
    if ckpt.latest_step() is not None:
      start, state, meta = ckpt.restore(ckpt_lib.abstract_like(state, state_shardings))
      if "data" not in meta:
        raise ckpt_lib.CheckpointError(
          f"Checkpoint {start} in {ckpt.directory} has no data position (meta keys {sorted(meta)})."
        )
      batches.set_state(decode_iterator_state(meta["data"]))
      msg = f"[{name}] resumed from {ckpt.directory}/{start} (step {start} of {total_steps})"
      logging.info(msg)
      print(msg, file=sys.stderr, flush=True)
    writer = metrics_lib.MetricWriter(stage_dir, resume_step=start, write=multihost.is_main())
    # Rows of the steps before `start` (process 0 may not have cut off later ones yet).
    rows = [r for r in metrics_lib.read_metrics(writer.path) if r.get("step", 0) <= start]
    progress = metrics_lib.Progress(name, total_steps, start)
    jitted = train_state.jit_step(step_fn, state_shardings, mesh, const_shardings=const_shardings)
    base_key = jax.random.key(seed)
    saved = start

    def meta() -> dict[str, Any]:
      return {"data": encode_iterator_state(batches.get_state())}

    def last_checkpoint() -> str:
      last = ckpt.latest_step()
      return f"{ckpt.directory}/{last}" if last is not None else "none (no checkpoint yet)"

    def save(step: int, force: bool = False) -> bool:
      # Never write a non-finite state, whatever the metrics said.
      if not bool(multihost.fetch(_all_finite(state))):
        raise NonFiniteError(
          f"The {name} state became non-finite at step {step} (every logged metric was "
          f"finite). Stopped without saving it; the last good checkpoint is "
          f"{last_checkpoint()}. Lower the learning rate."
        )
      return ckpt.save(step, state, meta(), force=force)

    with PreemptionGuard(), sharding.use_rules(mesh, rules):
      t0 = time.perf_counter()
      for step in range(start, total_steps):
        if preemption_requested():
          if step == 0:
            raise Preempted(
              f"[{name}] preempted before its first step; nothing to save. "
              f"Re-run the same command to continue."
            )
          if saved != step:
            save(step, force=True)
          ckpt.wait()
          raise Preempted(
            f"[{name}] preempted: checkpoint for step {step} saved in "
            f"{ckpt.directory}/{step}; re-run the same command to resume."
          )
        batch = sharding.shard_batch(next(batches), mesh, rules)
        state, m = jitted(state, batch, jax.random.fold_in(base_key, step), *const_args)
        m = dict(multihost.fetch(m))
        bad = _nonfinite(m)
        if bad and not skip:
          check_finite(step + 1, m, last_checkpoint())
        if skip:
          m["skipped_updates"] = skipped_updates(state)
          if bad:
            logging.warning(
              "[%s] step %d: non-finite %s; the update was skipped (%d so far).",
              name,
              step + 1,
              ", ".join(bad),
              m["skipped_updates"],
            )
        if (step + 1) % loop_cfg.log_every == 0 or step + 1 == total_steps:
          m = dict(m, steps_per_s=(step + 1 - start) / (time.perf_counter() - t0))
          rows.append(writer.write(step + 1, m))
          progress.update(step + 1, m)
        if after_step is not None:
          after_step(step + 1, state)
        if (step + 1 == total_steps or ckpt.should_save(step + 1)) and save(
          step + 1, force=step + 1 == total_steps
        ):
          saved = step + 1
  except BaseException:
    try:
      ckpt.close()  # Finishes an in-flight save of an earlier (good) step.
    except Exception as e:  # pylint: disable=broad-except
      logging.error("While stopping: %s", e)
    raise
  else:
    ckpt.close()
  finally:
    if writer is not None:
      writer.close()
  return state, rows


def steps_for_epochs(num_examples: int, batch_size: int, epochs: float) -> int:
  """Optimizer steps for `epochs` passes over `num_examples` (at least one)."""
  return max(1, math.ceil(num_examples * epochs / batch_size))
