"""Stage "sft": supervised fine-tuning of the base model on demonstrations.

The loss is the LM loss on response tokens only (prompt tokens are context), with residual
dropout and a cosine decay to 10 % of the learning rate without warmup (paper C.1). The train
step is `pretrain.lm_train_step`; only the data and the mask differ.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax import loop, pretrain, train_state
from instructgpt_jax.workspace import Workspace


def sft_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  """Demonstrations of `split` in the project layout; too-long examples dropped and counted."""
  recs = ws.records("demonstrations", split)
  d = ws.config.data
  arrays = data_lib.encode_sft(
    ws.tokenizer(),
    [r["prompt"] for r in recs],
    [r["response"] for r in recs],
    d.prompt_len,
    d.response_len,
  )
  dropped = arrays["n_dropped_prompt"] + arrays["n_dropped_response"]
  if dropped:
    logging.warning(
      "sft/%s: dropped %d of %d demonstrations longer than the context "
      "(%d prompts > %d tokens, %d responses > %d tokens)",
      split,
      dropped,
      len(recs),
      arrays["n_dropped_prompt"],
      d.prompt_len,
      arrays["n_dropped_response"],
      d.response_len,
    )
  return arrays


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.sft
  arrays = sft_arrays(ws, "train")
  n = int(arrays["tokens"].shape[0])
  steps = loop.steps_for_epochs(n, cfg.batch_size, cfg.epochs)
  model_cfg = ws.model_config(dropout=cfg.dropout)
  params = ws.load_params("pretrain", model_cfg)
  tx = train_state.make_optimizer(cfg.optim, steps, cfg.on_nonfinite == "skip")
  state, shardings = train_state.create_train_state(
    model_cfg, tx, ws.mesh, ws.rules, jax.random.key(ws.config.seed), params
  )
  batches = data_lib.make_batches(arrays, cfg.batch_size, seed=ws.config.seed + 10)
  step_fn = functools.partial(pretrain.lm_train_step, dropout=cfg.dropout > 0)
  state, rows = loop.train(
    name="sft",
    stage_dir=ws.stage_dir("sft"),
    state=state,
    state_shardings=shardings,
    step_fn=step_fn,
    batches=batches,
    total_steps=steps,
    mesh=ws.mesh,
    seed=ws.config.seed + 11,
    loop_cfg=cfg,
  )
  summary: dict[str, Any] = {
    "steps": steps,
    "examples": n,
    "dropped": arrays["n_dropped_prompt"] + arrays["n_dropped_response"],
  }
  val = sft_arrays(ws, "validation")
  if val["tokens"].shape[0]:
    summary["validation_loss"] = pretrain.evaluate_lm(ws, state.params, model_cfg, val)
  if rows:
    summary["final_loss"] = rows[-1]["loss"]
  return summary
