"""Stage "rm_base": the reward model's base model: pretrained, tuned on NLP tasks (paper C.2),
then on the demonstrations (paper 3.5).

The paper's RM started "from the SFT model with the final unembedding layer removed" (Sec. 3.5);
its 6B RM was GPT-3 fine-tuned on public NLP data sets (C.2), larger than the 1.3B policy and
shared by every policy size. This stage trains that model for the RM's shape
(`rm.model`, `model_configs.ModelConfigs.rm_trunk`) in three phases:

1. pretraining: the LM loss over every token of the policy's pretraining text (packed rows of
   `data.seq_len`), `rm_base.steps` steps;
2. NLP tasks: the response-only LM loss on `nlp_tasks.jsonl` (true/false statements, does the
   passage support this claim, short QA), `rm_base.nlp.epochs` epochs. Without an NLP file (your
   own data and no `data.nlp_tasks_jsonl`, or the "knowledge" world) this phase is skipped and
   the summary says so;
3. demonstrations: the policy's SFT recipe (`sft.run`: response-only LM loss, residual dropout,
   a share of pretraining rows) on the RM's shape, `rm_base.sft.epochs` epochs (0 skips it), so
   the RM starts from an SFT model of its own size, as the paper's did.

It reads only the data and the tokenizer (not the policy's SFT stage), so it is independent of
the policy and reusable across policies. The result is `<workdir>/rm_base/final` (an LM; `rm` replaces its unembedding
with the scalar head). When `rm.init_from` is not "rm_base", nothing is trained.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from instructgpt_jax import data as data_lib
from instructgpt_jax import (
  inputs,
  loop,
  model_configs,
  objectives,
  scoring,
  seeds,
  settings,
  train_state,
)
from instructgpt_jax.workspace import Workspace

Batch = dict[str, jax.Array]
PHASES = ("pretrain", "nlp", "sft")


def phase_config(config: ml_collections.ConfigDict, phase: str) -> ml_collections.ConfigDict:
  """The config section of `phase`: `rm_base` for pretraining, `rm_base.<phase>` otherwise."""
  if phase not in PHASES:
    raise ValueError(f"rm_base phase {phase!r} is not one of {list(PHASES)}.")
  return config.rm_base if phase == "pretrain" else config.rm_base[phase]


def init_state(
  config: ml_collections.ConfigDict,
  models: model_configs.ModelConfigs,
  mesh: Mesh,
  rules: Any,
  total_steps: int,
  params: Any | None = None,
  *,
  abstract: bool = False,
  phase: str = "pretrain",
) -> tuple[train_state.TrainState, Any]:
  """The RM-sized LM (fresh, or around `params`) with the optimizer of `phase` ("pretrain":
  `rm_base.optim`, "nlp": `rm_base.nlp.optim`, "sft": `rm_base.sft.optim` and its residual
  dropout) on the mesh; returns (state, shardings)."""
  cfg = phase_config(config, phase)
  model_cfg = models.rm_trunk
  if phase == "sft":
    model_cfg = model_cfg.replace(dropout=cfg.dropout)
  tx = train_state.make_optimizer(cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    model_cfg,
    tx,
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "rm_base.init")),
    params,
    abstract=abstract,
  )


def train_step(
  state: train_state.TrainState, batch: Batch, rng: jax.Array
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the LM loss over `batch["loss_mask"]` (every token of packed text in
  pretraining; the response tokens of an NLP task or a demonstration). Dropout is the state's
  model's (on in the demonstrations phase only).

  batch: tokens/mask/loss_mask [batch, seq].
  """
  grad_fn = jax.value_and_grad(objectives.lm_loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, state.apply_fn, batch, rng, False)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(metrics, grad_norm=optax.global_norm(grads))


def nlp_arrays(ws: Workspace, split: str) -> dict[str, Any] | None:
  """The NLP tasks of `split` encoded like demonstrations, prompts left-padded to
  `rm_base.nlp.prompt_len`: tokens/mask/loss_mask [N, prompt_len + response_len]; None when
  there is no NLP file."""
  path = ws.optional_jsonl("nlp_tasks")
  if path is None:
    return None
  recs = ws.records("nlp_tasks", split, path=path)
  arrays = data_lib.encode_sft(
    ws.tokenizer(),
    [r["prompt"] for r in recs],
    [r["response"] for r in recs],
    ws.config.rm_base.nlp.prompt_len,
    ws.config.data.response_len,
  )
  dropped = arrays["n_dropped_prompt"] + arrays["n_dropped_response"]
  if dropped:
    logging.warning(
      "rm_base/%s: dropped %d of %d NLP tasks longer than rm_base.nlp.prompt_len=%d tokens "
      "(prompt) or data.response_len=%d (response)",
      split,
      dropped,
      len(recs),
      ws.config.rm_base.nlp.prompt_len,
      ws.config.data.response_len,
    )
  arrays["records"] = len(recs)
  return arrays


