"""Stage "ppo": PPO with the pretraining mix (PPO-ptx) against the reward model.

    objective = E[r(x,y) - beta * log(pi_RL(y|x) / pi_SFT(y|x))] + gamma * E_pretrain[log pi_RL(x)]

`ppo_iteration` is one pure, jit-compiled program: rollout (KV-cache sampling), scoring
(reference log-probs, RM score at the EOS, values), per-token KL rewards, GAE and advantage
whitening, then `epochs x minibatches` clipped policy/value updates as a `lax.scan`. The ptx
term's gradient is added to the PPO gradient of the same minibatch (one update), as in the paper.
`ptx_coef = 0` is plain PPO. The policy starts from SFT, the value function from the RM.

Alignment of per-token arrays: the response occupies slots [P, P+R) of the sequence. The
log-prob of the token in slot t comes from the logits at t-1, and so does its value estimate
(the state before the token was emitted): both are read from the slice [P-1, P+R-1).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from instructgpt_jax import (
  inputs,
  loop,
  losses,
  model_configs,
  objectives,
  sampling,
  seeds,
  settings,
  sharding,
  train_state,
)
from instructgpt_jax import lora as lora_lib
from instructgpt_jax import model as model_lib
from instructgpt_jax.workspace import (
  Workspace,
  ppo_policy_name,
  ppo_snapshot_stage,
  ppo_snapshot_steps,
)

TrainState = train_state.TrainState
VARIANTS = ("ppo", "ppo_ptx")
# The advantage estimator (`ppo.estimator`): the paper's GAE with a value function, or, beyond
# the paper, RLOO and GRPO, which sample `ppo.group_size` responses per prompt and need no value.
ESTIMATORS = ("gae", "rloo", "grpo")


@flax.struct.dataclass
class PPOState:
  policy: TrainState
  value: TrainState
  kl_coef: jax.Array  # Fixed (paper) unless the adaptive controller is on.


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """What one PPO iteration's compiled program is specialised on (hashable, static).

  `ppo` is the frozen `config.ppo` section with `ptx_coef` set for the variant: every PPO number
  is read from it where it is used, so a new setting is one line in configs/ppo.py and one read
  in the function that needs it. It holds no `kl_coef`: the coefficient in use is
  `PPOState.kl_coef`, which the adaptive controller changes during training, so a frozen copy of
  the initial value would go stale (`config.ppo.kl_coef` only initialises the state). The rest
  is what the config does not hold: the model shapes and the tokenizer's ids.
  """

  ppo: ml_collections.FrozenConfigDict
  policy_cfg: model_lib.ModelConfig
  value_cfg: model_lib.ModelConfig
  prompt_len: int
  response_len: int
  eos_id: int
  pad_id: int

  @property
  def lora(self) -> lora_lib.LoraConfig:
    """`ppo.lora`: with a rank, the policy trains adapters on SFT, which is also the reference."""
    return lora_lib.LoraConfig.from_config(self.ppo.lora, "ppo")

  @property
  def num_minibatches(self) -> int:
    return self.ppo.rollout_batch_size // self.ppo.minibatch_size

  @property
  def group_size(self) -> int:
    """Responses sampled per prompt: 1 for GAE, `ppo.group_size` for RLOO and GRPO."""
    return 1 if self.ppo.estimator == "gae" else self.ppo.group_size


def ptx_coef_of(config: ml_collections.ConfigDict, variant: str) -> float:
  """ "ppo" is plain PPO (gamma = 0); "ppo_ptx" uses `config.ppo.ptx_coef`."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown ppo.variants entry {variant!r}; valid: {list(VARIANTS)}.")
  return float(config.ppo.ptx_coef) if variant == "ppo_ptx" else 0.0


