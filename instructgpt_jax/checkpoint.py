"""Checkpoints through orbax-checkpoint: array state plus a JSON record of everything else.

Each checkpoint holds `state` (any pytree of arrays: train states, value states, EMA ...) and
`meta` (JSON: data-iterator position, KL-controller value, running statistics, config digest).
Saves are asynchronous; orbax writes into a temporary directory and renames it when complete, so
a kill in the middle of a write leaves no checkpoint that looks finished. Restores go onto the
current mesh whatever mesh saved them, because the target shardings come from the caller.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  """A checkpoint could not be read or written; the message says where and why."""


class Checkpointer:
  """Save every `save_every` steps (and whenever forced), keep the last `keep`."""

  def __init__(self, directory: str, keep: int = 3, save_every: int = 1,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(int(save_every), 1),
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
    """Starts an (async) save; returns whether one was started at this step."""
    try:
      return self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)), force=force)
    except OSError as e:  # A full disk or a lost mount: the previous checkpoints are kept.
      raise CheckpointError(f"Could not write checkpoint {step} under {self.directory}: {e}. "
                            f"The previous checkpoints {self.all_steps()} are untouched.") from e

  def wait(self) -> None:
    """Blocks until pending async saves are on disk (re-raising their errors)."""
    try:
      self._manager.wait_until_finished()
    except OSError as e:
      raise CheckpointError(f"Writing a checkpoint under {self.directory} failed: {e}. "
                            f"Complete checkpoints: {self.all_steps()}.") from e

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """Restores onto the shardings of `abstract_state` (a tree of `jax.ShapeDtypeStruct`).

    Without `step`, takes the newest checkpoint that reads back completely; a damaged newest
    one is skipped with a warning. Raises CheckpointError naming the directory if none can.
    """
    steps = [step] if step is not None else list(reversed(self.all_steps()))
    if not steps:
      raise CheckpointError(f"No checkpoint found under {self.directory}.")
    errors = []
    for s in steps:
      try:
        restored = self._manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                       meta=ocp.args.JsonRestore()))
        if errors:
          logging.warning("Resumed from checkpoint %d after skipping: %s", s, "; ".join(errors))
        return s, restored["state"], dict(restored["meta"] or {})
      except Exception as e:  # pylint: disable=broad-except
        msg = f"checkpoint {s} in {self.directory} is unreadable ({type(e).__name__}: {e})"
        logging.warning("Skipping %s", msg)
        errors.append(msg)
    raise CheckpointError("No checkpoint could be restored: " + "; ".join(errors))

  def close(self) -> None:
    self.wait()
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s with the given shardings: the restore target for `tree`'s structure."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def restore_params(directory: str, abstract_params: Any) -> Any:
  """Parameters only, from the newest complete checkpoint of a finished stage's `ckpt` dir.

  Used to start a stage from the previous one (SFT from the base model, RM from SFT ...). The
  checkpoint's state must have a `params` entry; other entries are not read.
  """
  if not os.path.isdir(directory):
    raise CheckpointError(f"Checkpoint directory {directory} does not exist; run the stage that "
                          f"writes it first (or point the config at it).")
  mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "meta"))
  step = mngr.latest_step()
  if step is None:
    raise CheckpointError(f"No checkpoint found under {directory}.")
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": abstract_params},
          restore_args=jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                                    {"params": abstract_params}),
          partial_restore=True)))
  mngr.close()
  return restored["state"]["params"]
