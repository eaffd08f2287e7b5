"""Stage "rm": the reward model, trained on rankings of K = 4..9 responses per prompt.

Initialised from the SFT trunk with the unembedding replaced by a scalar head. The reward of a
sequence is the head's output at its last real token (the EOS). All C(K,2) comparisons of one
prompt are one batch element (`losses.pairwise_rm_loss`), one epoch, cosine decay to 10 %
(paper C.2). Afterwards a bias is folded into the head so the demonstrations score mean 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax import loop, losses, sampling, sft, train_state
from instructgpt_jax import model as model_lib
from instructgpt_jax.workspace import Workspace

SCALAR_HEAD = "scalar_head"


def sequence_rewards(
  params: Any, apply_fn: Callable, tokens: jax.Array, mask: jax.Array
) -> jax.Array:
  """Reward per sequence: the scalar head at the last real token. [batch, seq] -> [batch]."""
  values = apply_fn({"params": params}, tokens, mask)
  idx, _ = losses.last_valid_index(mask)
  return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0]


def rm_loss_fn(params: Any, apply_fn: Callable, batch: dict[str, jax.Array]):
  """batch: tokens/mask [prompts, K, seq], ranks [prompts, K] (-1 absent) -> pairwise loss."""
  b, k, t = batch["tokens"].shape
  rewards = sequence_rewards(
    params, apply_fn, batch["tokens"].reshape(b * k, t), batch["mask"].reshape(b * k, t)
  ).reshape(b, k)
  return losses.pairwise_rm_loss(rewards, batch["ranks"])


def rm_train_step(
  state: train_state.TrainState, batch: dict[str, jax.Array], rng: jax.Array
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the pairwise ranking loss."""
  del rng  # Dropout is off for the RM (RLHF-NOTES 3.10).
  (_, metrics), grads = jax.value_and_grad(rm_loss_fn, has_aux=True)(
    state.params, state.apply_fn, batch
  )
  return state.apply_gradients(grads=grads), dict(metrics, grad_norm=optax.global_norm(grads))


def trunk_with_scalar_head(lm_params: dict[str, Any], fresh_scalar: dict[str, Any]) -> dict:
  """The LM's trunk with the scalar head of `fresh_scalar` (the unembedding is dropped)."""
  params = {k: v for k, v in lm_params.items() if k != "unembed"}
  params[SCALAR_HEAD] = fresh_scalar[SCALAR_HEAD]
  return params


def comparisons_path(ws: Workspace) -> str:
  return ws.config.data.comparisons_jsonl or os.path.join(
    ws.stage_dir("label"), "comparisons.jsonl"
  )


def comparison_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  recs = ws.records("comparisons", split, path=comparisons_path(ws))
  d = ws.config.data
  arrays = data_lib.encode_comparisons(
    ws.tokenizer(),
    [r["prompt"] for r in recs],
    [r["responses"] for r in recs],
    [r["ranking"] for r in recs],
    d.prompt_len,
    d.response_len,
  )
  dropped = {k: v for k, v in arrays.items() if k.startswith("n_dropped") and v}
  if dropped:
    logging.warning("rm/%s: of %d comparisons: %s", split, len(recs), dropped)
  return arrays


def pairwise_accuracy(
  ws: Workspace,
  reward_fn: Callable[[jax.Array, jax.Array], jax.Array],
  arrays: dict[str, Any],
  batch_size: int = 16,
) -> dict[str, float]:
  """Pair-weighted accuracy and loss of any reward over every comparison of `arrays`.

  `reward_fn(tokens, mask)`: [N, seq] -> [N] rewards, traced under jit."""

  @jax.jit
  def stats(batch):
    b, k, t = batch["tokens"].shape
    rewards = reward_fn(batch["tokens"].reshape(b * k, t), batch["mask"].reshape(b * k, t)).reshape(
      b, k
    )
    ranks = jnp.where(batch["valid"][:, None] > 0, batch["ranks"], -1)
    _, m = losses.pairwise_rm_loss(rewards, ranks)
    return (
      m["accuracy"] * m["num_pairs"],
      m["loss"] * m["num_prompts"],
      m["num_pairs"],
      m["num_prompts"],
    )

  totals = np.zeros(4)
  for _, out in data_lib.map_batches(stats, arrays, batch_size, ws.mesh):
    totals += np.asarray(out)
  return {
    "accuracy": totals[0] / max(totals[2], 1),
    "loss": totals[1] / max(totals[3], 1),
    "pairs": int(totals[2]),
  }


def evaluate_rm(
  ws: Workspace,
  params: Any,
  model_cfg: model_lib.ModelConfig,
  arrays: dict[str, Any],
  batch_size: int = 16,
) -> dict[str, float]:
  """The reward model's pair-weighted accuracy and loss over every comparison of `arrays`."""
  apply_fn = model_lib.Transformer(model_cfg).apply
  return pairwise_accuracy(
    ws, lambda t, m: sequence_rewards(params, apply_fn, t, m), arrays, batch_size
  )