def check_settings(ws: Workspace) -> None:
  """The three phases' sections (nothing to check when the RM does not start from rm_base)."""
  if ws.models.rm_init_from != "rm_base":
    return
  cfg = ws.config.rm_base
  settings.non_negative(cfg, "rm_base", "steps")
  train_state.check_optim(cfg.optim, "rm_base.optim")
  loop.check_loop(cfg, "rm_base", ws.batch_divisor)
  settings.non_negative(cfg.nlp, "rm_base.nlp", "epochs")
  settings.positive(cfg.nlp, "rm_base.nlp", "prompt_len")
  total, max_len = cfg.nlp.prompt_len + ws.config.data.response_len, ws.models.rm_trunk.max_len
  settings.require(
    total <= max_len or ws.models.rm_trunk.family != "gpt",  # RoPE runs past max_len.
    "rm_base.nlp.prompt_len + data.response_len",
    total,
    f"must fit the reward model's context (rm.model max_len={max_len})",
  )
  train_state.check_optim(cfg.nlp.optim, "rm_base.nlp.optim")
  loop.check_loop(cfg.nlp, "rm_base.nlp", ws.batch_divisor)
  inputs.check_sft_section(ws, cfg.sft, "rm_base.sft")


def run(ws: Workspace) -> dict[str, Any]:
  """Pretrains the RM-sized model, tunes it on the NLP tasks, then on the demonstrations;
  returns the stage summary."""
  init_from = ws.models.rm_init_from
  if init_from != "rm_base":
    # The stage runs in every pipeline; an RM started from the policy's models needs none of it.
    return {"skipped": f"rm.init_from={init_from!r}: the RM does not start from rm_base"}
  cfg = ws.config.rm_base
  lm_cfg = ws.models.rm_trunk
  summary: dict[str, Any] = {
    "params": lm_cfg.num_params(),
    "layers": lm_cfg.num_layers,
    "d_model": lm_cfg.d_model,
  }

  t0 = time.perf_counter()
  params, rows = _train_phase(ws, "pretrain", inputs.lm_arrays(ws, "train"), cfg.steps)
  summary["pretrain_steps"] = cfg.steps
  if rows:
    summary["pretrain_final_loss"] = rows[-1]["loss"]
  summary["pretrain_seconds"] = round(time.perf_counter() - t0, 1)
  t0 = time.perf_counter()

  train = nlp_arrays(ws, "train")
  if train is None or not train["tokens"].shape[0]:
    reason = (
      "no NLP tasks file (set config.data.nlp_tasks_jsonl)"
      if train is None
      else "every NLP task is longer than the context"
    )
    logging.warning("rm_base: NLP-task fine-tuning skipped: %s", reason)
    print(f"[rm_base] NLP-task fine-tuning skipped: {reason}", flush=True)
    summary["nlp_skipped"] = reason
  else:
    n = int(train["tokens"].shape[0])
    steps = loop.steps_for_epochs(n, cfg.nlp.batch_size, cfg.nlp.epochs)
    params, rows = _train_phase(ws, "nlp", train, steps, params)
    summary.update(nlp_steps=steps, nlp_examples=n)
    if rows:
      summary["nlp_final_loss"] = rows[-1]["loss"]
    val = nlp_arrays(ws, "validation")
    if val is not None and val["tokens"].shape[0]:
      summary["nlp_validation_loss"] = scoring.lm_loss(ws, params, lm_cfg, val)
    summary["nlp_seconds"] = round(time.perf_counter() - t0, 1)

  if cfg.sft.epochs > 0:
    t0 = time.perf_counter()
    params = _tune_on_demonstrations(ws, params, summary)
    summary["sft_seconds"] = round(time.perf_counter() - t0, 1)
  ws.save_params("rm_base", params, lm_cfg)
  return summary


def _tune_on_demonstrations(ws: Workspace, params: Any, summary: dict[str, Any]) -> Any:
  """Phase 3: the policy's SFT recipe on the RM-sized model (`rm_base.sft`); returns the new
  parameters and adds `sft_*` entries to `summary`."""
  scfg, lm_cfg = ws.config.rm_base.sft, ws.models.rm_trunk
  arrays, counts = inputs.sft_train_rows(
    ws, scfg.pretrain_mix, seeds.of(ws.config.seed, "sft.pretrain_mix"), "rm_base.sft"
  )
  steps = loop.steps_for_epochs(int(arrays["tokens"].shape[0]), scfg.batch_size, scfg.epochs)
  params, rows = _train_phase(ws, "sft", arrays, steps, params)
  summary.update(sft_steps=steps, sft_examples=counts["examples"])
  summary["sft_pretrain_rows"] = counts["pretrain_rows"]
  if rows:
    summary["sft_final_loss"] = rows[-1]["loss"]
  val = inputs.sft_arrays(ws, "validation")
  if val["tokens"].shape[0]:
    summary["sft_validation_loss"] = scoring.lm_loss(ws, params, lm_cfg, val)
  return params


def _train_phase(
  ws: Workspace, phase: str, arrays: dict[str, Any], steps: int, params: Any | None = None
) -> tuple[Any, list[dict[str, Any]]]:
  """Trains the RM-sized LM (around `params`, fresh when None) for `steps` steps of `phase` on
  `arrays` (tokens/mask/loss_mask [N, seq]) in `<workdir>/rm_base/<phase>`; returns the new
  parameters and the logged metric rows."""
  cfg = phase_config(ws.config, phase)
  state, shardings = init_state(ws.config, ws.models, ws.mesh, ws.rules, steps, params, phase=phase)
  del params  # One copy of the parameters: the state holds them.
  state, rows = loop.train(
    name=f"rm_base/{phase}",
    stage_dir=os.path.join(ws.stage_dir("rm_base"), phase),
    state=state,
    state_shardings=shardings,
    step_fn=train_step,
    batches=ws.batches(
      arrays, cfg.batch_size, seed=seeds.of(ws.config.seed, f"rm_base.{phase}.data")
    ),
    total_steps=steps,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(ws.config.seed, f"rm_base.{phase}.steps"),
    loop_cfg=cfg,
  )
  return state.params, rows
