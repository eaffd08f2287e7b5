"""Stage "pretrain": a tiny base model trained on the task world's plain-text corpus.

No machine here can download GPT-3, so the pipeline trains its own base model (it stands in for
GPT-3 in the paper). The step is the LM loss over every token of packed text rows.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from instructgpt_jax import inputs, loop, model_configs, objectives, seeds, settings, train_state
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
  """The base model (fresh, or around `params`) and its optimizer on the mesh; returns (state,
  shardings). `abstract=True` gives ShapeDtypeStructs with shardings (dry run; no allocation).
  """
  cfg = config.pretrain
  tx = train_state.make_optimizer(cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    models.policy,
    tx,
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "pretrain.init")),
    params,
    abstract=abstract,
  )


def train_step(
  state: train_state.TrainState, batch: Batch, rng: jax.Array
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the LM loss over `batch["loss_mask"]`.

  batch: tokens/mask/loss_mask [batch, seq]. Dropout is on when the model config has a rate.
  """
  grad_fn = jax.value_and_grad(objectives.lm_loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, state.apply_fn, batch, rng, False)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(metrics, grad_norm=optax.global_norm(grads))


def check_settings(ws: Workspace) -> None:
  """This stage's section, before any stage starts."""
  cfg = ws.config.pretrain
  settings.positive(cfg, "pretrain", "steps")
  train_state.check_optim(cfg.optim, "pretrain.optim")
  loop.check_loop(cfg, "pretrain", ws.batch_divisor)


def run(ws: Workspace) -> dict[str, Any]:
  """Trains the base model; returns the stage summary (also written to DONE.json)."""
  cfg = ws.config.pretrain
  arrays = inputs.lm_arrays(ws, "train")
  state, shardings = init_state(ws.config, ws.models, ws.mesh, ws.rules, cfg.steps)
  batches = ws.batches(arrays, cfg.batch_size, seed=seeds.of(ws.config.seed, "pretrain.data"))
  state, rows = loop.train(
    name="pretrain",
    stage_dir=ws.stage_dir("pretrain"),
    state=state,
    state_shardings=shardings,
    step_fn=train_step,
    batches=batches,
    total_steps=cfg.steps,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(ws.config.seed, "pretrain.steps"),
    loop_cfg=cfg,
  )
  summary = {"steps": cfg.steps, "train_rows": int(arrays["tokens"].shape[0])}
  if rows:
    summary["final_loss"] = rows[-1]["loss"]
  return summary