def likelihood_accuracy(
  ws: Workspace,
  lm_params: Any,
  lm_cfg: model_lib.ModelConfig,
  arrays: dict[str, Any],
  batch_size: int = 16,
) -> float:
  """Accuracy of ranking responses by their log-likelihood under a language model.

  The baseline an RM should beat: the model it starts from already prefers some responses."""
  return pairwise_accuracy(ws, loglik_fn(ws, lm_params, lm_cfg), arrays, batch_size)["accuracy"]


def loglik_fn(
  ws: Workspace, lm_params: Any, lm_cfg: model_lib.ModelConfig, temperature: float = 1.0
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(tokens, mask) [N, seq] -> log p(response | prompt) [N] under a language model, where the
  response occupies positions [prompt_len, prompt_len + response_len) of the layout."""
  P, R = ws.config.data.prompt_len, ws.config.data.response_len
  return lambda tokens, mask: sampling.response_logprobs(
    lm_params, lm_cfg, tokens, mask, P, R, temperature
  ).sum(axis=1)


def score_sequences(
  ws: Workspace,
  params: Any,
  model_cfg: model_lib.ModelConfig,
  tokens: np.ndarray,
  mask: np.ndarray,
  batch_size: int = 64,
) -> np.ndarray:
  """RM rewards [N] for sequences [N, seq] in the project layout."""
  apply_fn = model_lib.Transformer(model_cfg).apply
  return score_with(
    ws, lambda t, m: sequence_rewards(params, apply_fn, t, m), tokens, mask, batch_size
  )


def score_with(
  ws: Workspace,
  score_fn: Callable[[jax.Array, jax.Array], jax.Array],
  tokens: np.ndarray,
  mask: np.ndarray,
  batch_size: int = 64,
) -> np.ndarray:
  """`score_fn(tokens, mask)` ([B, seq] -> [B], traced under jit) over sequences [N, seq] in
  batches on the workspace's mesh; returns [N]."""
  fn = jax.jit(lambda b: score_fn(b["tokens"], b["mask"]))
  out = [
    np.asarray(r)[batch["valid"] > 0]
    for batch, r in data_lib.map_batches(fn, {"tokens": tokens, "mask": mask}, batch_size, ws.mesh)
  ]
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.rm
  arrays = comparison_arrays(ws, "train")
  n = int(arrays["tokens"].shape[0])
  steps = loop.steps_for_epochs(n, cfg.batch_size, cfg.epochs)
  lm_cfg = ws.model_config()
  rm_cfg = ws.model_config(head="scalar")
  fresh = train_state.boxed_params(rm_cfg, jax.random.key(ws.config.seed + 20))
  if cfg.init_from not in ("sft", "pretrain"):
    raise ValueError(f"rm.init_from={cfg.init_from!r} is not one of ['sft', 'pretrain'].")
  params = trunk_with_scalar_head(
    jax.device_get(ws.load_params(cfg.init_from, lm_cfg)), jax.device_get(nn.meta.unbox(fresh))
  )
  tx = train_state.make_optimizer(cfg.optim, steps, cfg.on_nonfinite == "skip")
  state, shardings = train_state.create_train_state(
    rm_cfg, tx, ws.mesh, ws.rules, jax.random.key(ws.config.seed), params
  )
  batches = data_lib.make_batches(arrays, cfg.batch_size, seed=ws.config.seed + 21)
  state, rows = loop.train(
    name="rm",
    stage_dir=ws.stage_dir("rm"),
    state=state,
    state_shardings=shardings,
    step_fn=rm_train_step,
    batches=batches,
    total_steps=steps,
    mesh=ws.mesh,
    seed=ws.config.seed + 22,
    loop_cfg=cfg,
  )
  # Normalise: demonstrations score mean 0 (paper C.2), folded into the head's bias so every
  # later user of the RM (PPO reward, value init) sees the normalised scale.
  demos = sft.sft_arrays(ws, "train")
  demo_rewards = score_sequences(ws, state.params, rm_cfg, demos["tokens"], demos["mask"])
  bias = float(losses.rm_normalization_bias(demo_rewards))
  params = jax.device_get(state.params)
  params[SCALAR_HEAD]["bias"] = params[SCALAR_HEAD]["bias"] + bias
  ws.save_params("rm", params, rm_cfg)

  summary: dict[str, Any] = {
    "steps": steps,
    "comparisons": n,
    "demo_bias": bias,
    "demo_reward_std": float(np.std(demo_rewards)),
  }
  held_out = [comparison_arrays(ws, s) for s in ("validation", "test")]
  held_out = [a for a in held_out if a["tokens"].shape[0]]
  if held_out:
    merged = {k: np.concatenate([a[k] for a in held_out]) for k in ("tokens", "mask", "ranks")}
    placed = train_state.place_params(params, rm_cfg, ws.mesh, ws.rules)
    summary["heldout"] = evaluate_rm(ws, placed, rm_cfg, merged)
    # Reloaded here rather than kept through training: one model in memory at a time.
    summary["heldout"]["likelihood_baseline"] = likelihood_accuracy(
      ws, ws.load_params(cfg.init_from, lm_cfg), lm_cfg, merged
    )
  summary["train"] = {"accuracy": rows[-1]["accuracy"]} if rows else {}
  return summary
