"""Checkpoints through orbax-checkpoint: array state plus a JSON record of everything else.

Each checkpoint holds `state` (any pytree of arrays: train states, value states, EMA ...) and
`meta` (JSON: data-iterator position, KL-controller value, running statistics, config digest).
Saves are asynchronous; orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when
complete, so a kill in the middle of a write leaves no checkpoint that looks finished (the
leftover temporary directory is ignored and removed when the directory is opened again).
Restores go onto the current mesh whatever mesh saved them, because the target shardings come
from the caller.

Failure behaviour (tests/test_reliability.py):
- a newest checkpoint that does not read back (damaged, truncated) is skipped with a warning,
  the one before is used, and the damaged one is moved to `<dir>_damaged/` so the step can be
  written again;
- a checkpoint whose parameter tree differs from the configured model is refused with the list
  of differing parameters (not an orbax stack trace), and no older checkpoint is tried;
- a failed write (full disk, lost mount) raises `CheckpointError` naming the step and the last
  complete checkpoint, which stays intact.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from instructgpt_jax import multihost


class CheckpointError(RuntimeError):
  """A checkpoint could not be read or written; the message says where and why."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint holds a different parameter tree (another model shape) than the target."""


_DISK_HINTS = ("no space left", "file too large", "disk quota", "quota exceeded")


def _write_error_hint(e: BaseException) -> str:
  text = str(e).lower()
  if getattr(e, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
    h in text for h in _DISK_HINTS
  ):
    return " The disk looks full: free space (or lower keep_checkpoints) and re-run to resume."
  return ""


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """{'params/layer_0/...': shape} for the array leaves of an abstract or metadata tree.

  Paths are normalised to names ("opt_state/1/0/mu/...") because the target is a tree of
  dataclasses and named tuples while a checkpoint's metadata is nested dicts and lists.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = getattr(leaf, "shape", None)
    out["/".join(_key_name(k) for k in path)] = tuple(shape) if shape is not None else None
  return out


def _params_first(keys: Any) -> list[str]:
  return sorted(keys, key=lambda k: (not (k.startswith("params") or "/params/" in k), k))


def structure_differences(expected: Any, saved: Any) -> list[str]:
  """Human-readable differences between the target tree and a checkpoint's metadata tree.

  Parameters are listed before optimizer state; at most 8 entries of each kind are named.
  """
  exp, got = _shapes(expected), _shapes(saved)
  problems = []
  shapes = [
    f"{k}: model {exp[k]}, checkpoint {got[k]}"
    for k in _params_first(set(exp) & set(got))
    if exp[k] is not None and got[k] is not None and exp[k] != got[k]
  ]
  if shapes:
    problems.append(
      f"{len(shapes)} shape mismatches: "
      + "; ".join(shapes[:8])
      + (" ..." if len(shapes) > 8 else "")
    )
  missing = _params_first(set(exp) - set(got))
  extra = _params_first(set(got) - set(exp))
  if missing:
    problems.append(
      f"{len(missing)} entries missing from the checkpoint: {missing[:8]}"
      f"{' ...' if len(missing) > 8 else ''}"
    )
  if extra:
    problems.append(
      f"{len(extra)} entries not in the model: {extra[:8]}{' ...' if len(extra) > 8 else ''}"
    )
  return problems


def _mismatch_error(directory: str, step: int, problems: list[str]) -> CheckpointMismatchError:
  return CheckpointMismatchError(
    f"Checkpoint {step} in {directory} was made for another model: "
    + "; ".join(problems)
    + ". Check config.model (and the stage it comes from) against the run that wrote it, "
    "or use a fresh --workdir."
  )


def _remove_tmp_dirs(directory: str) -> None:
  """Deletes `<step>.orbax-checkpoint-tmp*` left by a kill mid-write, before the manager opens.

  Done here, synchronously: orbax's own clean-up may still be running when a save of the same
  step starts.
  """
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if ".orbax-checkpoint-tmp" in name:
      logging.warning("Removing the incomplete checkpoint %s/%s", directory, name)
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _manager(
  directory: str, keep: int = 3, save_every: int = 1, async_save: bool = True, partial: bool = False
) -> ocp.CheckpointManager:
  _remove_tmp_dirs(directory)
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    save_interval_steps=max(int(save_every), 1),
    enable_async_checkpointing=async_save,
    create=True,
    # A kill during a write leaves `<step>.orbax-checkpoint-tmp`; remove it when reopening.
    cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(
    directory,
    options=options,
    item_names=("state", "meta"),
    # PyTreeCheckpointHandler reads what StandardSave wrote and can restore a subtree.
    item_handlers={
      "state": (ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler()),
      "meta": ocp.JsonCheckpointHandler(),
    },
  )


def _saved_tree(manager: ocp.CheckpointManager, step: int) -> Any | None:
  """The checkpoint's array metadata tree, or None when it cannot be read (damaged)."""
  try:
    md = manager.item_metadata(step)
    tree = md["state"] if md is not None else None
    return getattr(tree, "tree", tree)
  except Exception:  # pylint: disable=broad-except
    return None


