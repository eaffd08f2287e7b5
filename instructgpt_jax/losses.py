"""Loss math for SFT, the pairwise reward model and PPO-ptx.

Every function here is pure and jit-able (no Python control flow on array values, no side
effects); hyper-parameters such as ``kl_coef``, ``gamma`` or ``clip_eps`` may be Python floats or
traced scalars.

Conventions shared by all functions:

* Masks are float or bool arrays broadcastable to the data, ``1`` (or ``True``) = valid. Float masks
  may carry weights; anything ``> 0`` counts as valid where a boolean notion is needed (GAE, the
  last-token index).
* All math runs in float32, whatever the input dtype (bf16 logits are upcast once).
* Masked reductions over an empty mask return 0 (not NaN), with finite gradients, so a batch with
  no valid tokens / pairs cannot poison a train step.
* Outputs that are per-token arrays are zero outside the mask.
* Shapes: ``B`` batch, ``T`` time (tokens), ``V`` vocabulary, ``K`` responses per prompt.

Sources for the formulas: InstructGPT (arXiv:2203.02155, C.2, C.4) and "The N implementation details
of RLHF with PPO" (OpenAI lm-human-preferences); see docs/rlhf-notes.md.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = Any  # jax.typing.ArrayLike, kept loose so Python floats / numpy arrays are accepted.
Metrics = dict[str, Array]

WHITEN_EPS = 1e-8


# ---------------------------------------------------------------------------------------------
# Masked reductions
# ---------------------------------------------------------------------------------------------


def _f32(x: ArrayLike) -> Array:
  return jnp.asarray(x, dtype=jnp.float32)


def _mask_like(mask: ArrayLike, x: Array) -> Array:
  """Float32 mask broadcast to ``x.shape`` (bool -> 0/1)."""
  return jnp.broadcast_to(_f32(mask), x.shape)


def _safe_div(num: Array, den: Array) -> Array:
  """num / den, and 0 where den == 0 (with finite gradients: no 0/0 in the untaken branch)."""
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def masked_sum(x: ArrayLike, mask: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Array:
  """Sum of ``x * mask`` over ``axis`` (all axes if None). Shapes: x [...], mask broadcastable."""
  x = _f32(x)
  return jnp.sum(x * _mask_like(mask, x), axis=axis)


def masked_mean(x: ArrayLike, mask: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Array:
  """Weighted mean ``sum(x * mask) / sum(mask)`` over ``axis``; 0 where the mask is empty."""
  x = _f32(x)
  m = _mask_like(mask, x)
  return _safe_div(jnp.sum(x * m, axis=axis), jnp.sum(m, axis=axis))


def masked_var(
  x: ArrayLike,
  mask: ArrayLike,
  unbiased: bool = False,
  axis: int | tuple[int, ...] | None = None,
) -> Array:
  """Masked variance over ``axis``. Biased (divide by n) by default, as in OpenAI's whitening.

  ``unbiased=True`` applies Bessel's correction n / (n - 1) with n = sum(mask); it returns 0 when
  n <= 1 instead of inf/NaN.
  """
  x = _f32(x)
  m = _mask_like(mask, x)
  mean = masked_mean(x, m, axis=axis)
  mean_b = mean if axis is None else jnp.expand_dims(mean, axis)
  var = masked_mean(jnp.square(x - mean_b), m, axis=axis)
  if unbiased:
    n = jnp.sum(m, axis=axis)
    var = _safe_div(var * n, jnp.where(n > 1, n - 1.0, 0.0))
  return var


def whiten(
  x: ArrayLike,
  mask: ArrayLike,
  shift_mean: bool = True,
  axis: int | tuple[int, ...] | None = None,
) -> Array:
  """Normalise ``x`` to unit (biased) variance over the masked entries; zero outside the mask.

  ``(x - mean) / sqrt(var + 1e-8)``; with ``shift_mean=False`` the mean is added back, i.e. only
  the scale changes (OpenAI's reward whitening, N-implementation-details #14). Statistics are
  taken over ``axis`` (default: the whole array = the whole minibatch).
  Shapes: x [...], mask broadcastable to x -> [...] like x.
  """
  x = _f32(x)
  m = _mask_like(mask, x)
  mean = masked_mean(x, m, axis=axis)
  var = masked_var(x, m, unbiased=False, axis=axis)
  if axis is not None:
    mean, var = jnp.expand_dims(mean, axis), jnp.expand_dims(var, axis)
  out = (x - mean) * jax.lax.rsqrt(var + WHITEN_EPS)
  if not shift_mean:
    out = out + mean
  return out * (m > 0)


# ---------------------------------------------------------------------------------------------
# Language-model losses
# ---------------------------------------------------------------------------------------------


def token_log_probs(
  logits: ArrayLike, targets: ArrayLike, temperature: float | Array = 1.0
) -> Array:
  """log softmax(logits / temperature)[targets].

  Shapes: logits [B, T, V], targets [B, T] int -> [B, T] float32.
  The temperature must be the one used for sampling (N-implementation-details #9), otherwise the
  PPO ratio and the KL are computed against a different distribution than the one sampled.
  Computed as ``logit[target] - logsumexp(logits)``: one fp32 copy of the logits, no softmax.
  """
  logits = _f32(logits) / temperature
  targets = jnp.asarray(targets, dtype=jnp.int32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - log_z


def lm_loss(logits: ArrayLike, targets: ArrayLike, loss_mask: ArrayLike) -> tuple[Array, Metrics]:
  """Mean next-token cross-entropy over the masked tokens.

  Shapes: logits [B, T, V], targets [B, T] int, loss_mask [B, T] -> (scalar, metrics).
  The caller aligns the targets: ``logits[:, t]`` must predict ``targets[:, t]``, i.e. for a
  token sequence ``tok`` pass ``logits(tok)[:, :-1]``, ``tok[:, 1:]`` and the mask of the
  *target* tokens (e.g. response tokens only for SFT).
  The mean is per token over the whole batch (not per sequence).
  Metrics: ``loss``, ``accuracy`` (the target has the largest logit, ties counting as correct;
  masked mean), ``tokens`` (sum of the mask).
  """
  logits = _f32(logits)
  targets = jnp.asarray(targets, dtype=jnp.int32)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  logp = picked - jax.nn.logsumexp(logits, axis=-1)
  mask = _mask_like(loss_mask, logp)
  loss = masked_mean(-logp, mask)
  # Compared with the row max rather than an argmax: XLA:CPU's argmax is a slow variadic reduce.
  correct = (picked >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  metrics = {
    "loss": loss,
    "accuracy": masked_mean(correct, mask),
    "tokens": jnp.sum(mask),
  }
  return loss, metrics


# ---------------------------------------------------------------------------------------------
# Fused LM head: unembedding + log-softmax over the vocabulary, chunked along the sequence
# ---------------------------------------------------------------------------------------------

# Target size of one chunk of logits (fp32 elements, 16 MiB): small enough to stay in the last
# level cache of a CPU, large enough that each chunk's matmuls keep the cores busy.
_CHUNK_ELEMENTS = 1 << 22


def _seq_chunk(batch: int, seq: int, vocab: int) -> int:
  """Positions per chunk so that a chunk's logits `[batch, chunk, vocab]` are ~16 MiB."""
  return max(1, min(seq, _CHUNK_ELEMENTS // max(batch * vocab, 1)))


def _to_chunks(x: Array, chunk: int, fill: Any = 0) -> Array:
  """[B, T, ...] -> [T / chunk, B, chunk, ...], the time axis padded with `fill` to a multiple.

  The batch axis stays an axis of its own, so a batch-sharded input keeps its sharding.
  """
  B, T = x.shape[:2]
  n = -(-T // chunk)
  pad = [(0, 0), (0, n * chunk - T)] + [(0, 0)] * (x.ndim - 2)
  x = jnp.pad(x, pad, constant_values=fill)
  return jnp.swapaxes(x.reshape(B, n, chunk, *x.shape[2:]), 0, 1)


def _from_chunks(x: Array, T: int) -> Array:
  """[n, B, chunk, ...] -> [B, T, ...] (inverse of `_to_chunks`)."""
  n, B, c = x.shape[:3]
  return jnp.swapaxes(x, 0, 1).reshape(B, n * c, *x.shape[3:])[:, :T]


def _chunk_logits(h: Array, emb: Array, temperature: Any) -> Array:
  """[B, C, d] x [V, d] -> [B, C, V] fp32 logits / temperature."""
  logits = jnp.einsum("bcd,vd->bcv", h, emb.astype(h.dtype), preferred_element_type=jnp.float32)
  return logits / temperature


def _chunk_stats(logits: Array, tgt: Array) -> tuple[Array, Array, Array]:
  """Row max, log-sum-exp and target logit of `[B, C, V]` logits (each `[B, C]`)."""
  mx = jnp.max(logits, axis=-1)
  lse = mx + jnp.log(jnp.sum(jnp.exp(logits - mx[..., None]), axis=-1))
  picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
  return mx, lse, picked


def _dlogits(logits: Array, lse: Array, tgt: Array, g: Array) -> Array:
  """d(sum g * log_softmax(logits)[tgt]) / d logits = g * (onehot(tgt) - softmax): [B, C, V]."""
  hit = jnp.arange(logits.shape[-1], dtype=jnp.int32) == tgt[..., None]
  return g[..., None] * (hit.astype(jnp.float32) - jnp.exp(logits - lse[..., None]))


def _head_grads(d: Array, h: Array, emb: Array) -> tuple[Array, Array]:
  """Gradients wrt a chunk's hidden states `[B, C, d]` and the unembedding, transposed `[d, V]`.

  The unembedding's gradient is formed as `h^T d` (`[d, V]`), which reads the `[B, C, V]`
  gradient in its own layout; `d^T h` made XLA:CPU transpose it first, a slow copy per chunk.
  """
  dh = jnp.einsum("bcv,vd->bcd", d, emb, preferred_element_type=jnp.float32)
  demb_t = jnp.einsum("bcd,bcv->dv", h.astype(jnp.float32), d)
  return dh, demb_t


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_log_probs(hidden, emb, targets, temperature, chunk):
  logp, _ = _fused_log_probs_fwd(hidden, emb, targets, temperature, chunk)
  return logp


def _fused_log_probs_fwd(hidden, emb, targets, temperature, chunk):
  T = hidden.shape[1]

  def body(_, xs):
    h, tgt = xs
    _, lse, picked = _chunk_stats(_chunk_logits(h, emb, temperature), tgt)
    return None, (picked - lse, lse)

  xs = (_to_chunks(hidden, chunk), _to_chunks(targets, chunk))
  _, (logp, lse) = jax.lax.scan(body, None, xs)
  return _from_chunks(logp, T), (hidden, emb, targets, temperature, lse)


def _fused_log_probs_bwd(chunk, res, g):
  hidden, emb, targets, temperature, lse = res
  T = hidden.shape[1]

  def body(demb, xs):
    h, tgt, lse_c, g_c = xs
    # Logits recomputed chunk by chunk: one more matmul instead of a [B, T, V] residual.
    d = _dlogits(_chunk_logits(h, emb, temperature), lse_c, tgt, g_c) / temperature
    dh, de = _head_grads(d, h, emb)
    return demb + de, dh

  xs = (
    _to_chunks(hidden, chunk),
    _to_chunks(targets, chunk),
    lse,
    _to_chunks(_f32(g), chunk),
  )
  demb_t, dh = jax.lax.scan(body, jnp.zeros(emb.shape[::-1], jnp.float32), xs)
  dh = _from_chunks(dh, T).astype(hidden.dtype)
  return dh, demb_t.T.astype(emb.dtype), None, None


_fused_log_probs.defvjp(_fused_log_probs_fwd, _fused_log_probs_bwd)


def head_token_log_probs(
  hidden: ArrayLike,
  unembedding: ArrayLike,
  targets: ArrayLike,
  temperature: float | Array = 1.0,
) -> Array:
  """``token_log_probs(hidden @ unembedding.T, targets, temperature)`` without the full logits.

  Shapes: hidden [B, T, d], unembedding [V, d], targets [B, T] int -> [B, T] float32.
  The logits are formed a chunk of positions at a time (about 16 MiB each) with an online
  log-sum-exp; the backward pass recomputes each chunk's logits rather than keeping a
  [B, T, V] fp32 residual, and writes the gradient of the unembedding without transposing
  [B * T, V] gradients. Values and gradients equal the straightforward version up to float
  rounding (tests/test_losses.py). Temperature is not differentiated.
  """
  hidden = jnp.asarray(hidden)
  targets = jnp.asarray(targets, dtype=jnp.int32)
  emb = jnp.asarray(unembedding)
  B, T = targets.shape
  chunk = _seq_chunk(B, T, emb.shape[0])
  temperature = jax.lax.stop_gradient(temperature)
  return _fused_log_probs(hidden, emb, targets, temperature, chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_nll(hidden, emb, targets, weights, chunk):
  """Weighted NLL sum and per-token correctness `[B, T]` (primal only: no gradient work)."""
  T = hidden.shape[1]

  def body(_, xs):
    h, tgt, w = xs
    mx, lse, picked = _chunk_stats(_chunk_logits(h, emb, 1.0), tgt)
    return None, (jnp.sum(w * (lse - picked)), (picked >= mx).astype(jnp.float32))

  xs = (_to_chunks(hidden, chunk), _to_chunks(targets, chunk), _to_chunks(weights, chunk))
  _, (nll, correct) = jax.lax.scan(body, None, xs)
  return jnp.sum(nll), _from_chunks(correct, T)


def _fused_nll_fwd(hidden, emb, targets, weights, chunk):
  """Weighted NLL sum and per-token correctness; the gradients come out of the same pass.

  The loss is a scalar, so d loss / d logits is the cotangent times a quantity the forward pass
  can finish: each chunk's logits are used once, while they are in cache, for the loss and for
  both gradient matmuls (3 LM-head matmuls in all, no [B, T, V] array in memory).
  """
  T = hidden.shape[1]

  def body(demb, xs):
    h, tgt, w = xs
    logits = _chunk_logits(h, emb, 1.0)
    mx, lse, picked = _chunk_stats(logits, tgt)
    dh, de = _head_grads(_dlogits(logits, lse, tgt, -w), h, emb)
    return demb + de, (jnp.sum(w * (lse - picked)), (picked >= mx).astype(jnp.float32), dh)

  xs = (_to_chunks(hidden, chunk), _to_chunks(targets, chunk), _to_chunks(weights, chunk))
  demb_t, (nll, correct, dh) = jax.lax.scan(body, jnp.zeros(emb.shape[::-1], jnp.float32), xs)
  out = (jnp.sum(nll), _from_chunks(correct, T))
  return out, (_from_chunks(dh, T).astype(hidden.dtype), demb_t.T.astype(emb.dtype))


def _fused_nll_bwd(chunk, res, g):
  dh, demb = res
  g_nll = g[0]  # `correct` is a step function: no gradient.
  return dh * g_nll.astype(dh.dtype), demb * g_nll.astype(demb.dtype), None, None


_fused_nll.defvjp(_fused_nll_fwd, _fused_nll_bwd)


def head_lm_loss(
  hidden: ArrayLike, unembedding: ArrayLike, targets: ArrayLike, loss_mask: ArrayLike
) -> tuple[Array, Metrics]:
  """``lm_loss(hidden @ unembedding.T, targets, loss_mask)`` without the full logits.

  Shapes: hidden [B, T, d], unembedding [V, d], targets [B, T] int, loss_mask [B, T] ->
  (scalar, metrics), the same metrics as `lm_loss`. Chunked over positions with an online
  log-sum-exp; under differentiation the forward pass also produces the gradients (the loss is a
  scalar, so they are the cotangent times what the pass computes anyway), so the backward pass
  is one multiply. The mask is not differentiated.
  """
  hidden = jnp.asarray(hidden)
  targets = jnp.asarray(targets, dtype=jnp.int32)
  emb = jnp.asarray(unembedding)
  B, T = targets.shape
  mask = jax.lax.stop_gradient(jnp.broadcast_to(_f32(loss_mask), (B, T)))
  chunk = _seq_chunk(B, T, emb.shape[0])
  nll, correct = _fused_nll(hidden, emb, targets, mask, chunk)
  n = jnp.sum(mask)
  loss = _safe_div(nll, n)
  metrics = {"loss": loss, "accuracy": masked_mean(correct, mask), "tokens": n}
  return loss, metrics


# ---------------------------------------------------------------------------------------------
# Reward model
# ---------------------------------------------------------------------------------------------


def pairwise_rm_loss(rewards: ArrayLike, ranks: ArrayLike) -> tuple[Array, Metrics]:
  """InstructGPT pairwise ranking loss with all C(K, 2) comparisons of a prompt as one element.

  Shapes: rewards [B, K] float, ranks [B, K] int -> (scalar, metrics).
  ``ranks[b, k]`` is the rank of response k (0 = best, lower is better); ``-1`` marks an absent
  slot (prompts with fewer than K responses). Every pair (i, j) of present responses with
  ``rank_i < rank_j`` contributes ``-log sigmoid(r_i - r_j)``; ties are dropped (no pair).

  ``loss_b = mean over prompt b's valid pairs`` (the paper's 1/C(K,2), with C(K,2) replaced by
  the number of untied pairs actually present), and the loss is the mean of ``loss_b`` over the
  prompts that have at least one pair. Every prompt weighs the same, however many pairs it has.
  Metrics: ``loss``; ``accuracy`` = fraction of all valid pairs in the batch with r_i > r_j
  (pair-weighted; a reward tie counts as wrong); ``num_pairs``; ``num_prompts`` (prompts with a
  pair); ``margin`` = mean r_i - r_j over pairs.
  """
  r = _f32(rewards)
  pair_f = _pair_mask(ranks)  # [b, i, j]: response i strictly better than j, both present.
  diff = r[:, :, None] - r[:, None, :]  # [B, K, K], r_i - r_j

  pair_nll = -jax.nn.log_sigmoid(diff)
  pairs_per_prompt = jnp.sum(pair_f, axis=(1, 2))  # [B]
  loss_per_prompt = _safe_div(jnp.sum(pair_nll * pair_f, axis=(1, 2)), pairs_per_prompt)
  has_pair = (pairs_per_prompt > 0).astype(jnp.float32)
  loss = masked_mean(loss_per_prompt, has_pair)

  metrics = {
    "loss": loss,
    "accuracy": masked_mean((diff > 0).astype(jnp.float32), pair_f),
    "num_pairs": jnp.sum(pair_f),
    "num_prompts": jnp.sum(has_pair),
    "margin": masked_mean(diff, pair_f),
  }
  return loss, metrics


DPO_LOSSES = ("sigmoid", "ipo")


def dpo_loss(
  logps: ArrayLike,
  ref_logps: ArrayLike,
  ranks: ArrayLike,
  beta: float,
  loss: str = "sigmoid",
  lengths: ArrayLike | None = None,
) -> tuple[Array, Metrics]:
  """DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023) over all C(K, 2) pairs of a ranking.

  Shapes: logps, ref_logps [B, K] (summed response log-probs under the policy and the frozen
  reference), ranks [B, K] as `pairwise_rm_loss` (-1 absent) -> (scalar, metrics).
  With h = log-ratio(winner) - log-ratio(loser), log-ratio = logp - ref_logp, a pair costs
  "sigmoid": -log sigmoid(beta * h), which is `pairwise_rm_loss` of the implicit rewards
  beta * log-ratio; "ipo": (h - 1 / (2 beta))^2, with each log-ratio divided by its response's
  token count `lengths` [B, K] when given (TRL's per-token IPO). Pairs and prompts are weighed
  as in `pairwise_rm_loss`, whose metrics it returns (accuracy: h > 0), with `chosen_reward`
  and `rejected_reward` (beta * log-ratio, pair-weighted) added.
  """
  if loss not in DPO_LOSSES:
    raise ValueError(f"dpo.loss={loss!r} is not one of {list(DPO_LOSSES)}.")
  ratio = _f32(logps) - _f32(ref_logps)
  if loss == "sigmoid":
    total, metrics = pairwise_rm_loss(beta * ratio, ranks)
  else:
    if lengths is not None:
      ratio = _safe_div(ratio, jnp.maximum(_f32(lengths), 1.0))
    pair = _pair_mask(ranks)
    h = ratio[:, :, None] - ratio[:, None, :]
    per_pair = (h - 1.0 / (2.0 * beta)) ** 2
    per_prompt_pairs = jnp.sum(pair, axis=(1, 2))
    per_prompt = _safe_div(jnp.sum(per_pair * pair, axis=(1, 2)), per_prompt_pairs)
    total = masked_mean(per_prompt, (per_prompt_pairs > 0).astype(jnp.float32))
    metrics = {
      "loss": total,
      "accuracy": masked_mean((h > 0).astype(jnp.float32), pair),
      "num_pairs": jnp.sum(pair),
      "num_prompts": jnp.sum((per_prompt_pairs > 0).astype(jnp.float32)),
      "margin": masked_mean(beta * h, pair),
    }
  pair = _pair_mask(ranks)
  reward = beta * ratio
  metrics["chosen_reward"] = masked_mean(jnp.broadcast_to(reward[:, :, None], pair.shape), pair)
  metrics["rejected_reward"] = masked_mean(jnp.broadcast_to(reward[:, None, :], pair.shape), pair)
  return total, metrics


def _pair_mask(ranks: ArrayLike) -> Array:
  """[B, K, K] float: 1 where response i is ranked strictly above response j, both present."""
  ranks = jnp.asarray(ranks, dtype=jnp.int32)
  present = ranks >= 0
  better = ranks[:, :, None] < ranks[:, None, :]
  return (present[:, :, None] & present[:, None, :] & better).astype(jnp.float32)


def rm_normalization_bias(demo_rewards: ArrayLike, mask: ArrayLike | None = None) -> Array:
  """Bias to add to the RM output so that the demonstrations score mean 0 (InstructGPT C.2).

  Shapes: demo_rewards [N] (optional mask [N]) -> scalar. Use as ``reward_out = reward + bias``.
  """
  x = _f32(demo_rewards)
  m = jnp.ones_like(x) if mask is None else mask
  return -masked_mean(x, m)


# ---------------------------------------------------------------------------------------------
# PPO: rewards, advantages, losses
# ---------------------------------------------------------------------------------------------


def last_valid_index(mask: ArrayLike) -> tuple[Array, Array]:
  """Index of the last valid (``> 0``) position of each row, and whether the row has one.

  Shapes: mask [B, T] -> (index [B] int32, has_any [B] bool). Index is 0 for empty rows.
  Works for any mask (contiguous or not, any offset).
  """
  valid = _f32(mask) > 0
  t = valid.shape[-1]
  positions = jnp.arange(t, dtype=jnp.int32)
  idx = jnp.max(jnp.where(valid, positions, -1), axis=-1)
  has_any = idx >= 0
  return jnp.maximum(idx, 0), has_any


def kl_penalized_rewards(
  scores: ArrayLike,
  logp: ArrayLike,
  ref_logp: ArrayLike,
  response_mask: ArrayLike,
  kl_coef: float | Array,
) -> tuple[Array, Array]:
  """Per-token PPO rewards: ``-kl_coef * (logp - ref_logp)`` plus the RM score at the last token.

  Shapes: scores [B], logp / ref_logp / response_mask [B, T] -> (rewards [B, T], kl [B, T]).
  ``logp`` are the rollout policy's log-probs of the sampled tokens, ``ref_logp`` the SFT
  (reference) model's. ``kl`` is the per-token estimator ``logp - ref_logp`` (k1; its sum over a
  sample is an unbiased estimate of KL(pi_RL || pi_SFT) but single tokens can be negative).
  The score goes to the last valid position of each row (the EOS token, not a PAD after it;
  cf. trl#3750), wherever the valid run starts. Rows with an empty mask get no score.
  Both outputs are zero outside the mask. Apply any score shaping (whitening, missing-EOS
  penalty) to ``scores`` before calling.
  """
  logp = _f32(logp)
  mask = _mask_like(response_mask, logp)
  kl = (logp - _f32(ref_logp)) * mask
  rewards = -kl_coef * kl
  last, has_any = last_valid_index(mask)
  at_last = jax.nn.one_hot(last, logp.shape[-1], dtype=jnp.float32) * has_any[:, None]
  rewards = rewards + _f32(scores)[:, None] * at_last
  return rewards, kl


def gae(
  rewards: ArrayLike,
  values: ArrayLike,
  mask: ArrayLike,
  gamma: float | Array = 1.0,
  lam: float | Array = 0.95,
) -> tuple[Array, Array]:
  """Generalised advantage estimation, one episode per row, via a reverse ``lax.scan``.

  Shapes: rewards, values, mask [B, T] -> (advantages [B, T], returns [B, T]).
  ``delta_t = r_t + gamma * V_next - V_t``, ``A_t = delta_t + gamma * lam * A_next``, where
  "next" is the next *valid* position of the row; after the last valid token the episode has
  ended, so V_next = A_next = 0 there (no bootstrap past EOS). Masked positions are skipped: they
  neither contribute rewards nor break the recursion, which makes any offset (a prompt before the
  response, left padding) work; for the usual contiguous mask this is plain GAE over the run.
  ``returns = advantages + values`` (the value-function target). Both are zero outside the mask.
  Paper / OpenAI settings: gamma = 1, lam = 0.95. Whitening of the advantages is the caller's
  choice (``whiten(adv, mask)``), done after computing the returns.
  """
  r = _f32(rewards)
  v = _f32(values)
  valid = _mask_like(mask, r) > 0

  def step(carry, xs):
    next_value, next_adv = carry
    r_t, v_t, m_t = xs
    delta = r_t + gamma * next_value - v_t
    adv = delta + gamma * lam * next_adv
    # Invalid positions pass the carry through unchanged and output 0.
    new_carry = (jnp.where(m_t, v_t, next_value), jnp.where(m_t, adv, next_adv))
    return new_carry, jnp.where(m_t, adv, 0.0)

  zeros = jnp.zeros(r.shape[:-1], jnp.float32)
  # Scan over time: move T to the front.
  xs = (jnp.moveaxis(r, -1, 0), jnp.moveaxis(v, -1, 0), jnp.moveaxis(valid, -1, 0))
  _, adv_t = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
  advantages = jnp.moveaxis(adv_t, 0, -1)
  returns = jnp.where(valid, advantages + v, 0.0)
  return advantages, returns


def rloo_advantages(rewards: ArrayLike, group_size: int) -> Array:
  """REINFORCE leave-one-out (Ahmadian et al. 2024): each sample's reward minus the mean of the
  other samples of its prompt. rewards [B] with the k = `group_size` samples of a prompt
  consecutive (B divisible by k, k >= 2) -> [B]."""
  r = _f32(rewards).reshape(-1, group_size)
  baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / (group_size - 1)
  return (r - baseline).reshape(-1)


def grpo_advantages(rewards: ArrayLike, group_size: int, eps: float = 1e-4) -> Array:
  """GRPO's group-normalised advantage (Shao et al. 2024): (r - mean) / (std + eps) over the
  k = `group_size` consecutive samples of each prompt, with the unbiased (n - 1) standard
  deviation as TRL computes it. rewards [B] -> [B]."""
  r = _f32(rewards).reshape(-1, group_size)
  mean = jnp.mean(r, axis=1, keepdims=True)
  std = jnp.std(r, axis=1, keepdims=True, ddof=1)
  return ((r - mean) / (std + eps)).reshape(-1)


def k3_kl(logp: ArrayLike, ref_logp: ArrayLike) -> Array:
  """Per-token KL(pi || pi_ref) estimate exp(d) - d - 1 with d = ref_logp - logp (Schulman's k3,
  GRPO's loss term): unbiased, never negative. Any shape."""
  d = _f32(ref_logp) - _f32(logp)
  return jnp.exp(d) - d - 1.0


def ppo_policy_loss(
  logp: ArrayLike,
  old_logp: ArrayLike,
  advantages: ArrayLike,
  mask: ArrayLike,
  clip_eps: float | Array = 0.2,
) -> tuple[Array, Metrics]:
  """PPO clipped surrogate loss, token-level masked mean over the whole minibatch.

  Shapes: logp, old_logp, advantages, mask [B, T] -> (scalar, metrics).
  ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` with
  ``ratio = exp(logp - old_logp)``; ``old_logp`` and ``advantages`` are constants (stop_gradient
  is applied here, so callers cannot leak gradients into them).
  Metrics: ``pg_loss``; ``clipfrac`` = fraction of tokens where the clipped branch is active
  (strictly larger loss); ``approx_kl`` = mean 0.5 * (logp - old_logp)^2 (the OpenAI /
  N-implementation-details "approxkl"); ``approx_kl_k3`` = mean (ratio - 1) - log ratio (Schulman's
  k3 estimator of KL(pi_old || pi), always >= 0); ``ratio_mean``.
  """
  logp = _f32(logp)
  old_logp = jax.lax.stop_gradient(_f32(old_logp))
  adv = jax.lax.stop_gradient(_f32(advantages))
  mask = _mask_like(mask, logp)

  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  pg_unclipped = -adv * ratio
  pg_clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(pg_unclipped, pg_clipped), mask)

  log_ratio_sg = jax.lax.stop_gradient(log_ratio)
  ratio_sg = jax.lax.stop_gradient(ratio)
  metrics = {
    "pg_loss": loss,
    "clipfrac": masked_mean((pg_clipped > pg_unclipped).astype(jnp.float32), mask),
    "approx_kl": masked_mean(0.5 * jnp.square(log_ratio_sg), mask),
    "approx_kl_k3": masked_mean((ratio_sg - 1.0) - log_ratio_sg, mask),
    "ratio_mean": masked_mean(ratio_sg, mask),
  }
  return loss, metrics


def ppo_value_loss(
  values: ArrayLike,
  old_values: ArrayLike,
  returns: ArrayLike,
  mask: ArrayLike,
  clip_eps: float | Array = 0.2,
) -> tuple[Array, Metrics]:
  """Clipped value loss ``0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2)``, masked mean.

  Shapes: values, old_values, returns, mask [B, T] -> (scalar, metrics).
  ``old_values`` (rollout-time values) and ``returns`` are constants (stop_gradient applied).
  The clip is in absolute reward units (N-implementation-details #15), so it interacts with the
  reward scale. Metrics: ``vf_loss``, ``vf_clipfrac`` (fraction where the clipped branch is
  strictly larger), ``vpred_mean``.
  """
  v = _f32(values)
  old = jax.lax.stop_gradient(_f32(old_values))
  ret = jax.lax.stop_gradient(_f32(returns))
  mask = _mask_like(mask, v)

  v_clipped = old + jnp.clip(v - old, -clip_eps, clip_eps)
  err_unclipped = jnp.square(v - ret)
  err_clipped = jnp.square(v_clipped - ret)
  loss = 0.5 * masked_mean(jnp.maximum(err_unclipped, err_clipped), mask)
  metrics = {
    "vf_loss": loss,
    "vf_clipfrac": masked_mean((err_clipped > err_unclipped).astype(jnp.float32), mask),
    "vpred_mean": masked_mean(jax.lax.stop_gradient(v), mask),
  }
  return loss, metrics


def sequence_kl(logp: ArrayLike, ref_logp: ArrayLike, mask: ArrayLike) -> Array:
  """Per-sample estimate of KL(pi_RL || pi_SFT): sum over response tokens of logp - ref_logp.

  Shapes: logp, ref_logp, mask [B, T] -> [B]. Unbiased only when the tokens were sampled from
  pi_RL (at the temperature the log-probs were computed with); the batch mean is the
  "KL(pi_RL || pi_SFT)" reported in evaluation and fed to the adaptive controller.
  """
  return masked_sum(_f32(logp) - _f32(ref_logp), mask, axis=-1)


# ---------------------------------------------------------------------------------------------
# KL controller and the ptx objective
# ---------------------------------------------------------------------------------------------


def kl_controller_update(
  kl_coef: ArrayLike,
  observed_kl: ArrayLike,
  n_steps: ArrayLike,
  target: float | Array,
  horizon: float | Array,
) -> Array:
  """Adaptive KL controller of Ziegler et al. (2019): proportional control, multiplicative update.

  ``new = kl_coef * (1 + clip(observed_kl / target - 1, -0.2, 0.2) * n_steps / horizon)``.
  ``observed_kl`` is the batch mean of ``sequence_kl`` (per sample, not per token) and ``n_steps``
  the number of episodes (samples) in that batch, as in lm-human-preferences. Scalars -> scalar.
  """
  error = jnp.clip(_f32(observed_kl) / target - 1.0, -0.2, 0.2)
  return _f32(kl_coef) * (1.0 + error * _f32(n_steps) / horizon)


def ppo_ptx_objective(
  ppo_loss: ArrayLike, ptx_lm_loss: ArrayLike, ptx_coef: float | Array
) -> Array:
  """PPO-ptx loss to minimise: ``ppo_loss + ptx_coef * ptx_lm_loss``.

  ``ptx_coef`` is the paper's gamma (27.8; 0 gives plain PPO) and ``ptx_lm_loss`` the pretraining
  LM loss as returned by ``lm_loss``: mean negative log-likelihood *per token*. Minimising
  ``gamma * NLL`` is maximising the paper's ``gamma * E_pretrain[log pi_RL(x)]`` term under that
  per-token convention. Differentiate this sum once so both gradients land in one update (the
  paper accumulates them from consecutive steps into the same buffers; same result for the same
  parameters). ``ppo_loss`` is whatever PPO loss the step minimises (policy + vf_coef * value).
  """
  return _f32(ppo_loss) + ptx_coef * _f32(ptx_lm_loss)
