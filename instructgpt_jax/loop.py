"""The supervised training loop shared by pretrain, sft and rm, and the stage bookkeeping.

One readable loop: resume from the newest checkpoint (state + data position), run the jitted
pure step, stop on a non-finite metric, log, checkpoint, and on SIGTERM save and exit cleanly.
Randomness is `fold_in(seed_key, step)`, so a resumed run draws the same numbers as an
uninterrupted one without storing an RNG.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from instructgpt_jax import checkpoint as ckpt_lib
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax import sharding

DONE_FILE = "DONE.json"


class Preempted(Exception):
  """Raised after a SIGTERM-triggered checkpoint was written; main exits 0."""


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN/inf; the message names the step, metric and last checkpoint."""


class PreemptionGuard:
  """The first SIGTERM asks the loop to save and stop at the next step boundary; a second exits."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "PreemptionGuard":
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a notebook worker): no handler.
      self._previous = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.requested:
      os._exit(143)  # pylint: disable=protected-access
    self.requested = True
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def stage_done(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def mark_done(stage_dir: str, summary: Mapping[str, Any]) -> None:
  os.makedirs(stage_dir, exist_ok=True)
  tmp = os.path.join(stage_dir, DONE_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(dict(summary), f, indent=2)
  os.replace(tmp, os.path.join(stage_dir, DONE_FILE))


def encode_iterator_state(state: Any) -> Any:
  """grain iterator states are bytes; JSON needs text."""
  if isinstance(state, bytes):
    return {"b64": base64.b64encode(state).decode("ascii")}
  return state


def decode_iterator_state(state: Any) -> Any:
  if isinstance(state, dict) and set(state) == {"b64"}:
    return base64.b64decode(state["b64"])
  return state


def check_finite(step: int, metrics: Mapping[str, Any], last_checkpoint: str) -> None:
  for name, value in metrics.items():
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
      raise NonFiniteError(
          f"Non-finite {name}={arr.tolist()} at step {step}. Stopped without saving this "
          f"state; the last good checkpoint is {last_checkpoint}. Lower the learning rate, "
          f"check the batch, or set on_nonfinite='skip' to drop such updates.")


def train(*, name: str, stage_dir: str, state: Any, state_shardings: Any,
          step_fn: Callable[[Any, Any, jax.Array], tuple[Any, Any]], batches: Iterator,
          total_steps: int, mesh: Mesh, seed: int, loop_cfg: Any,
          extra_meta: Mapping[str, Any] | None = None, const_args: tuple = (),
          const_shardings: tuple = ()) -> tuple[Any, list[dict[str, Any]]]:
  """Runs `step_fn` from the newest checkpoint in `stage_dir/ckpt` to `total_steps`.

  `step_fn(state, batch, rng, *const_args) -> (state, metrics)`. `const_args` are arrays the
  step reads but never changes (PPO's frozen reference and reward models); they are passed as
  arguments, not closed over, so they are not baked into the program or checkpointed.
  `batches` must have `get_state()`/`set_state()` (a grain iterator) so the data position is
  checkpointed. Returns the final state and the logged metric rows of this invocation.
  """
  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "ckpt"), keep=loop_cfg.keep_checkpoints,
                               save_every=loop_cfg.checkpoint_every)
  start = 0
  if ckpt.latest_step() is not None:
    start, state, meta = ckpt.restore(ckpt_lib.abstract_like(state, state_shardings))
    batches.set_state(decode_iterator_state(meta["data"]))
    logging.info("[%s] resumed from %s at step %d", name, ckpt.directory, start)
  writer = metrics_lib.MetricWriter(stage_dir, resume_step=start)
  progress = metrics_lib.Progress(name, total_steps, start)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, None, None, *const_shardings),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))
  base_key = jax.random.key(seed)
  rows = []
  saved = start

  def meta() -> dict[str, Any]:
    return {"data": encode_iterator_state(batches.get_state()), **(extra_meta or {})}

  try:
    with PreemptionGuard() as guard, jax.set_mesh(mesh):
      t0 = time.perf_counter()
      for step in range(start, total_steps):
        batch = sharding.shard_batch(next(batches), mesh)
        state, m = jitted(state, batch, jax.random.fold_in(base_key, step), *const_args)
        m = jax.device_get(m)
        last = ckpt.latest_step()
        check_finite(step + 1, m, f"{ckpt.directory}/{last}" if last is not None else "none")
        if (step + 1) % loop_cfg.log_every == 0 or step + 1 == total_steps:
          m = dict(m, steps_per_s=(step + 1 - start) / (time.perf_counter() - t0))
          rows.append(writer.write(step + 1, m))
          progress.update(step + 1, m)
        if ckpt.save(step + 1, state, meta()):
          saved = step + 1
        if guard.requested:
          if saved != step + 1:
            ckpt.save(step + 1, state, meta(), force=True)
          ckpt.wait()
          raise Preempted(f"[{name}] preempted: checkpoint for step {step + 1} saved in "
                          f"{ckpt.directory}; re-run the same command to resume.")
      if saved != total_steps:
        ckpt.save(total_steps, state, meta(), force=True)
  finally:
    ckpt.close()
    writer.close()
  return state, rows


def infinite_epochs_steps(num_examples: int, batch_size: int, epochs: float) -> int:
  """Optimizer steps for `epochs` passes over `num_examples` (at least one)."""
  return max(1, math.ceil(num_examples * epochs / batch_size))