class Checkpointer:
  """Save every `save_every` steps (and whenever forced), keep the last `keep`."""

  def __init__(self, directory: str, keep: int = 3, save_every: int = 1, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    try:
      self._manager = _manager(self.directory, keep, save_every, async_save)
    except OSError as e:
      raise CheckpointError(
        f"Cannot open checkpoint directory {self.directory}: {e}." + _write_error_hint(e)
      ) from e

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
    """Starts an (async) save; returns whether one was started at this step.

    An earlier async save that failed in the background surfaces here (orbax waits for it).
    """
    try:
      return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
        f"Could not write checkpoint {step} (or finish an earlier asynchronous save) under "
        f"{self.directory}: {type(e).__name__}: "
        f"{e}. The last complete checkpoint is {self._last_complete()}; it is untouched."
        + _write_error_hint(e)
      ) from e

  def _last_complete(self) -> str:
    try:
      self._manager.reload()
      steps = self.all_steps()
    except Exception:  # pylint: disable=broad-except
      steps = []
    return os.path.join(self.directory, str(steps[-1])) if steps else "none"

  def wait(self) -> None:
    """Blocks until pending async saves are on disk (re-raising their errors)."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
        f"Writing a checkpoint under {self.directory} failed: {type(e).__name__}: {e}. "
        f"The last complete checkpoint is {self._last_complete()}; it is untouched."
        + _write_error_hint(e)
      ) from e

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """Restores onto the shardings of `abstract_state` (a tree of `jax.ShapeDtypeStruct`).

    Without `step`, takes the newest checkpoint that reads back completely; a damaged newest
    one is skipped with a warning and moved to `<directory>_damaged/`. A checkpoint of another
    model shape raises `CheckpointMismatchError` at once. Raises CheckpointError naming the
    directory if none can be read.
    """
    steps = [step] if step is not None else list(reversed(self.all_steps()))
    if not steps:
      raise CheckpointError(f"No checkpoint found under {self.directory}.")
    errors, damaged = [], []
    for s in steps:
      saved = _saved_tree(self._manager, s)
      if saved is not None:
        problems = structure_differences(abstract_state, saved)
        if problems:
          raise _mismatch_error(self.directory, s, problems)
      try:
        restored = self._manager.restore(
          s,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
          ),
        )
        meta = restored["meta"]
        if not isinstance(meta, dict):
          raise ValueError(f"meta is {type(meta).__name__}, not a JSON object")
      except Exception as e:  # pylint: disable=broad-except
        msg = (
          f"checkpoint {s} in {self.directory} is unreadable ({type(e).__name__}: {str(e)[:300]})"
        )
        logging.warning("Skipping %s", msg)
        errors.append(msg)
        damaged.append(s)
        continue
      if errors:
        moved = [self._move_aside(d) for d in damaged]
        warning = (
          f"WARNING: resumed from checkpoint {s} in {self.directory} after skipping "
          f"damaged newer checkpoints (moved to {moved}): " + "; ".join(errors)
        )
        logging.warning(warning)
        print(warning, flush=True)
      return s, restored["state"], dict(meta)
    raise CheckpointError(
      "No checkpoint could be restored: "
      + "; ".join(errors)
      + ". Delete the directory to start the stage again."
    )

  def _move_aside(self, step: int) -> str:
    """Moves a damaged step out of the way (kept for inspection) so it can be rewritten."""
    src = os.path.join(self.directory, str(step))
    dst_dir = self.directory + "_damaged"
    dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
    if multihost.is_main():  # Every process restores; one moves the files.
      os.makedirs(dst_dir, exist_ok=True)
      try:
        shutil.move(src, dst)
      except OSError as e:
        logging.warning("Could not move %s aside (%s); deleting it.", src, e)
        shutil.rmtree(src, ignore_errors=True)
        dst = "(deleted)"
    multihost.barrier(f"moved aside {src}")
    self._manager.reload()
    return dst

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s with the given shardings: the restore target for `tree`'s structure."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def restore_params(directory: str, abstract_params: Any) -> Any:
  """Parameters only, from the newest complete checkpoint of a finished stage's `ckpt` dir.

  Used to start a stage from the previous one (SFT from the base model, RM from SFT ...). The
  checkpoint's state must have a `params` entry; other entries are not read. A checkpoint of
  another model shape raises `CheckpointMismatchError` listing the differing parameters.
  """
  if not os.path.isdir(directory):
    raise CheckpointError(
      f"Checkpoint directory {directory} does not exist; run the stage that "
      f"writes it first (or point the config at it)."
    )
  directory = os.path.abspath(directory)
  mngr = _manager(directory, partial=True)
  try:
    step = mngr.latest_step()
    if step is None:
      raise CheckpointError(f"No complete checkpoint found under {directory}.")
    saved = _saved_tree(mngr, step)
    if saved is not None:
      if not isinstance(saved, dict) or "params" not in saved:
        raise CheckpointError(f"Checkpoint {step} in {directory} has no 'params' entry.")
      problems = structure_differences(abstract_params, saved["params"])
      if problems:
        raise _mismatch_error(directory, step, problems)
    try:
      restored = mngr.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            item={"params": abstract_params},
            restore_args=jax.tree.map(
              lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), {"params": abstract_params}
            ),
            partial_restore=True,
          )
        ),
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
        f"Checkpoint {step} in {directory} could not be read ({type(e).__name__}: "
        f"{str(e)[:300]}). Re-run the stage that wrote it (delete its DONE.json) or restore "
        f"the directory from a backup."
      ) from e
  finally:
    mngr.close()
  return restored["state"]["params"]
