"""Stage "sft": supervised fine-tuning of the base model on demonstrations (paper C.1).

The loss is the LM loss on response tokens only (prompt tokens are context), with residual
dropout and a cosine decay to 10 % of the learning rate without warmup. As the SFT model that the
paper's PPO starts from (C.3), a fraction `sft.pretrain_mix` of the rows are pretraining text,
packed to the demonstrations' length with the loss on every token (`mix_pretraining`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from instructgpt_jax import data as data_lib
from instructgpt_jax import inputs, loop, objectives, scoring, train_state
from instructgpt_jax.workspace import Workspace

Batch = dict[str, jax.Array]


def model_config(config: ml_collections.ConfigDict):
  """The policy's model with SFT's residual dropout."""
  return train_state.model_config(config, dropout=config.sft.dropout)


def init_state(
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  rules: Any,
  total_steps: int,
  params: Any | None = None,
  *,
  abstract: bool = False,
) -> tuple[train_state.TrainState, Any]:
  """The base model's `params` with SFT's optimizer on the mesh; returns (state, shardings)."""
  cfg = config.sft
  tx = train_state.make_optimizer(cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    model_config(config), tx, mesh, rules, jax.random.key(config.seed), params, abstract=abstract
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


def mix_pretraining(
  demos: dict[str, Any], text: dict[str, np.ndarray], fraction: float, seed: int
) -> tuple[dict[str, np.ndarray], int]:
  """Demonstrations with pretraining rows appended so that they make `fraction` of the rows
  (paper C.3: 10 %); batching shuffles them together. Returns (arrays, pretraining rows).

  demos: tokens/mask/loss_mask [N, L]; text: tokens/mask/loss_mask [M, L] (packed text, the
  loss on every token). The pretraining rows are a fixed random subset of `text`, reused every
  epoch, as the demonstrations are; fewer are taken when `text` holds too few.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"sft.pretrain_mix={fraction} must be in [0, 1).")
  keys = ("tokens", "mask", "loss_mask")
  n = int(demos["tokens"].shape[0])
  want = int(round(n * fraction / (1.0 - fraction)))
  m = min(want, int(text["tokens"].shape[0]))
  if want > m:
    logging.warning("sft: pretrain_mix wants %d pretraining rows; the text has %d", want, m)
  rows = np.random.default_rng(seed).choice(text["tokens"].shape[0], size=m, replace=False)
  return {k: np.concatenate([demos[k], text[k][rows]]) for k in keys}, m


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.sft
  demos = inputs.sft_arrays(ws, "train")
  n = int(demos["tokens"].shape[0])
  arrays, n_text = {k: demos[k] for k in ("tokens", "mask", "loss_mask")}, 0
  if cfg.pretrain_mix > 0:
    d = ws.config.data
    text = inputs.lm_arrays(ws, "train", seq_len=d.prompt_len + d.response_len)
    arrays, n_text = mix_pretraining(arrays, text, cfg.pretrain_mix, ws.config.seed + 12)
  steps = loop.steps_for_epochs(n + n_text, cfg.batch_size, cfg.epochs)
  model_cfg = model_config(ws.config)
  params = ws.load_params("pretrain", model_cfg)
  state, shardings = init_state(ws.config, ws.mesh, ws.rules, steps, params)
  batches = data_lib.make_batches(
    arrays, cfg.batch_size, seed=ws.config.seed + 10, local_rows=ws.local_rows(cfg.batch_size)
  )
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
    seed=ws.config.seed + 11,
    loop_cfg=cfg,
  )
  summary: dict[str, Any] = {
    "steps": steps,
    "examples": n,
    "pretrain_rows": n_text,
    "dropped": demos["n_dropped_prompt"] + demos["n_dropped_response"],
  }
  val = inputs.sft_arrays(ws, "validation")
  if val["tokens"].shape[0]:
    summary["validation_loss"] = scoring.lm_loss(ws, state.params, model_cfg, val)
  if rows:
    summary["final_loss"] = rows[-1]["loss"]
  return summary
