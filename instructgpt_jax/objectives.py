"""What the stages compute from a model's parameters: the LM loss, log-probs, rewards, values.

Pure functions of (params, model, arrays), shared by every stage: the LM loss is pretraining's
objective, SFT's (with a response-only mask) and PPO's ptx term; span log-probs are PPO's ratio,
its KL to the reference and eval's KL; the scalar head at the last real token is the reward
(plus, optionally, a likelihood term).
The math on arrays (cross-entropy, pairwise and PPO losses) is in `losses.py`; this module
applies the model. A stage that wants another objective writes its own instead of editing one
here, so a forked SFT loss never changes PPO-ptx.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from instructgpt_jax import losses
from instructgpt_jax import model as model_lib

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
  Token t is predicted from the logits at t-1, hence the shift; the unembedding runs on the
  first seq - 1 positions only (the last one predicts nothing).
  """
  rngs = {} if deterministic else {"dropout": rng}
  seq = batch["tokens"].shape[1]
  # Hidden states, not logits: the fused loss forms the logits a chunk at a time and never
  # holds [batch, seq, vocab] of them (docs/speed.md).
  hidden = apply_fn(
    {"params": params},
    batch["tokens"],
    batch["mask"],
    deterministic=deterministic,
    rngs=rngs,
    head_span=(0, seq - 1),
    method="hidden",
  )
  return losses.head_lm_loss(
    hidden, model_lib.unembedding(params), batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]
  )


def span_logprobs(
  params: Any,
  config: model_lib.ModelConfig,
  tokens: jax.Array,
  mask: jax.Array,
  start: int,
  length: int,
  temperature: float = 1.0,
) -> jax.Array:
  """log p(tokens[:, t] | tokens[:, <t]) for t in [start, start + length): [batch, length].

  One forward pass; the unembedding, fused with the log-softmax, runs only on the positions
  [start - 1, start + length - 1) whose logits predict those tokens (`start` >= 1, static). Zero where the token
  or its predecessor is masked (e.g. the first real token of a left-padded row). The
  temperature must be the sampling one (docs/rlhf-notes.md §9).
  """
  hidden = model_lib.Transformer(config).apply(
    {"params": params}, tokens, mask, head_span=(start - 1, length), method="hidden"
  )
  targets = jax.lax.slice_in_dim(tokens, start, start + length, axis=1).astype(jnp.int32)
  # The unembedding fused with the log-softmax, in chunks: no [batch, length, vocab] logits.
  lp = losses.head_token_log_probs(hidden, model_lib.unembedding(params), targets, temperature)
  valid = (jax.lax.slice_in_dim(mask, start, start + length, axis=1) != 0) & (
    jax.lax.slice_in_dim(mask, start - 1, start + length - 1, axis=1) != 0
  )
  return jnp.where(valid, lp, 0.0)


def sequence_rewards(
  params: Any,
  config: model_lib.ModelConfig,
  tokens: jax.Array,
  mask: jax.Array,
  response_start: int,
) -> jax.Array:
  """Reward per sequence: a scalar-head model at the last real token. [batch, seq] -> [batch].

  With `config.reward_likelihood` (not in the paper) the reward adds `likelihood_scale` times
  the mean ("mean") or sum ("sum") of the response's token log-probs under the model's own tied
  LM head, so what the language model knows about its world is in the reward from the start.
  The response occupies [response_start, seq) (static); the scalar head is read from the same
  forward pass.
  """
  idx, _ = losses.last_valid_index(mask)
  model = model_lib.Transformer(config)
  if config.reward_likelihood == "none":
    values = model.apply({"params": params}, tokens, mask)
    return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0]
  hidden = model.apply({"params": params}, tokens, mask, method="hidden")  # [batch, seq, embed]
  last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)
  head = params["scalar_head"]
  scalar = last @ jnp.asarray(head["kernel"], jnp.float32)[:, 0] + head["bias"][0]
  seq = tokens.shape[1]
  lp = losses.head_token_log_probs(
    hidden[:, response_start - 1 : seq - 1],
    params["token_embed"]["embedding"],
    tokens[:, response_start:],
  )
  # A token counts when it and its predecessor are real, as in `span_logprobs`.
  valid = (mask[:, response_start:] != 0) & (mask[:, response_start - 1 : seq - 1] != 0)
  if config.reward_likelihood == "mean":
    term = losses.masked_mean(lp, valid, axis=1)
  else:
    term = losses.masked_sum(lp, valid, axis=1)
  return scalar + params["likelihood_scale"] * term


def ensemble_rewards(
  members: Sequence[Any],
  config: model_lib.ModelConfig,
  tokens: jax.Array,
  mask: jax.Array,
  response_start: int,
) -> jax.Array:
  """The mean of `sequence_rewards` over the parameter trees of an RM ensemble (each member's
  demonstrations already score mean 0, so the mean does too). [batch, seq] -> [batch]."""
  if not members:
    raise ValueError("An RM ensemble needs at least one member.")
  rewards = [sequence_rewards(p, config, tokens, mask, response_start) for p in members]
  return sum(rewards[1:], rewards[0]) / len(rewards)


def span_values(
  params: Any,
  config: model_lib.ModelConfig,
  tokens: jax.Array,
  mask: jax.Array,
  start: int,
  length: int,
) -> jax.Array:
  """A scalar-head model's value of the state before each token of [start, start + length).

  The state before token t is position t - 1, so the head runs on [start - 1, start + length -
  1), aligned with `span_logprobs`. [batch, seq] -> [batch, length].
  """
  return model_lib.Transformer(config).apply(
    {"params": params}, tokens, mask, head_span=(start - 1, length)
  )