def check_section(cfg: ml_collections.ConfigDict) -> None:
  """`config.ppo`'s values and how its batch sizes divide each other (the mesh is checked by
  `check_settings`)."""
  settings.positive(cfg, "ppo", "iterations", "epochs", "temperature", "kl_target", "kl_horizon")
  settings.non_negative(cfg, "ppo", "kl_coef", "ptx_coef", "vf_coef", "snapshot_every")
  for key in ("clip_eps", "value_clip_eps"):
    settings.fraction(cfg, "ppo", key, low_open=True, high_open=True)
  for key in ("gamma", "lam"):
    settings.fraction(cfg, "ppo", key, low_open=False, high_open=False)
  settings.one_of(cfg, "ppo", "estimator", ESTIMATORS)
  for variant in cfg.variants:
    valid = f"every entry must be one of {list(VARIANTS)}"
    settings.require(variant in VARIANTS, "ppo.variants", tuple(cfg.variants), valid)
  settings.positive(cfg, "ppo", "minibatch_size", "ptx_batch_size")
  settings.divides(
    cfg, "ppo", "rollout_batch_size", cfg.minibatch_size, f"ppo.minibatch_size={cfg.minibatch_size}"
  )
  if cfg.estimator != "gae":
    settings.require(
      isinstance(cfg.group_size, int) and cfg.group_size >= 2,
      "ppo.group_size",
      cfg.group_size,
      f"ppo.estimator={cfg.estimator!r} needs at least 2 samples per prompt",
    )
    settings.divides(
      cfg, "ppo", "rollout_batch_size", cfg.group_size, f"ppo.group_size={cfg.group_size}"
    )


def check_settings(ws: Workspace) -> None:
  """This stage's section against the run's mesh, before any stage starts."""
  cfg = ws.config.ppo
  check_section(cfg)
  train_state.check_optim(cfg.optim, "ppo.optim")
  train_state.check_optim(cfg.value_optim, "ppo.value_optim")
  lora_lib.LoraConfig.from_config(cfg.lora, "ppo")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    settings.positive(cfg, "ppo", key)
  settings.one_of(cfg, "ppo", "on_nonfinite", loop.ON_NONFINITE)
  group = 1 if cfg.estimator == "gae" else cfg.group_size
  shards = ws.batch_divisor
  settings.require(
    (cfg.rollout_batch_size // group) % shards == 0,
    "ppo.rollout_batch_size // ppo.group_size",
    cfg.rollout_batch_size // group,
    f"prompts per rollout must split over the mesh's {shards} data-parallel shards; raise "
    "ppo.rollout_batch_size or lower ppo.group_size",
  )


def make_settings(
  config: ml_collections.ConfigDict,
  models: model_configs.ModelConfigs,
  eos_id: int,
  pad_id: int,
  variant: str = "ppo_ptx",
) -> PPOSettings:
  """The static settings of `variant`'s PPO iteration from the full config and the run's
  models (the policy's, and the value function's, which is the RM's)."""
  cfg = config.ppo
  check_section(cfg)
  section = cfg.copy_and_resolve_references()
  section.ptx_coef = ptx_coef_of(config, variant)
  with section.unlocked():  # main locks the config.
    del section["kl_coef"]  # Lives in PPOState.kl_coef (see PPOSettings).
  return PPOSettings(
    ppo=ml_collections.FrozenConfigDict(section),
    policy_cfg=models.policy,
    value_cfg=models.value,
    prompt_len=config.data.prompt_len,
    response_len=config.data.response_len,
    eos_id=eos_id,
    pad_id=pad_id,
  )


def init_state(
  config: ml_collections.ConfigDict,
  s: PPOSettings,
  mesh: Mesh,
  rules: Any,
  policy_params: Any | None = None,
  value_params: Any | None = None,
  *,
  abstract: bool = False,
) -> tuple[PPOState, PPOState]:
  """The policy (from `policy_params`, SFT) and the value function (from `value_params`, the
  RM) with their optimizers, and the KL coefficient, on the mesh; returns (state, shardings).

  `abstract=True` gives ShapeDtypeStructs with shardings (dry run; nothing allocated).
  """
  cfg = config.ppo
  skip = cfg.on_nonfinite == "skip"
  updates = cfg.iterations * s.num_minibatches
  policy, policy_sh = train_state.create_train_state(
    s.policy_cfg,
    train_state.make_optimizer(cfg.optim, updates, skip),
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "ppo.init")),
    None if s.lora.enabled else policy_params,  # LoRA: SFT is the base, a step argument.
    abstract=abstract,
    lora_cfg=s.lora,
  )
  value, value_sh = train_state.create_train_state(
    s.value_cfg,
    train_state.make_optimizer(cfg.value_optim, updates, skip),
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "ppo.init")),
    value_params,
    abstract=abstract,
  )
  rep = sharding.replicated(mesh)
  if abstract:
    kl_coef = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
  else:
    kl_coef = jax.device_put(jnp.asarray(cfg.kl_coef, jnp.float32), rep)
  state = PPOState(policy=policy, value=value, kl_coef=kl_coef)
  return state, PPOState(policy=policy_sh, value=value_sh, kl_coef=rep)


