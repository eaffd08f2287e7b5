"""`--config.dry_run=True`: compile a stage's train step ahead of time, allocating nothing.

For the config's stage (pretrain, sft, rm_base, rm: the stage's `init_state(..., abstract=True)` and
`train_step`; ppo: `ppo.init_state` and `ppo.make_step`, one `ppo_iteration`) the state is a tree
of shardings-carrying ShapeDtypeStructs, and so is the batch: a tree of
`jax.ShapeDtypeStruct`s carrying their shardings on the configured mesh
(`config.sharding.mesh_shape`, `config.sharding.rules`). The step is jitted exactly as
`loop.train` jits it, then `.lower(...)` and `.compile()`d. Reported:

  params                   parameter count(s) of the model(s), from the abstract state
  state_bytes_per_device   bytes of the sharded train state on the most loaded device
                           (computed from shapes and shardings, so known even without compiling)
  flops_per_step           `compiled.cost_analysis()["flops"]` (XLA's count for one device's
                           program; on a loop, XLA may count the body once)
  bytes_per_device         `compiled.memory_analysis()`: argument, output, temp, generated code,
                           alias (donated) sizes, and peak_estimate = argument + output + temp -
                           alias

Big models on a CPU: a mesh needs that many devices, so simulate them with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (N = the mesh size, e.g. 64 for
(1, 8, 8)). Compiling a 175B program for the CPU backend takes long; `compile=False` (used
automatically above `COMPILE_PARAM_LIMIT` parameters unless `compile=True` is passed) stops after
lowering and reports what lowering gives (parameters, state bytes per device from the shardings,
and the lowered module's cost analysis where JAX provides one).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from instructgpt_jax import formats, model_configs, pipeline, sharding, train_state

STAGES = ("pretrain", "sft", "rm_base", "rm", "ppo")
# Above this many parameters the default is to lower only (XLA:CPU compile time grows with size).
COMPILE_PARAM_LIMIT = 2_000_000_000


def _batch_struct(
  shapes: dict[str, tuple[int, ...]], mesh, rules
) -> dict[str, jax.ShapeDtypeStruct]:
  return {
    k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=sharding.batch_sharding(mesh, rules, len(v)))
    for k, v in shapes.items()
  }


def _count(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _bytes_per_device(tree: Any) -> int:
  """Bytes of the largest shard set of an abstract tree with shardings (one device's share)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      total += 8  # a threefry key: two uint32
      continue
    total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
  return int(total)


def _key_struct():
  return jax.eval_shape(lambda: jax.random.key(0))


def build(config: ml_collections.ConfigDict, mesh=None):
  """(jitted step, abstract args, info) for the config's stage on `mesh` (default: configured)."""
  stage = config.stage
  if stage not in STAGES:
    raise ValueError(f"dry_run supports the stages {list(STAGES)}, not {stage!r}.")
  if mesh is None:
    mesh = sharding.make_mesh(config.sharding.mesh_shape, axes=config.sharding.mesh_axes)
  rules = sharding.normalize_rules(config.sharding.rules)
  d = config.data
  info: dict[str, Any] = {
    "stage": stage,
    "preset": config.get("preset"),
    "mesh": dict(mesh.shape),
    "devices": int(mesh.size),
  }

  def round_up(b: int) -> int:
    return sharding.round_batch(int(b), mesh, rules)

  steps = 1000  # Only the schedule's shape depends on it; the compiled step does not.
  stage_lib = pipeline.stage_module(stage)
  models = model_configs.resolve(config)  # An imported checkpoint's own shape, the RM's own.
  if stage in ("pretrain", "sft", "rm_base", "rm"):
    state, shardings = stage_lib.init_state(config, models, mesh, rules, steps, abstract=True)
    seq = d.prompt_len + d.response_len
    b = round_up(config[stage].batch_size)
    if stage == "rm":
      k = formats.MAX_RESPONSES
      shapes = {"tokens": (b, k, seq), "mask": (b, k, seq), "ranks": (b, k)}
      info.update(responses_per_prompt=k)
    else:
      # rm_base's pretraining phase packs text like pretrain (its NLP phase is shorter).
      seq = d.seq_len if stage in ("pretrain", "rm_base") else seq
      shapes = {"tokens": (b, seq), "mask": (b, seq), "loss_mask": (b, seq)}
    jitted = train_state.jit_step(stage_lib.train_step, shardings, mesh)
    args = (state, _batch_struct(shapes, mesh, rules), _key_struct())
    info.update(params=_count(state.params), batch=b, seq=seq)
  else:
    cfg = config.ppo
    vocab = models.policy.vocab_size
    s = stage_lib.make_settings(config, models, eos_id=vocab - 1, pad_id=vocab - 2)
    state, shardings = stage_lib.init_state(config, s, mesh, rules, abstract=True)
    b = round_up(cfg.rollout_batch_size)
    ptx_rows = round_up(cfg.epochs * s.num_minibatches * cfg.ptx_batch_size)
    batch = _batch_struct(
      {
        "prompts": (b, d.prompt_len),
        "prompt_mask": (b, d.prompt_len),
        "tokens": (ptx_rows, d.seq_len),
        "mask": (ptx_rows, d.seq_len),
        "loss_mask": (ptx_rows, d.seq_len),
      },
      mesh,
      rules,
    )
    members = config.rm.ensemble  # The reward model's members, each the value's shape.
    jitted = train_state.jit_step(
      stage_lib.make_step(s),
      shardings,
      mesh,
      const_shardings=(shardings.policy.params, (shardings.value.params,) * members),
    )
    args = (state, batch, _key_struct(), state.policy.params, (state.value.params,) * members)
    info.update(
      params={"policy": _count(state.policy.params), "value": _count(state.value.params)},
      rm_members=members,
      rollout_batch=b,
      prompt_len=d.prompt_len,
      response_len=d.response_len,
      ptx_rows=ptx_rows,
    )
  info["state_bytes_per_device"] = _bytes_per_device(args[0])
  info["args_bytes_per_device"] = _bytes_per_device(args)
  return jitted, args, mesh, rules, info


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) and x else x


