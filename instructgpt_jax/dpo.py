"""Stage "dpo" (not in the paper): Direct Preference Optimization (Rafailov et al. 2023), or IPO
(Azar et al. 2023) with `dpo.loss = "ipo"`, on the reward model's comparison file.

The policy starts from SFT and SFT is the frozen reference. Every K-way ranking gives all its
C(K, 2) pairs in one batch element, weighed as the RM's loss weighs them
(`losses.dpo_loss`). The reference's summed response log-probs are computed once, before
training, so one model is in memory while it trains. No reward model and no sampling: the
evaluation samples the result like any other policy (the report's "dpo" row).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from instructgpt_jax import (
  inputs,
  loop,
  lora,
  losses,
  model_configs,
  objectives,
  scoring,
  seeds,
  settings,
  train_state,
)
from instructgpt_jax import model as model_lib
from instructgpt_jax.workspace import Workspace

Batch = dict[str, jax.Array]
TRAIN_KEYS = ("tokens", "mask", "ranks", "ref_logps", "lengths")


def init_state(
  config: ml_collections.ConfigDict,
  models: model_configs.ModelConfigs,
  mesh: Mesh,
  rules: Any,
  total_steps: int,
  params: Any | None = None,
  *,
  abstract: bool = False,
) -> tuple[train_state.TrainState, Any]:
  """The SFT policy's `params` with DPO's optimizer on the mesh (dropout off, so the policy's
  log-probs are those of the model that is evaluated); returns (state, shardings). With
  `dpo.lora` the state holds fresh adapters and `params` (SFT) are the frozen base."""
  cfg = config.dpo
  lora_cfg = lora.LoraConfig.from_config(cfg.lora, "dpo")
  tx = train_state.make_optimizer(cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    models.policy,
    tx,
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "dpo.init")),
    None if lora_cfg.enabled else params,
    abstract=abstract,
    lora_cfg=lora_cfg,
  )


def response_logps(
  params: Any, config: model_lib.ModelConfig, tokens: jax.Array, mask: jax.Array, P: int
) -> jax.Array:
  """Summed log-probs of each response (positions [P, seq)): [N, seq] -> [N]."""
  R = tokens.shape[1] - P
  return objectives.span_logprobs(params, config, tokens, mask, P, R).sum(axis=1)


def loss_fn(
  params: Any, config: model_lib.ModelConfig, batch: Batch, P: int, beta: float, loss: str
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """batch: tokens/mask [prompts, K, seq], ranks/ref_logps/lengths [prompts, K]."""
  b, k, t = batch["tokens"].shape
  logps = response_logps(
    params, config, batch["tokens"].reshape(b * k, t), batch["mask"].reshape(b * k, t), P
  ).reshape(b, k)
  return losses.dpo_loss(
    logps, batch["ref_logps"], batch["ranks"], beta, loss, lengths=batch["lengths"]
  )


def train_step(
  state: train_state.TrainState,
  batch: Batch,
  rng: jax.Array,
  base: Any = None,
  *,
  config: model_lib.ModelConfig,
  prompt_len: int,
  beta: float,
  loss: str,
  lora_cfg: lora.LoraConfig = lora.OFF,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the DPO (or IPO) loss; bind the keywords with functools.partial.
  With LoRA `state.params` are the adapters and `base` the frozen SFT model."""
  del rng  # Deterministic: no dropout, no sampling.

  def objective(params):
    merged = lora.policy_params(base, params, lora_cfg)
    return loss_fn(merged, config, batch, prompt_len, beta, loss)

  (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads), dict(metrics, grad_norm=optax.global_norm(grads))


def _slot_logliks(ws: Workspace, params: Any, arrays: dict[str, Any]) -> np.ndarray:
  """The policy-shaped model `params`' summed response log-probs of every comparison slot:
  tokens/mask [N, K, seq] -> [N, K]."""
  n, k, t = arrays["tokens"].shape
  flat = [arrays[key].reshape(n * k, t) for key in ("tokens", "mask")]
  return scoring.score_with(ws, scoring.loglik_fn(ws, ws.models.policy), params, *flat).reshape(
    n, k
  )


