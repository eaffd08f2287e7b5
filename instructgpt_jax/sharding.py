"""Mesh construction, logical-axis rules and placement of states and batches on the mesh.

The mesh has three axes: "data" (pure data parallelism), "fsdp" (data parallelism with parameters
and optimizer state sharded along it) and "tensor" (Megatron-style model parallelism). Parameters
and activations are annotated with logical names in `model.py`; `config.sharding.rules` maps each
logical name to mesh axes, so changing the parallelism of a run is a config change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]

# Logical name -> mesh axes. Weights: "embed" is FSDP-sharded, the wide dimensions are tensor-
# sharded. Activations: the batch is split over data and fsdp, heads/mlp/vocab over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", BATCH_AXES),
  ("activation_batch", BATCH_AXES),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
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
)


def normalize_rules(rules: Rules) -> tuple[tuple[str, Any], ...]:
  """Rules from a config (lists, as ml_collections stores them) as hashable tuples."""
  out = []
  for name, axes in rules:
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry to fill `num_devices`; raises a ValueError naming what does not fit.

  A mesh smaller than the device count is allowed when its size divides it (the first devices
  are used); anything else is an error that says which sizes would work.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(
      f"sharding.mesh_shape={shape} must have {len(MESH_AXES)} entries for the axes {MESH_AXES}."
    )
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(
      f"sharding.mesh_shape={shape}: sizes must be positive, with at most one "
      f"-1 (the axis that takes the remaining devices)."
    )
  known = math.prod(s for s in shape if s != -1)
  if num_devices % known:
    raise ValueError(
      f"sharding.mesh_shape={shape} (axes {MESH_AXES}) does not divide the "
      f"{num_devices} available devices; use sizes whose product divides "
      f"{num_devices}, with -1 for the axis that takes the rest."
    )
  return tuple(num_devices // known if s == -1 else s for s in shape)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh with Auto axes (what linen's logical rules use)."""
  devices = list(devices if devices is not None else jax.devices())
  resolved = mesh_shape(shape, len(devices))
  if math.prod(resolved) < len(devices):
    logging.warning("Mesh %s uses %d of %d devices.", resolved, math.prod(resolved), len(devices))
    devices = devices[: math.prod(resolved)]
  return jax.make_mesh(
    resolved, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def maybe_initialize_distributed(enabled: bool) -> None:
  """Multi-host start: every host of a TPU pod slice runs the same command."""
  if enabled:
    jax.distributed.initialize()
    logging.info(
      "jax.distributed: process %d of %d, %d local / %d global devices",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
    )


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


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading axis split over ("data", "fsdp"), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh (each process passes its local part of the global batch)."""

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

  return {k: put(v) for k, v in batch.items()}


def batch_divisor(mesh: Mesh) -> int:
  """The global batch must be a multiple of this (the data-parallel degree)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def round_batch(batch_size: int, mesh: Mesh) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel degree."""
  div = batch_divisor(mesh)
  return -(-batch_size // div) * div
