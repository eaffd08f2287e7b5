"""Optimizers from config and sharded train states.

The state is flax's `TrainState` (step, params, opt_state; apply_fn and tx are static), created
directly into its shardings on the mesh: shapes come from `jax.eval_shape`, specs from the logical
axis names the model put on its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from flax.training import train_state as flax_train_state
from jax.sharding import Mesh

from instructgpt_jax import lora, settings, sharding
from instructgpt_jax import model as model_lib

TrainState = flax_train_state.TrainState
SCHEDULES = ("cosine", "constant", "linear")


def check_optim(section: ml_collections.ConfigDict, path: str) -> None:
  """An optimizer section (configs/common.py `optim`) at config path `path`, e.g. "sft.optim"."""
  settings.positive(section, path, "lr", "eps")
  settings.one_of(section, path, "schedule", SCHEDULES)
  settings.non_negative(section, path, "warmup_steps", "weight_decay", "clip_norm")
  settings.fraction(section, path, "end_lr_fraction", low_open=False, high_open=False)
  settings.fraction(section, path, "warmup_init_fraction", low_open=False, high_open=False)
  settings.fraction(section, path, "b1", low_open=False, high_open=True)
  settings.fraction(section, path, "b2", low_open=False, high_open=True)
  steps = section.grad_accum_steps
  settings.require(
    isinstance(steps, int) and steps >= 1, f"{path}.grad_accum_steps", steps, "must be >= 1"
  )


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer step.

  cosine: warmup then cosine decay to `end_lr_fraction * lr` at `total_steps` (paper: to 10 %).
  constant: warmup from `warmup_init_fraction * lr`, then constant (paper's PPO).
  linear: warmup then linear decay to `end_lr_fraction * lr` (0 anneals to zero).
  """
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={cfg.schedule!r} is not one of {list(SCHEDULES)}.")
  lr, warmup = cfg.lr, int(cfg.warmup_steps)
  init = lr * cfg.warmup_init_fraction
  end = lr * cfg.end_lr_fraction
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_fraction)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  else:
    after = optax.constant_schedule(lr)
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(init, lr, warmup), after], [warmup])


def make_optimizer(
  cfg: ml_collections.ConfigDict, total_steps: int, skip_nonfinite: bool = False
) -> optax.GradientTransformation:
  """AdamW (paper: beta = (0.9, 0.95)) after global-norm clipping, with optional accumulation.

  With `skip_nonfinite`, an update whose gradient holds a NaN/inf is dropped and counted
  (`optax.apply_if_finite`) instead of stopping the run.
  """
  tx = optax.chain(
    optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
    optax.adamw(
      make_schedule(cfg, total_steps),
      b1=cfg.b1,
      b2=cfg.b2,
      eps=cfg.eps,
      weight_decay=cfg.weight_decay,
    ),
  )
  if skip_nonfinite:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(cfg.grad_accum_steps))
  return tx


def create_train_state(
  model_cfg: model_lib.ModelConfig,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules: Any,
  rng: jax.Array,
  params: Any | None = None,
  *,
  abstract: bool = False,
  lora_cfg: lora.LoraConfig | None = None,
) -> tuple[TrainState, Any]:
  """A train state on the mesh, fresh or around given (unboxed) `params`; returns (state, shardings).

  Given params are resharded to the rules of this model (e.g. SFT weights onto an RM mesh).
  `abstract=True` returns the state as ShapeDtypeStructs carrying their shardings and allocates
  nothing (the dry run compiles steps on it). With an enabled `lora_cfg` the state's params are
  fresh LoRA adapters for this model (`lora.boxed_adapters`; the base is passed to the step).
  """
  apply_fn = model_lib.Transformer(model_cfg).apply
  adapters = lora_cfg is not None and lora_cfg.enabled
  if adapters and params is not None:
    raise ValueError("A LoRA train state starts from fresh adapters; pass the base to the step.")

  def boxed_state(rng_or_params, fresh: bool):
    if fresh and adapters:
      p = lora.boxed_adapters(model_cfg, lora_cfg, rng_or_params)
    else:
      p = model_lib.boxed_params(model_cfg, rng_or_params) if fresh else rng_or_params
    return TrainState.create(apply_fn=apply_fn, params=p, tx=tx)

  boxed = jax.eval_shape(lambda r: boxed_state(r, True), rng)
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  if abstract:
    structs = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed),
      shardings,
    )
    return structs, shardings
  # No mesh context here: flax would constrain DenseGeneral kernels while they are still flat.
  if params is None:
    state = jax.jit(lambda r: nn.meta.unbox(boxed_state(r, True)), out_shardings=shardings)(rng)
  else:
    check_same_structure(shardings.params, params, "initial parameters")
    params = jax.device_put(params, shardings.params)
    state = jax.jit(lambda p: boxed_state(p, False), out_shardings=shardings)(params)
  return state, shardings


def check_same_structure(expected: Any, got: Any, what: str) -> None:
  """Raises a ValueError listing the parameters that are missing, extra or of another shape."""
  exp = {
    jax.tree_util.keystr(k): getattr(v, "shape", None)
    for k, v in jax.tree_util.tree_leaves_with_path(expected)
  }
  got_ = {
    jax.tree_util.keystr(k): getattr(v, "shape", None)
    for k, v in jax.tree_util.tree_leaves_with_path(got)
  }
  missing = sorted(set(exp) - set(got_))
  extra = sorted(set(got_) - set(exp))
  problems = []
  if missing:
    problems.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
  if extra:
    problems.append(f"unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''}")
  shapes = [
    f"{k}: expected {exp[k]}, got {got_[k]}"
    for k in sorted(set(exp) & set(got_))
    if exp[k] is not None and got_[k] is not None and tuple(exp[k]) != tuple(got_[k])
  ]
  if shapes:
    problems.append("shape mismatch " + "; ".join(shapes[:8]))
  if problems:
    raise ValueError(
      f"The {what} do not match the configured model: "
      + ", ".join(problems)
      + ". Check config.model against the model that produced them."
    )


def param_shardings(model_cfg: model_lib.ModelConfig, mesh: Mesh, rules: Any) -> Any:
  """Shardings of a model's (unboxed) parameter tree, without allocating it."""
  abstract = jax.eval_shape(lambda r: model_lib.boxed_params(model_cfg, r), jax.random.key(0))
  return sharding.logical_shardings(abstract, mesh, rules)


def place_params(params: Any, model_cfg: model_lib.ModelConfig, mesh: Mesh, rules: Any) -> Any:
  """Puts (possibly host or differently sharded) params on the mesh with this model's rules."""
  shardings = param_shardings(model_cfg, mesh, rules)
  check_same_structure(shardings, params, "parameters")
  return jax.device_put(params, shardings)


def jit_step(
  step_fn: Callable,
  state_shardings: Any,
  mesh: Mesh,
  donate: bool = True,
  const_shardings: tuple = (),
) -> Callable:
  """`jax.jit(step_fn)` for `(state, batch, rng, *consts) -> (state, metrics)` with shardings.

  The state keeps its shardings (and is donated), the batch keeps the sharding it was put on
  (`sharding.shard_batch`), `consts` (frozen models) get `const_shardings`; metrics are
  replicated.
  """
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, None, None, *const_shardings),
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnums=(0,) if donate else (),
  )
