"""Scoring many examples with a model, in batches on the workspace's mesh.

The LM loss of held-out text, a reward or log-likelihood per sequence, and how well any such
score ranks held-out comparisons. Used by the RM stage (held-out accuracy, the likelihood
baseline, the demonstration bias), by the evaluation (KL, alignment tax) and by the RM
breakdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from instructgpt_jax import data as data_lib
from instructgpt_jax import losses, objectives
from instructgpt_jax import model as model_lib
from instructgpt_jax.workspace import Workspace

# (params, tokens [N, seq], mask [N, seq]) -> scores [N]. Parameters are an argument, not
# closed over, so they are not baked into the compiled program (and may span processes).
ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def lm_loss(
  ws: Workspace,
  params: Any,
  model_cfg: model_lib.ModelConfig,
  arrays: dict[str, Any],
  batch_size: int = 32,
) -> float:
  """Token-weighted mean LM loss of `params` over every row of `arrays` (dropout off)."""
  apply_fn = model_lib.Transformer(model_cfg.replace(dropout=0.0)).apply

  @jax.jit
  def loss_sum(batch, params):
    batch = dict(batch, loss_mask=batch["loss_mask"] * batch["valid"][:, None])
    loss, metrics = objectives.lm_loss_fn(params, apply_fn, batch)
    return loss * metrics["tokens"], metrics["tokens"]

  total = count = 0.0
  for _, (s, n) in data_lib.map_batches(loss_sum, arrays, batch_size, ws.mesh, ws.rules, params):
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)


def reward_fn(ws: Workspace, model_cfg: model_lib.ModelConfig) -> ScoreFn:
  """A reward model's reward of each sequence (`objectives.sequence_rewards`), whose response
  starts at `data.prompt_len` (the project layout)."""
  start = ws.config.data.prompt_len
  return lambda params, tokens, mask: objectives.sequence_rewards(
    params, model_cfg, tokens, mask, start
  )


def ensemble_reward_fn(ws: Workspace, model_cfg: model_lib.ModelConfig) -> ScoreFn:
  """An RM ensemble's mean reward; its `params` argument is the sequence of members'
  parameter trees (`Workspace.load_reward_model`)."""
  start = ws.config.data.prompt_len
  return lambda members, tokens, mask: objectives.ensemble_rewards(
    members, model_cfg, tokens, mask, start
  )


def loglik_fn(ws: Workspace, lm_cfg: model_lib.ModelConfig, temperature: float = 1.0) -> ScoreFn:
  """log p(response | prompt) under a language model, where the response occupies positions
  [prompt_len, prompt_len + response_len) of the project layout."""
  P, R = ws.config.data.prompt_len, ws.config.data.response_len
  return lambda params, tokens, mask: objectives.span_logprobs(
    params, lm_cfg, tokens, mask, P, R, temperature
  ).sum(axis=1)


def score_with(
  ws: Workspace,
  score_fn: ScoreFn,
  params: Any,
  tokens: np.ndarray,
  mask: np.ndarray,
  batch_size: int = 64,
) -> np.ndarray:
  """`score_fn` with `params` (traced under jit) over sequences tokens/mask [N, seq]; returns
  [N]."""
  fn = jax.jit(lambda b, p: score_fn(p, b["tokens"], b["mask"]))
  out = [
    np.asarray(r)[batch["valid"] > 0]
    for batch, r in data_lib.map_batches(
      fn, {"tokens": tokens, "mask": mask}, batch_size, ws.mesh, ws.rules, params
    )
  ]
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def comparison_scores(
  ws: Workspace, score_fn: ScoreFn, params: Any, arrays: dict[str, Any], batch_size: int = 64
) -> np.ndarray:
  """`score_fn` with `params` on every response slot of comparisons tokens/mask [N, K, seq]
  (absent slots too, which `ranks` -1 leaves out of any accuracy); returns [N, K]."""
  n, k, t = arrays["tokens"].shape
  flat = [arrays[key].reshape(n * k, t) for key in ("tokens", "mask")]
  return score_with(ws, score_fn, params, *flat, batch_size).reshape(n, k)


def ranking_accuracy(scores: np.ndarray, ranks: np.ndarray) -> dict[str, float]:
  """How well scores [N, K] order the comparisons ranks [N, K] (-1 absent): pair-weighted
  accuracy (a score tie counts as wrong), the prompt-mean pairwise loss and the pair count, as
  `pairwise_accuracy` gives them."""
  _, m = losses.pairwise_rm_loss(scores, ranks)
  return {"accuracy": float(m["accuracy"]), "loss": float(m["loss"]), "pairs": int(m["num_pairs"])}


def pairwise_accuracy(
  ws: Workspace, score_fn: ScoreFn, params: Any, arrays: dict[str, Any], batch_size: int = 16
) -> dict[str, float]:
  """Pair-weighted accuracy and loss of a score (`score_fn` with `params`) over every comparison
  of `arrays`.

  arrays: tokens/mask [N, K, seq], ranks [N, K] (-1 absent), as `inputs.comparison_arrays`.
  """

  @jax.jit
  def stats(batch, params):
    b, k, t = batch["tokens"].shape
    tokens, mask = batch["tokens"].reshape(b * k, t), batch["mask"].reshape(b * k, t)
    rewards = score_fn(params, tokens, mask).reshape(b, k)
    ranks = jnp.where(batch["valid"][:, None] > 0, batch["ranks"], -1)
    _, m = losses.pairwise_rm_loss(rewards, ranks)
    return (
      m["accuracy"] * m["num_pairs"],
      m["loss"] * m["num_prompts"],
      m["num_pairs"],
      m["num_prompts"],
    )

  totals = np.zeros(4)
  for _, out in data_lib.map_batches(stats, arrays, batch_size, ws.mesh, ws.rules, params):
    totals += np.asarray(out)
  return {
    "accuracy": totals[0] / max(totals[2], 1),
    "loss": totals[1] / max(totals[3], 1),
    "pairs": int(totals[2]),
  }