def with_reference(ws: Workspace, arrays: dict[str, Any], ref_params: Any) -> dict[str, Any]:
  """`arrays` (comparisons, tokens/mask [N, K, seq]) with the reference's summed response
  log-probs `ref_logps` [N, K] and the response token counts `lengths` [N, K] added."""
  P = ws.config.data.prompt_len
  out = {key: arrays[key] for key in ("tokens", "mask", "ranks")}
  out["ref_logps"] = _slot_logliks(ws, ref_params, arrays).astype(np.float32)
  out["lengths"] = arrays["mask"][:, :, P:].sum(axis=2).astype(np.float32)
  return out


def preference_accuracy(ws: Workspace, params: Any, arrays: dict[str, Any]) -> dict[str, float]:
  """How often the implicit reward log pi / pi_SFT ranks the comparisons of `arrays` (with
  `ref_logps`) as the labelers did: pair-weighted accuracy and the pair count."""
  ratio = _slot_logliks(ws, params, arrays) - arrays["ref_logps"]
  return scoring.ranking_accuracy(ratio, arrays["ranks"])


def check_settings(ws: Workspace) -> None:
  """This stage's section, before any stage starts."""
  cfg = ws.config.dpo
  settings.positive(cfg, "dpo", "beta", "epochs")
  settings.one_of(cfg, "dpo", "loss", losses.DPO_LOSSES)
  train_state.check_optim(cfg.optim, "dpo.optim")
  loop.check_loop(cfg, "dpo", ws.batch_divisor)
  lora.LoraConfig.from_config(cfg.lora, "dpo")


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.dpo
  sft = ws.load_params("sft", ws.models.policy)
  train = with_reference(ws, inputs.comparison_arrays(ws, "train"), sft)
  n = int(train["tokens"].shape[0])
  steps = loop.steps_for_epochs(n, cfg.batch_size, cfg.epochs)
  held_out = [inputs.comparison_arrays(ws, s) for s in ("validation", "test")]
  held_out = [with_reference(ws, a, sft) for a in held_out if a["tokens"].shape[0]]
  state, shardings = init_state(ws.config, ws.models, ws.mesh, ws.rules, steps, sft)
  lora_cfg = lora.LoraConfig.from_config(cfg.lora, "dpo")
  base = sft if lora_cfg.enabled else None  # Otherwise the state holds the only copy.
  del sft
  state, rows = loop.train(
    name="dpo",
    stage_dir=ws.stage_dir("dpo"),
    state=state,
    state_shardings=shardings,
    step_fn=functools.partial(
      train_step,
      config=ws.models.policy,
      prompt_len=ws.config.data.prompt_len,
      beta=cfg.beta,
      loss=cfg.loss,
      lora_cfg=lora_cfg,
    ),
    batches=ws.batches(train, cfg.batch_size, seed=seeds.of(ws.config.seed, "dpo.data")),
    total_steps=steps,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(ws.config.seed, "dpo.steps"),
    loop_cfg=cfg,
    const_args=() if base is None else (base,),
    const_shardings=()
    if base is None
    else (train_state.param_shardings(ws.models.policy, ws.mesh, ws.rules),),
  )
  policy = ws.save_params("dpo", lora.merged(base, state.params, lora_cfg), ws.models.policy)
  summary: dict[str, Any] = {
    "loss_type": cfg.loss,
    "beta": cfg.beta,
    "steps": steps,
    "comparisons": n,
    "lora_rank": lora_cfg.rank,
  }
  if held_out:
    merged = {k: np.concatenate([a[k] for a in held_out]) for k in TRAIN_KEYS}
    summary["heldout"] = preference_accuracy(ws, policy, merged)
  if rows:
    summary["train"] = {"accuracy": rows[-1]["accuracy"], "loss": rows[-1]["loss"]}
  return summary
