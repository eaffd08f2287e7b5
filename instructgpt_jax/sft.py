"""Stage "sft": supervised fine-tuning of the base model on demonstrations (paper C.1).

The loss is the LM loss on response tokens only (prompt tokens are context), with residual
dropout and a cosine decay to 10 % of the learning rate without warmup. As the SFT model that the
paper's PPO starts from (C.3), a fraction `sft.pretrain_mix` of the rows are pretraining text,
packed to the demonstrations' length with the loss on every token (`inputs.mix_pretraining`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from instructgpt_jax import inputs, loop, model_configs, objectives, scoring, seeds, train_state
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
  trains with `sft.dropout`) on the mesh; returns (state, shardings)."""
  cfg = config.sft
  tx = train_state.make_optimizer(cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    models.policy.replace(dropout=cfg.dropout),
    tx,
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "sft.init")),
    params,
    abstract=abstract,
  )


def train_step(
  state: train_state.TrainState, batch: Batch, rng: jax.Array
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the response-token LM loss, dropout on.

  batch: tokens/mask [batch, prompt_len + response_len], loss_mask [batch, seq] (1 on the
  response tokens).
  """
  grad_fn = jax.value_and_grad(objectives.lm_loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, state.apply_fn, batch, rng, False)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(metrics, grad_norm=optax.global_norm(grads))


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.sft
  arrays, counts = inputs.sft_train_rows(
    ws, cfg.pretrain_mix, seeds.of(ws.config.seed, "sft.pretrain_mix")
  )
  steps = loop.steps_for_epochs(int(arrays["tokens"].shape[0]), cfg.batch_size, cfg.epochs)
  model_cfg = ws.models.policy
  params = ws.load_params("pretrain", model_cfg)
  state, shardings = init_state(ws.config, ws.models, ws.mesh, ws.rules, steps, params)
  batches = ws.batches(arrays, cfg.batch_size, seed=seeds.of(ws.config.seed, "sft.data"))
  state, rows = loop.train(
    name="sft",
    stage_dir=ws.stage_dir("sft"),
    state=state,
    state_shardings=shardings,
    step_fn=train_step,
    batches=batches,
    total_steps=steps,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(ws.config.seed, "sft.steps"),
    loop_cfg=cfg,
  )
  summary: dict[str, Any] = {"steps": steps, **counts}
  val = inputs.sft_arrays(ws, "validation")
  if val["tokens"].shape[0]:
    summary["validation_loss"] = scoring.lm_loss(ws, state.params, model_cfg, val)
  if rows:
    summary["final_loss"] = rows[-1]["loss"]
  return summary