def dry_run(
  config: ml_collections.ConfigDict,
  compile: bool | None = None,  # pylint: disable=redefined-builtin
  mesh=None,
) -> dict[str, Any]:
  """Lowers (and by default compiles) the config's train step on abstract arrays; see module doc."""
  jitted, args, mesh, rules, info = build(config, mesh)
  nparams = info["params"] if isinstance(info["params"], int) else sum(info["params"].values())
  if compile is None:
    compile = nparams <= COMPILE_PARAM_LIMIT
  t0 = time.perf_counter()
  with sharding.use_rules(mesh, rules):
    lowered = jitted.lower(*args)
  info["lower_s"] = round(time.perf_counter() - t0, 3)
  if not compile:
    info["compiled"] = False
    try:
      cost = _first(lowered.cost_analysis())
      if cost and "flops" in cost:
        info["flops_per_step_lowered"] = float(cost["flops"])
    except Exception as e:  # pylint: disable=broad-except
      info["lowered_cost_analysis_error"] = f"{type(e).__name__}: {e}"[:200]
    info["note"] = (
      "lowered only (not compiled): flops from the unpartitioned module where "
      "available; bytes per device from the shardings"
    )
    return info
  t0 = time.perf_counter()
  compiled = lowered.compile()
  info["compile_s"] = round(time.perf_counter() - t0, 3)
  info["compiled"] = True
  cost = _first(compiled.cost_analysis())
  if cost:
    info["flops_per_step"] = float(cost.get("flops", float("nan")))
    if "bytes accessed" in cost:
      info["bytes_accessed_per_step"] = float(cost["bytes accessed"])
  mem = compiled.memory_analysis()
  if mem is not None:
    fields = {
      "argument": "argument_size_in_bytes",
      "output": "output_size_in_bytes",
      "temp": "temp_size_in_bytes",
      "generated_code": "generated_code_size_in_bytes",
      "alias": "alias_size_in_bytes",
    }
    per_dev = {k: int(getattr(mem, f, 0) or 0) for k, f in fields.items()}
    per_dev["peak_estimate"] = (
      per_dev["argument"] + per_dev["output"] + per_dev["temp"] - per_dev["alias"]
    )
    info["bytes_per_device"] = per_dev
  return info
