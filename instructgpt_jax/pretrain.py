"""Stage "pretrain": the generic language-model train step, and a tiny base model trained with it.

No machine here can download GPT-3, so the pipeline trains its own base model on the task
world's pretraining corpus. `lm_train_step` is the step SFT reuses (with a response-only mask)
and `lm_loss_fn` is the ptx term of PPO.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from instructgpt_jax import data as data_lib
from instructgpt_jax import loop, losses, train_state
from instructgpt_jax import model as model_lib
from instructgpt_jax.workspace import Workspace

Batch = dict[str, jax.Array]


def lm_loss_fn(
  params: Any,
  apply_fn: Callable,
  batch: Batch,
  rng: jax.Array | None = None,
  deterministic: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token cross-entropy over `batch["loss_mask"]` (1 on target tokens).

  batch: tokens [batch, seq], mask [batch, seq] (real tokens), loss_mask [batch, seq].
  Token t is predicted from the logits at t-1, hence the shift.
  """
  rngs = {} if deterministic else {"dropout": rng}
  seq = batch["tokens"].shape[1]
  # Hidden states, not logits: the fused loss forms the logits a chunk at a time (docs/speed.md).
  hidden = apply_fn(
    {"params": params},
    batch["tokens"],
    batch["mask"],
    deterministic=deterministic,
    rngs=rngs,
    head_span=(0, seq - 1),
    skip_head=True,
  )
  unembedding = model_lib.unembedding(params)
  return losses.head_lm_loss(hidden, unembedding, batch["tokens"][:, 1:], batch["loss_mask"][:, 1:])


def lm_train_step(
  state: train_state.TrainState, batch: Batch, rng: jax.Array, dropout: bool = False
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the LM loss: `new_state, metrics = lm_train_step(state, batch, rng)`."""
  grad_fn = jax.value_and_grad(lm_loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, state.apply_fn, batch, rng, not dropout)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(metrics, grad_norm=optax.global_norm(grads))


def lm_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  """The pretraining text of `split`, packed into rows of `config.data.seq_len` tokens."""
  texts = [r["text"] for r in ws.records("pretraining", split)]
  packed = data_lib.pack_lm(ws.tokenizer(), texts, ws.config.data.seq_len)
  packed["loss_mask"] = packed["mask"]
  return packed


def run(ws: Workspace) -> dict[str, Any]:
  """Trains the base model; returns the stage summary (also written to DONE.json)."""
  cfg = ws.config.pretrain
  arrays = lm_arrays(ws, "train")
  model_cfg = ws.model_config()
  tx = train_state.make_optimizer(cfg.optim, cfg.steps, cfg.on_nonfinite == "skip")
  state, shardings = train_state.create_train_state(
    model_cfg, tx, ws.mesh, ws.rules, jax.random.key(ws.config.seed)
  )
  batches = data_lib.make_batches(arrays, cfg.batch_size, seed=ws.config.seed)
  state, rows = loop.train(
    name="pretrain",
    stage_dir=ws.stage_dir("pretrain"),
    state=state,
    state_shardings=shardings,
    step_fn=lm_train_step,
    batches=batches,
    total_steps=cfg.steps,
    mesh=ws.mesh,
    seed=ws.config.seed + 1,
    loop_cfg=cfg,
  )
  summary = {"steps": cfg.steps, "train_rows": int(arrays["tokens"].shape[0])}
  if rows:
    summary["final_loss"] = rows[-1]["loss"]
  return summary


def evaluate_lm(
  ws: Workspace, params: Any, model_cfg: Any, arrays: dict[str, Any], batch_size: int = 32
) -> float:
  """Token-weighted mean LM loss of `params` over every row of `arrays` (dropout off)."""
  apply_fn = model_lib.Transformer(model_cfg.replace(dropout=0.0)).apply

  @jax.jit
  def loss_sum(batch):
    batch = dict(batch, loss_mask=batch["loss_mask"] * batch["valid"][:, None])
    loss, metrics = lm_loss_fn(params, apply_fn, batch)
    return loss * metrics["tokens"], metrics["tokens"]

  total = count = 0.0
  for _, (s, n) in data_lib.map_batches(loss_sum, arrays, batch_size, ws.mesh):
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)
