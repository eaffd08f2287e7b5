"""Stage "sft": supervised fine-tuning of the base model on demonstrations (paper C.1).

The loss is the LM loss on response tokens only (prompt tokens are context), with residual
dropout and a cosine decay to 10 % of the learning rate without warmup. As the SFT model that the
paper's PPO starts from (C.3), a fraction `sft.pretrain_mix` of the rows are pretraining text,
packed to the demonstrations' length with the loss on every token (`inputs.mix_pretraining`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from instructgpt_jax import (
  inputs,
  loop,
  lora,
  model_configs,
  objectives,
  scoring,
  seeds,
  settings,
  train_state,
)
from instructgpt_jax.workspace import Workspace

Batch = dict[str, jax.Array]


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
  """The base model's `params` with SFT's optimizer and residual dropout (the policy's model
  trains with `sft.dropout`) on the mesh; returns (state, shardings). With `sft.lora` the state
  holds fresh adapters instead and `params` are the frozen base, passed to `train_step`."""
  cfg = config.sft
  lora_cfg = lora.LoraConfig.from_config(cfg.lora, "sft")
  tx = train_state.make_optimizer(cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    models.policy.replace(dropout=cfg.dropout),
    tx,
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "sft.init")),
    None if lora_cfg.enabled else params,
    abstract=abstract,
    lora_cfg=lora_cfg,
  )


def train_step(
  state: train_state.TrainState,
  batch: Batch,
  rng: jax.Array,
  base: Any = None,
  *,
  lora_cfg: lora.LoraConfig = lora.OFF,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the response-token LM loss, dropout on.

  batch: tokens/mask [batch, prompt_len + response_len], loss_mask [batch, seq] (1 on the
  response tokens). With LoRA (`lora_cfg`, bound by functools.partial) `state.params` are the
  adapters and `base` the frozen base model.
  """

  def loss_fn(params):
    merged = lora.policy_params(base, params, lora_cfg)
    return objectives.lm_loss_fn(merged, state.apply_fn, batch, rng, False)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(metrics, grad_norm=optax.global_norm(grads))


def check_settings(ws: Workspace) -> None:
  """This stage's section, before any stage starts."""
  inputs.check_sft_section(ws, ws.config.sft, "sft")
  settings.positive(ws.config.sft, "sft", "epochs")
  lora.LoraConfig.from_config(ws.config.sft.lora, "sft")


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.sft
  arrays, counts = inputs.sft_train_rows(
    ws, cfg.pretrain_mix, seeds.of(ws.config.seed, "sft.pretrain_mix")
  )
  steps = loop.steps_for_epochs(int(arrays["tokens"].shape[0]), cfg.batch_size, cfg.epochs)
  model_cfg = ws.models.policy
  lora_cfg = lora.LoraConfig.from_config(cfg.lora, "sft")
  params = ws.load_params("pretrain", model_cfg)
  state, shardings = init_state(ws.config, ws.models, ws.mesh, ws.rules, steps, params)
  base = (params,) if lora_cfg.enabled else ()
  batches = ws.batches(arrays, cfg.batch_size, seed=seeds.of(ws.config.seed, "sft.data"))
  state, rows = loop.train(
    name="sft",
    stage_dir=ws.stage_dir("sft"),
    state=state,
    state_shardings=shardings,
    step_fn=functools.partial(train_step, lora_cfg=lora_cfg),
    batches=batches,
    total_steps=steps,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(ws.config.seed, "sft.steps"),
    loop_cfg=cfg,
    const_args=base,
    const_shardings=(train_state.param_shardings(model_cfg, ws.mesh, ws.rules),) * len(base),
  )
  summary: dict[str, Any] = {"steps": steps, "lora_rank": lora_cfg.rank, **counts}
  policy = state.params
  if lora_cfg.enabled:  # Later stages read a plain model: the base with the adapters merged.
    policy = ws.save_params("sft", lora.merged(params, state.params, lora_cfg), model_cfg)
  val = inputs.sft_arrays(ws, "validation")
  if val["tokens"].shape[0]:
    summary["validation_loss"] = scoring.lm_loss(ws, policy, model_cfg, val)
  if rows:
    summary["final_loss"] = rows[-1]["loss"]
  return summary
