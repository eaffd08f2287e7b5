"""Mesh construction, logical-axis rules and placement of states and batches on the mesh.

The mesh has three axes (`config.sharding.mesh_axes`): "data" (pure data parallelism), "fsdp"
(data parallelism with parameters and optimizer state sharded along it) and "tensor"
(Megatron-style model parallelism). Parameters, activations, batches and the KV cache are
annotated with logical names (`model.py`, the "batch" rule here); `config.sharding.rules` maps each
logical name to mesh axes, so changing the parallelism of a run is a config change. `use_rules`
makes the rules active while a step is traced, so the activation annotations take effect.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from instructgpt_jax import multihost

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
BATCH = "batch"  # The logical name of a batch's leading axis (data-parallel placement).

Rules = Sequence[tuple[str, Any]]

# Logical name -> mesh axes. Weights: "embed" is FSDP-sharded, the wide dimensions are tensor-
# sharded. Activations: the batch is split over data and fsdp, heads/mlp/vocab over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  (BATCH, BATCH_AXES),
  ("activation_batch", BATCH_AXES),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
  ("activation_kv_heads", "tensor"),  # The KV cache's heads (model.CACHE_AXES).
  ("activation_kv", None),
  ("activation_mlp", "tensor"),
  ("activation_vocab", "tensor"),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("kv", None),
  ("vocab", "tensor"),
  ("pos", None),
  ("norm", None),
  ("scalar", None),
  ("layers", None),
  ("lora_rank", None),  # LoRA adapters' rank axis (lora.py): small, never sharded.
)


def normalize_rules(rules: Rules) -> tuple[tuple[str, Any], ...]:
  """Rules from a config (lists, as ml_collections stores them) as hashable tuples."""
  out = []
  for name, axes in rules:
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def mesh_shape(
  shape: Sequence[int], num_devices: int, axes: Sequence[str] = MESH_AXES
) -> tuple[int, ...]:
  """Resolves one -1 entry to fill `num_devices`; raises a ValueError naming what does not fit.

  A mesh smaller than the device count is allowed when its size divides it (the first devices
  are used); anything else is an error that says which sizes would work.
  """
  shape = tuple(int(s) for s in shape)
  axes = tuple(axes)
  if len(shape) != len(axes):
    raise ValueError(
      f"sharding.mesh_shape={shape} must have {len(axes)} entries for the axes {axes}."
    )
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(
      f"sharding.mesh_shape={shape}: sizes must be positive, with at most one "
      f"-1 (the axis that takes the remaining devices)."
    )
  known = math.prod(s for s in shape if s != -1)
  if num_devices % known:
    raise ValueError(
      f"sharding.mesh_shape={shape} (axes {axes}) does not divide the "
      f"{num_devices} available devices; use sizes whose product divides "
      f"{num_devices}, with -1 for the axis that takes the rest."
    )
  return tuple(num_devices // known if s == -1 else s for s in shape)


def make_mesh(
  shape: Sequence[int],
  devices: Sequence[jax.Device] | None = None,
  axes: Sequence[str] = MESH_AXES,
) -> Mesh:
  """A mesh of `axes` (default ("data", "fsdp", "tensor")) with Auto axes (what linen's logical
  rules use). On several processes the devices come in process order, so each process's share of
  the batch axes is one contiguous block of rows (`multihost.local_rows`)."""
  devices = list(devices if devices is not None else jax.devices())
  axes = tuple(axes)
  resolved = mesh_shape(shape, len(devices), axes)
  if math.prod(resolved) < len(devices):
    logging.warning("Mesh %s uses %d of %d devices.", resolved, math.prod(resolved), len(devices))
    devices = devices[: math.prod(resolved)]
  return jax.make_mesh(resolved, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)


# The rules `constrain` places activations by; set by `use_rules` while a step is traced.
_active_rules: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("rules", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """The mesh and the logical rules, active while steps are traced and run: the activations'
  and the KV cache's logical annotations (`constrain`) then place them."""
  token = _active_rules.set(normalize_rules(rules))
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _active_rules.reset(token)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """`x` placed on the mesh by the active rules' mapping of its logical axis `names`; unchanged
  outside `use_rules`. (Not flax's global `nn.logical_axis_rules`: under those, flax also
  constrains every parameter box as it is created, which breaks on DenseGeneral's flattened
  kernels.)"""
  rules = _active_rules.get()
  if rules is None:
    return x
  return nn.with_logical_constraint(x, names, rules=rules)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` (abstract is fine).

  Unannotated leaves (step counters, scalars) are replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, normalize_rules(rules))
  check_divisible(nn.meta.unbox(boxed_tree), shardings)
  return shardings


def check_divisible(tree: Any, shardings: Any) -> None:
  """Fails early, naming the parameter, when a dimension does not divide its mesh axes."""

  def check(path, leaf, sharding):
    if not hasattr(leaf, "shape") or not isinstance(sharding, NamedSharding):
      return
    for dim, axes in zip(leaf.shape, sharding.spec):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      size = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % size:
        raise ValueError(
          f"{jax.tree_util.keystr(path)} with shape {leaf.shape} cannot be sharded as "
          f"{sharding.spec} on mesh {dict(sharding.mesh.shape)}: {dim} is not divisible by "
          f"{size}. Change the model size, the mesh shape, or sharding.rules."
        )

  jax.tree_util.tree_map_with_path(check, tree, shardings)


def batch_axes(rules: Rules) -> tuple[str, ...]:
  """The mesh axes the "batch" rule splits a batch's leading axis over (() = replicated)."""
  axes = dict(normalize_rules(rules)).get(BATCH)
  if axes is None:
    return ()
  return axes if isinstance(axes, tuple) else (axes,)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Leading axis placed by the "batch" rule, the rest replicated."""
  axes = batch_axes(rules)
  return NamedSharding(mesh, PartitionSpec(axes or None, *([None] * (ndim - 1))))


def process_rows(mesh: Mesh, rules: Rules, global_rows: int) -> slice:
  """The rows of a global batch of `global_rows`, placed by the "batch" rule, that this process
  feeds (all of them on one process)."""
  return multihost.local_rows(batch_sharding(mesh, rules, 1), global_rows)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(
  batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules, global_rows: int | None = None
) -> dict[str, jax.Array]:
  """Places this process's rows of a global batch (`multihost.local_rows`; on one process the
  whole batch) on the mesh; `global_rows` is the global batch size (default: the local rows
  times the processes that share the batch)."""

  def put(x):
    x = np.asarray(x)
    shape = None if global_rows is None else (global_rows, *x.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharding(mesh, rules, x.ndim), x, shape)

  return {k: put(v) for k, v in batch.items()}


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
  """The global batch must be a multiple of this (the data-parallel degree)."""
  return math.prod(mesh.shape[a] for a in batch_axes(rules))


def round_batch(batch_size: int, mesh: Mesh, rules: Rules) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel degree."""
  div = batch_divisor(mesh, rules)
  return -(-batch_size // div) * div