def make_step(s: PPOSettings):
  """`step(state, batch, rng, ref_params, rm_params) -> (state, metrics)`, as `loop.train` and
  `train_state.jit_step` call it (the frozen models are constant arguments)."""
  return lambda state, batch, rng, ref_params, rm_params: ppo_iteration(
    state, batch, rng, ref_params, rm_params, s
  )


def _response_slice(x: jax.Array, s: PPOSettings) -> jax.Array:
  """Columns [P, P + R) of a [batch, P+R] array -> [batch, R]."""
  return jax.lax.slice_in_dim(x, s.prompt_len, s.prompt_len + s.response_len, axis=1)


def policy_logprobs(params: Any, s: PPOSettings, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """log pi(token | prefix) of the response tokens at the sampling temperature: [batch, R]."""
  return objectives.span_logprobs(
    params, s.policy_cfg, tokens, mask, s.prompt_len, s.response_len, s.ppo.temperature
  )


def value_estimates(params: Any, s: PPOSettings, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """V(state before each response token): [batch, R]."""
  return objectives.span_values(params, s.value_cfg, tokens, mask, s.prompt_len, s.response_len)


def rollout(
  state: PPOState,
  ref_params: Any,
  rm_params: Sequence[Any],
  prompts: jax.Array,
  prompt_mask: jax.Array,
  rng: jax.Array,
  s: PPOSettings,
) -> dict[str, jax.Array]:
  """Samples responses and scores them; the score is the mean reward of the RM ensemble's
  members `rm_params` (one tree unless `rm.ensemble` > 1). Every per-token entry is [batch, R].
  With RLOO or GRPO each prompt is sampled `group_size` times (consecutive rows), so prompts
  [batch / group_size, P] give [batch] episodes."""
  if s.group_size > 1:
    prompts = jnp.repeat(prompts, s.group_size, axis=0)
    prompt_mask = jnp.repeat(prompt_mask, s.group_size, axis=0)
  policy = lora_lib.policy_params(ref_params, state.policy.params, s.lora)
  out = sampling.generate(
    policy,
    s.policy_cfg,
    prompts,
    prompt_mask,
    rng,
    max_new_tokens=s.response_len,
    eos_id=s.eos_id,
    pad_id=s.pad_id,
    temperature=s.ppo.temperature,
  )
  tokens, mask = out.tokens, out.mask
  rmask = _response_slice(out.response_mask, s).astype(jnp.float32)
  if s.ppo.recompute_logprobs:  # A full forward pass: the first minibatch's ratio is exactly 1.
    logp = policy_logprobs(policy, s, tokens, mask)
  else:  # The sampler's, which agree with a forward pass up to float rounding (fp32).
    logp = _response_slice(out.logprobs, s)
  ref_logp = policy_logprobs(ref_params, s, tokens, mask)
  raw_score = objectives.ensemble_rewards(rm_params, s.value_cfg, tokens, mask, s.prompt_len)
  score = raw_score
  if s.ppo.missing_eos_penalty is not None:
    # A response that never ends gets a fixed low score (docs/rlhf-notes.md §11, the "EOS trick").
    score = jnp.where(out.ended, raw_score, s.ppo.missing_eos_penalty)
  rewards, kl = losses.kl_penalized_rewards(score, logp, ref_logp, rmask, state.kl_coef)
  if s.ppo.estimator == "gae":
    values = value_estimates(state.value.params, s, tokens, mask)
    if s.ppo.whiten_rewards:
      rewards = losses.whiten(rewards, rmask, shift_mean=False)
    advantages, returns = losses.gae(rewards, values, rmask, s.ppo.gamma, s.ppo.lam)
    advantages = losses.whiten(advantages, rmask)
  else:
    # One advantage per response, on each of its tokens; no value function. RLOO's reward
    # carries the KL penalty (its sum over the response); GRPO's KL is a term of its loss.
    values = returns = jnp.zeros_like(rmask)
    if s.ppo.estimator == "rloo":
      seq = losses.rloo_advantages(jnp.sum(rewards, axis=1), s.group_size)
    else:
      seq = losses.grpo_advantages(score, s.group_size)
    advantages = seq[:, None] * rmask
  return {
    "tokens": tokens,
    "mask": mask,
    "rmask": rmask,
    "logp": logp,
    "ref_logp": ref_logp,
    "values": values,
    "advantages": advantages,
    "returns": returns,
    "raw_score": raw_score,
    "score": score,
    "kl": kl,
    "rewards": rewards,
    "ended": out.ended.astype(jnp.float32),
    "lengths": out.lengths.astype(jnp.float32),
  }


def _policy_loss(
  params, s: PPOSettings, mb: dict[str, jax.Array], ptx: dict[str, jax.Array], base: Any = None
):
  params = lora_lib.policy_params(base, params, s.lora)  # LoRA: `params` are the adapters.
  logp = policy_logprobs(params, s, mb["tokens"], mb["mask"])
  loss, metrics = losses.ppo_policy_loss(
    logp, mb["logp"], mb["advantages"], mb["rmask"], s.ppo.clip_eps
  )
  if s.ppo.estimator == "grpo":  # The KL to the reference as a loss term, per token.
    kl = losses.masked_mean(losses.k3_kl(logp, mb["ref_logp"]), mb["rmask"])
    loss = loss + mb["kl_coef"] * kl
    metrics = dict(metrics, kl_term=kl)
  if s.ppo.ptx_coef:
    apply_fn = model_lib.Transformer(s.policy_cfg).apply
    ptx_loss, _ = objectives.lm_loss_fn(params, apply_fn, ptx)
    loss = losses.ppo_ptx_objective(loss, ptx_loss, s.ppo.ptx_coef)
    metrics = dict(metrics, ptx_loss=ptx_loss)
  return loss, metrics


def _value_loss(params, s: PPOSettings, mb: dict[str, jax.Array]):
  values = value_estimates(params, s, mb["tokens"], mb["mask"])
  loss, metrics = losses.ppo_value_loss(
    values, mb["values"], mb["returns"], mb["rmask"], s.ppo.value_clip_eps
  )
  return s.ppo.vf_coef * loss, metrics


def ppo_update(
  state: PPOState,
  batch: dict[str, jax.Array],
  ptx: dict[str, jax.Array],
  rng: jax.Array,
  s: PPOSettings,
  base: Any = None,
) -> tuple[PPOState, dict[str, jax.Array]]:
  """`epochs x num_minibatches` policy and value updates, scanned on device.

  batch: rollout arrays [B, ...]; ptx: tokens/mask/loss_mask [updates * ptx_batch, seq]; base:
  the frozen model the policy's LoRA adapters apply to (SFT), with `ppo.lora` only.
  """
  n = batch["tokens"].shape[0]
  mb_size = n // s.num_minibatches
  updates = s.ppo.epochs * s.num_minibatches
  perms = jnp.concatenate(
    [jax.random.permutation(k, n) for k in jax.random.split(rng, s.ppo.epochs)]
  )
  perms = perms.reshape(updates, mb_size)
  ptx = jax.tree.map(lambda x: x.reshape(updates, -1, *x.shape[1:]), ptx)

  def one_update(carry, xs):
    policy, value = carry
    idx, ptx_mb = xs
    mb = jax.tree.map(lambda x: x[idx], batch)
    mb["kl_coef"] = state.kl_coef
    (_, pm), pgrads = jax.value_and_grad(_policy_loss, has_aux=True)(
      policy.params, s, mb, ptx_mb, base
    )
    metrics = dict(pm, policy_grad_norm=optax.global_norm(pgrads))
    policy = policy.apply_gradients(grads=pgrads)
    if s.ppo.estimator == "gae":  # RLOO and GRPO have no value function to fit.
      (_, vm), vgrads = jax.value_and_grad(_value_loss, has_aux=True)(value.params, s, mb)
      metrics.update(vm, value_grad_norm=optax.global_norm(vgrads))
      value = value.apply_gradients(grads=vgrads)
    return (policy, value), metrics

  (policy, value), metrics = jax.lax.scan(one_update, (state.policy, state.value), (perms, ptx))
  return state.replace(policy=policy, value=value), jax.tree.map(jnp.mean, metrics)


def ppo_iteration(
  state: PPOState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  ref_params: Any,
  rm_params: Sequence[Any],
  s: PPOSettings,
) -> tuple[PPOState, dict[str, jax.Array]]:
  """One PPO iteration: `new_state, metrics = ppo_iteration(state, batch, rng, ref, rm, s)`.

  batch: prompts/prompt_mask [B, P] and ptx tokens/mask/loss_mask [updates * ptx_batch, seq].
  """
  roll_key, update_key = jax.random.split(rng)
  ro = rollout(state, ref_params, rm_params, batch["prompts"], batch["prompt_mask"], roll_key, s)
  ro = jax.tree.map(jax.lax.stop_gradient, ro)
  ptx = {k: batch[k] for k in ("tokens", "mask", "loss_mask")}
  train_batch = {
    k: ro[k]
    for k in ("tokens", "mask", "rmask", "logp", "ref_logp", "values", "advantages", "returns")
  }
  state, metrics = ppo_update(state, train_batch, ptx, update_key, s, ref_params)
  seq_kl = losses.sequence_kl(ro["logp"], ro["ref_logp"], ro["rmask"])
  kl_mean = jnp.mean(seq_kl)
  if s.ppo.adaptive_kl:
    new_coef = losses.kl_controller_update(
      state.kl_coef, kl_mean, ro["tokens"].shape[0], s.ppo.kl_target, s.ppo.kl_horizon
    )
    state = state.replace(kl_coef=new_coef)
  metrics.update(
    score=jnp.mean(ro["raw_score"]),
    score_with_penalty=jnp.mean(ro["score"]),
    kl=kl_mean,
    reward=jnp.mean(jnp.sum(ro["rewards"], axis=1)),
    response_length=jnp.mean(ro["lengths"]),
    eos_rate=jnp.mean(ro["ended"]),
    kl_coef=state.kl_coef,
  )
  return state, metrics


class PPOBatches:
  """Prompt batches zipped with ptx batches; the positions of both are checkpointed."""

  def __init__(self, prompts: Any, ptx: Any):
    self.prompts, self.ptx = prompts, ptx

  def __next__(self) -> dict[str, np.ndarray]:
    p = next(self.prompts)
    return {"prompts": p["tokens"], "prompt_mask": p["mask"], **next(self.ptx)}

  def get_state(self) -> dict[str, Any]:
    return {
      "prompts": loop.encode_iterator_state(self.prompts.get_state()),
      "ptx": loop.encode_iterator_state(self.ptx.get_state()),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    self.prompts.set_state(loop.decode_iterator_state(state["prompts"]))
    self.ptx.set_state(loop.decode_iterator_state(state["ptx"]))


def _save_snapshot(
  ws: Workspace, variant: str, s: PPOSettings, step: int, state: Any, sft_params: Any
) -> None:
  """Keeps the policy's parameters at the iterations of `ppo_snapshot_steps` (the over-optimisation
  curve samples each)."""
  if step in ppo_snapshot_steps(ws.config.ppo):
    name = ppo_policy_name(ws.config.ppo, variant)
    ws.save_params(
      ppo_snapshot_stage(name, step),
      lora_lib.merged(sft_params, state.policy.params, s.lora),
      s.policy_cfg,
    )


def train_variant(
  ws: Workspace, variant: str, prompts: dict[str, Any], ptx_arrays: dict[str, Any]
) -> dict[str, Any]:
  """Trains one policy ("ppo": ptx_coef 0, "ppo_ptx": the config's) into
  ppo/<its ppo_policy_name>."""
  cfg = ws.config.ppo
  tok = ws.tokenizer()
  s = make_settings(ws.config, ws.models, tok.eos_id, tok.pad_id, variant)
  prompts_per_rollout = cfg.rollout_batch_size // s.group_size
  sft_params = ws.load_params("sft", s.policy_cfg)
  rm_params = ws.load_reward_model()  # The ensemble's members; the value starts from the first.
  state, shardings = init_state(ws.config, s, ws.mesh, ws.rules, sft_params, rm_params[0])
  updates = cfg.epochs * s.num_minibatches
  batches = PPOBatches(
    ws.batches(prompts, prompts_per_rollout, seed=seeds.of(ws.config.seed, "ppo.prompts")),
    ws.batches(ptx_arrays, updates * cfg.ptx_batch_size, seed=seeds.of(ws.config.seed, "ppo.ptx")),
  )
  name = ppo_policy_name(cfg, variant)
  state, rows = loop.train(
    name=name,
    stage_dir=os.path.join(ws.stage_dir("ppo"), name),
    state=state,
    state_shardings=shardings,
    step_fn=make_step(s),
    batches=batches,
    total_steps=cfg.iterations,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(ws.config.seed, "ppo.steps"),
    loop_cfg=cfg,
    const_args=(sft_params, rm_params),
    const_shardings=(
      train_state.param_shardings(s.policy_cfg, ws.mesh, ws.rules),  # SFT: the reference.
      (shardings.value.params,) * len(rm_params),
    ),
    after_step=lambda step, st: _save_snapshot(ws, variant, s, step, st, sft_params),
  )
  ws.save_params(
    f"ppo/{name}", lora_lib.merged(sft_params, state.policy.params, s.lora), s.policy_cfg
  )
  summary = {"iterations": cfg.iterations, "ptx_coef": s.ppo.ptx_coef, "estimator": cfg.estimator}
  if rows:
    summary.update({k: rows[-1][k] for k in ("score", "kl", "eos_rate", "response_length")})
    summary["first_score"] = rows[0]["score"]
  return summary


def policy_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings a policy of this stage was trained with, recorded in its DONE.json: the
  stage's (settings.STAGE_SETTINGS) less those that only choose which policies to train
  (`ppo.variants`; `ppo.estimator` is in the name) and `ppo.group_size`, which GAE never reads."""
  recorded = settings.of_stage(config, settings.STAGE_SETTINGS["ppo"])
  unread = ("ppo.variants", "ppo.estimator") + (
    ("ppo.group_size",) if config.ppo.estimator == "gae" else ()
  )
  return {k: v for k, v in recorded.items() if k not in unread}


def finished_part_differences(ws: Workspace) -> dict[str, dict[str, tuple[Any, Any]]]:
  """{"ppo/<name>": {key: (recorded, current)}} for every finished policy this config would
  reuse whose recorded settings differ (pipeline.plan refuses them)."""
  out = {}
  for variant in ws.config.ppo.variants:
    name = ppo_policy_name(ws.config.ppo, variant)
    done = loop.stage_done(os.path.join(ws.stage_dir("ppo"), name))
    diffs = settings.differences((done or {}).get("settings"), policy_settings(ws.config))
    if diffs:
      out[f"ppo/{name}"] = diffs
  return out


def run(ws: Workspace) -> dict[str, Any]:
  """Trains every variant in `config.ppo.variants` ("ppo": ptx_coef 0; "ppo_ptx": the config's)."""
  prompts = inputs.prompt_arrays(ws)
  ptx_arrays = inputs.lm_arrays(ws, "train")
  summaries = {}
  for variant in ws.config.ppo.variants:
    name = ppo_policy_name(ws.config.ppo, variant)
    variant_dir = os.path.join(ws.stage_dir("ppo"), name)
    done = loop.stage_done(variant_dir)
    if done is None:
      # Its own run id: the evaluation keeps its samples while the stage gains other policies.
      done = {
        **train_variant(ws, variant, prompts, ptx_arrays),
        "run_id": uuid.uuid4().hex,
        "settings": policy_settings(ws.config),
      }
      loop.mark_done(variant_dir, done)
    summaries[name] = done
  return summaries
