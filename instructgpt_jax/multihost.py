"""Several processes, one run: the hosts of a TPU pod, or processes on one machine in the tests.

Every process runs the same command and the same code. What differs, and lives here:
- start-up: `jax.distributed.initialize` from `config.sharding` (`initialize`);
- which rows of a global batch a process feeds (`local_rows`), and host copies of arrays that
  span processes (`fetch`);
- files: process 0 writes, the others wait at a barrier and then read (`is_main`, `barrier`,
  `on_main`), and decisions about files are process 0's (`agree`);
- preemption: a SIGTERM to any process makes every process stop at the same step
  (`stop_requested`, through JAX's preemption sync point).

With one process each function is the plain single-host operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

T = TypeVar("T")

# The keys of `config.sharding` passed to `jax.distributed.initialize`; empty values are left to
# JAX, which reads them from the TPU (or Slurm, Open MPI, ...) environment.
_INIT_KEYS = ("coordinator_address", "num_processes", "process_id")


def initialize(sharding_cfg: Any) -> None:
  """`jax.distributed.initialize` when `sharding.distributed` is set; must run before any other
  JAX call. On a TPU pod slice leave the other keys empty: every worker finds the coordinator
  itself. Elsewhere (CPU or GPU hosts, processes on one machine) give all three."""
  if not sharding_cfg.distributed:
    return
  kwargs = {k: sharding_cfg[k] for k in _INIT_KEYS if sharding_cfg.get(k) not in (None, "", -1)}
  jax.distributed.initialize(**kwargs)
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def is_main() -> bool:
  """Process 0, the one that writes files (metrics, DONE records, labels, the report)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier of this name (nothing on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def on_main(name: str, fn: Callable[[], Any]) -> None:
  """Runs `fn` (a write) on process 0, then waits until every process is past it, so that what
  it wrote can be read everywhere."""
  if is_main():
    fn()
  barrier(name)


def agree(flag: bool) -> bool:
  """Process 0's `flag` on every process: for decisions that read files which process 0 may be
  writing (does the tokenizer exist yet?), so that every process takes the same branch."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def fetch(tree: T) -> T:
  """Host numpy copies of a tree of arrays, also of arrays whose shards live on several
  processes (each process gets the whole array)."""

  def get(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)

  return jax.tree.map(get, tree)


def local_rows(batch_sharding: NamedSharding, global_rows: int) -> slice:
  """The rows of a `[global_rows, ...]` batch placed with `batch_sharding` that this process's
  devices hold: the slice of the global batch this process feeds.

  All rows on one process, or on a process per batch shard; rows the mesh repeats on several
  processes are fed by each of them. Raises when a process's rows are not contiguous (a device
  order that interleaves processes along the batch axes).
  """
  if jax.process_count() == 1:
    return slice(0, global_rows)
  index_map = batch_sharding.addressable_devices_indices_map((global_rows,))
  spans = sorted(
    {(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop) for s in index_map.values()}
  )
  lo, hi = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != hi - lo:
    raise ValueError(
      f"Process {jax.process_index()} holds the batch rows {spans} of {global_rows}, which are "
      f"not contiguous on mesh {dict(batch_sharding.mesh.shape)}: order the mesh's devices so "
      "that each process's devices are adjacent along the batch axes."
    )
  return slice(lo, hi)


# Every call of `stop_requested` on every process, in order: all processes make the same calls
# (same code, same steps), so this count names the same point of the run on each of them.
_sync_calls = 0


def stop_requested(local_request: bool) -> bool:
  """Whether the run should save and stop here.

  One process: `local_request` (its SIGTERM handler's flag). Several: JAX's preemption sync
  point, which a SIGTERM to any process triggers; it answers True on every process at the same
  call, the first one after the furthest process's, so all save the same step.
  """
  global _sync_calls
  if jax.process_count() == 1:
    return local_request
  _sync_calls += 1
  return multihost_utils.reached_preemption_sync_point(_sync_calls)
