"""Tests for instructgpt_jax.losses against independent NumPy / plain-Python computations."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructgpt_jax import losses as L

FAST = settings(max_examples=25, deadline=None)


def _np(x):
  return np.asarray(x, dtype=np.float64)


def _log_sigmoid(x: float) -> float:
  # Stable log(1 / (1 + e^-x)), written without jax.
  return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# Masked reductions and whitening
# ---------------------------------------------------------------------------------------------


def test_masked_reductions_match_numpy_selection():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 7)).astype(np.float32)
  mask = rng.random((4, 7)) > 0.4
  mask[0] = False  # an empty row
  sel = x[mask].astype(np.float64)
  np.testing.assert_allclose(L.masked_sum(x, mask), sel.sum(), rtol=1e-5)
  np.testing.assert_allclose(L.masked_mean(x, mask), sel.mean(), rtol=1e-5)
  np.testing.assert_allclose(L.masked_var(x, mask), np.var(sel), rtol=1e-5)
  np.testing.assert_allclose(L.masked_var(x, mask, unbiased=True), np.var(sel, ddof=1), rtol=1e-5)
  # Per-row reductions; the empty row gives 0 rather than NaN.
  row_mean = L.masked_mean(x, mask, axis=-1)
  row_var = L.masked_var(x, mask, axis=-1)
  for b in range(4):
    if mask[b].any():
      np.testing.assert_allclose(row_mean[b], x[b][mask[b]].mean(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(row_var[b], np.var(x[b][mask[b]]), rtol=1e-5, atol=1e-6)
    else:
      assert row_mean[b] == 0.0 and row_var[b] == 0.0


def test_masked_mean_float_weights_and_bool_mask_agree():
  x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
  w = np.array([0.5, 0.0, 1.5, 0.0], np.float32)
  np.testing.assert_allclose(L.masked_mean(x, w), (0.5 * 1 + 1.5 * 3) / 2.0, rtol=1e-6)
  np.testing.assert_allclose(L.masked_mean(x, w > 0), 2.0, rtol=1e-6)


def test_empty_mask_is_zero_with_finite_gradients():
  x = jnp.arange(6.0).reshape(2, 3)
  mask = jnp.zeros((2, 3))
  assert L.masked_mean(x, mask) == 0.0
  assert L.masked_var(x, mask, unbiased=True) == 0.0
  g = jax.grad(lambda x: L.masked_mean(x, mask) + L.masked_var(x, mask, unbiased=True))(x)
  assert np.all(np.isfinite(g)) and np.all(g == 0)
  w = L.whiten(x, mask)
  assert np.all(np.isfinite(w)) and np.all(w == 0)


def test_whiten_matches_numpy_biased_variance():
  rng = np.random.default_rng(1)
  x = (3.0 + 2.5 * rng.normal(size=(5, 8))).astype(np.float32)
  mask = rng.random((5, 8)) > 0.3
  sel = x[mask].astype(np.float64)
  mu, var = sel.mean(), np.var(sel)  # np.var is the biased (ddof=0) variance
  expected = np.where(mask, (x - mu) / np.sqrt(var + 1e-8), 0.0)
  np.testing.assert_allclose(L.whiten(x, mask), expected, rtol=1e-4, atol=1e-5)
  out = _np(L.whiten(x, mask))[mask]
  np.testing.assert_allclose(out.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.var(out), 1.0, rtol=1e-4)


def test_whiten_without_mean_shift_keeps_mean():
  rng = np.random.default_rng(2)
  x = (5.0 + 3.0 * rng.normal(size=(3, 6))).astype(np.float32)
  mask = np.ones((3, 6), bool)
  mask[1, 4:] = False
  sel = x[mask].astype(np.float64)
  expected = np.where(mask, (x - sel.mean()) / np.sqrt(np.var(sel) + 1e-8) + sel.mean(), 0.0)
  out = L.whiten(x, mask, shift_mean=False)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_np(out)[mask].mean(), sel.mean(), rtol=1e-5)
  np.testing.assert_allclose(np.var(_np(out)[mask]), 1.0, rtol=1e-4)


def test_whiten_per_row_axis():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 5)).astype(np.float32)
  mask = np.ones((3, 5), bool)
  out = _np(L.whiten(x, mask, axis=-1))
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-8)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# LM losses
# ---------------------------------------------------------------------------------------------


def _np_log_softmax(z):
  z = z.astype(np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_token_log_probs_matches_numpy_and_temperature():
  rng = np.random.default_rng(4)
  logits = rng.normal(scale=3.0, size=(2, 5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(2, 5))
  for temp in (1.0, 0.7):
    ref = _np_log_softmax(logits / temp)
    expected = np.take_along_axis(ref, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(
      L.token_log_probs(logits, targets, temp), expected, rtol=1e-5, atol=1e-5
    )


def test_token_log_probs_stable_and_bf16():
  logits = jnp.array([[[1000.0, 0.0, -1000.0]]])
  out = L.token_log_probs(logits, jnp.array([[1]]))
  np.testing.assert_allclose(out, -1000.0, rtol=1e-6)
  out16 = L.token_log_probs(logits.astype(jnp.bfloat16), jnp.array([[0]]))
  assert out16.dtype == jnp.float32 and np.isfinite(out16).all()


def test_lm_loss_matches_python_loop():
  rng = np.random.default_rng(5)
  B, T, V = 3, 6, 9
  logits = rng.normal(size=(B, T, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T))
  mask = np.zeros((B, T), np.float32)
  mask[0, 2:] = 1
  mask[1, :4] = 1
  mask[2, 1:3] = 1
  nll, correct, n = 0.0, 0, 0
  for b in range(B):
    for t in range(T):
      if mask[b, t]:
        z = logits[b, t].astype(np.float64)
        nll += -(z[targets[b, t]] - math.log(sum(math.exp(v) for v in z)))
        correct += int(np.argmax(z) == targets[b, t])
        n += 1
  loss, metrics = L.lm_loss(logits, targets, mask)
  np.testing.assert_allclose(loss, nll / n, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], nll / n, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], correct / n, rtol=1e-6)
  assert metrics["tokens"] == n


def _head_case(chunk_elements: int, monkeypatch):
  """Hidden states, unembedding, targets, mask; chunks small enough to need padding."""
  B, T, d, V = 3, 37, 16, 50
  rng = np.random.default_rng(7)
  hidden = jnp.asarray(rng.normal(size=(B, T, d)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(V, d)) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T)) > 0.3, jnp.float32)
  monkeypatch.setattr(L, "_CHUNK_ELEMENTS", chunk_elements)
  return hidden, emb, targets, mask


@pytest.mark.parametrize("chunk_elements", [3 * 50 * 8, 1 << 22])  # 5 padded chunks; one chunk
def test_head_lm_loss_matches_lm_loss_values_and_gradients(chunk_elements, monkeypatch):
  hidden, emb, targets, mask = _head_case(chunk_elements, monkeypatch)

  def plain(h, e):
    return L.lm_loss(jnp.einsum("btd,vd->btv", h, e), targets, mask)

  def fused(h, e):
    return L.head_lm_loss(h, e, targets, mask)

  (a, ma), ga = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, emb)
  for fn in (fused, jax.jit(fused)):
    (b, mb), gb = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(hidden, emb)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    for k in ("loss", "accuracy", "tokens"):
      np.testing.assert_allclose(mb[k], ma[k], rtol=1e-6)
    for x, y in zip(gb, ga):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # Without differentiation (evaluation) the same values.
  np.testing.assert_allclose(fused(hidden, emb)[0], a, rtol=1e-6)
  # An empty mask gives 0 with zero gradients, like lm_loss.
  zero = jax.grad(lambda h: L.head_lm_loss(h, emb, targets, 0 * mask)[0])(hidden)
  assert float(L.head_lm_loss(hidden, emb, targets, 0 * mask)[0]) == 0.0
  assert not np.any(zero)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_elements", [3 * 50 * 8, 1 << 22])
def test_head_token_log_probs_matches_token_log_probs(temperature, chunk_elements, monkeypatch):
  hidden, emb, targets, _ = _head_case(chunk_elements, monkeypatch)
  cot = jnp.asarray(np.random.default_rng(8).normal(size=targets.shape), jnp.float32)

  def plain(h, e):
    return jnp.sum(cot * L.token_log_probs(jnp.einsum("btd,vd->btv", h, e), targets, temperature))

  def fused(h, e):
    return jnp.sum(cot * L.head_token_log_probs(h, e, targets, temperature))

  np.testing.assert_allclose(
    L.head_token_log_probs(hidden, emb, targets, temperature),
    L.token_log_probs(jnp.einsum("btd,vd->btv", hidden, emb), targets, temperature),
    rtol=1e-5,
    atol=1e-5,
  )
  a, ga = jax.value_and_grad(plain, argnums=(0, 1))(hidden, emb)
  b, gb = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(hidden, emb)
  np.testing.assert_allclose(b, a, rtol=1e-5)
  for x, y in zip(gb, ga):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  # A traced temperature (as in PPO) compiles and is not differentiated.
  g = jax.jit(jax.grad(lambda h, t: jnp.sum(L.head_token_log_probs(h, emb, targets, t))))
  assert g(hidden, jnp.float32(temperature)).shape == hidden.shape


def test_lm_loss_perfect_prediction_is_near_zero():
  targets = jnp.array([[2, 0, 1]])
  logits = 50.0 * jax.nn.one_hot(targets, 4)
  loss, metrics = L.lm_loss(logits, targets, jnp.ones((1, 3)))
  assert loss < 1e-6 and metrics["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------
# Pairwise reward-model loss
# ---------------------------------------------------------------------------------------------


def _ref_pairwise(rewards, ranks):
  """Enumerate itertools.combinations per prompt, drop ties and absent slots."""
  per_prompt, n_pairs, n_correct = [], 0, 0
  for r, rk in zip(rewards.astype(np.float64), ranks):
    terms = []
    for i, j in itertools.combinations(range(len(r)), 2):
      if rk[i] < 0 or rk[j] < 0 or rk[i] == rk[j]:
        continue
      w, lo = (i, j) if rk[i] < rk[j] else (j, i)
      terms.append(-_log_sigmoid(r[w] - r[lo]))
      n_correct += int(r[w] > r[lo])
    n_pairs += len(terms)
    if terms:
      per_prompt.append(sum(terms) / len(terms))
  loss = sum(per_prompt) / len(per_prompt) if per_prompt else 0.0
  acc = n_correct / n_pairs if n_pairs else 0.0
  return loss, acc, n_pairs


def test_pairwise_hand_case_two_responses():
  # One pair per prompt: loss_b = softplus(-(r_w - r_l)).
  rewards = np.array([[2.0, 0.5], [0.0, 1.0]], np.float32)
  ranks = np.array([[0, 1], [0, 1]])
  loss, m = L.pairwise_rm_loss(rewards, ranks)
  expected = 0.5 * (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(1.0)))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert m["accuracy"] == 0.5 and m["num_pairs"] == 2


def test_pairwise_each_prompt_weighs_the_same():
  # Prompt 0 has 6 pairs all with margin 1; prompt 1 has one pair with margin -2.
  rewards = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 9.0, 9.0]], np.float32)
  ranks = np.array([[0, 1, 2, 3], [0, 1, -1, -1]])
  loss, m = L.pairwise_rm_loss(rewards, ranks)
  p0 = np.mean([-_log_sigmoid(i - j) for i, j in itertools.combinations([3.0, 2, 1, 0], 2)])
  p1 = -_log_sigmoid(-2.0)
  np.testing.assert_allclose(loss, 0.5 * (p0 + p1), rtol=1e-6)
  np.testing.assert_allclose(m["accuracy"], 6 / 7, rtol=1e-6)  # pair-weighted
  assert m["num_pairs"] == 7 and m["num_prompts"] == 2


def test_pairwise_ties_and_prompts_without_pairs_are_dropped():
  rewards = np.array([[1.0, 5.0, -1.0], [4.0, 2.0, 0.0], [7.0, 0.0, 0.0]], np.float32)
  ranks = np.array([[0, 0, 1], [1, 1, 1], [0, -1, -1]])  # row 1 all tied, row 2 one response
  loss, m = L.pairwise_rm_loss(rewards, ranks)
  ref_loss, ref_acc, n = _ref_pairwise(rewards, ranks)
  assert n == 2 and m["num_pairs"] == 2 and m["num_prompts"] == 1
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(m["accuracy"], ref_acc)


def test_pairwise_no_pairs_at_all_is_zero_and_finite_grad():
  rewards = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  ranks = jnp.array([[0, 0], [-1, 1]])
  loss, m = L.pairwise_rm_loss(rewards, ranks)
  assert loss == 0.0 and m["num_pairs"] == 0
  g = jax.grad(lambda r, rk=ranks: L.pairwise_rm_loss(r, rk)[0])(rewards)
  assert np.all(g == 0)


_pairwise_jit = jax.jit(L.pairwise_rm_loss)


@FAST
@given(
  ks=st.lists(st.integers(0, 9), min_size=4, max_size=4),
  seed=st.integers(0, 2**31 - 1),
)
def test_pairwise_matches_combinations_reference(ks, seed):
  # Fixed [4, 9] shape (one compilation); prompt b has ks[b] responses, the rest are absent (-1).
  rng = np.random.default_rng(seed)
  B, K = 4, 9
  rewards = rng.normal(scale=2.0, size=(B, K)).astype(np.float32)
  ranks = np.full((B, K), -1)
  for b, k in enumerate(ks):
    slots = rng.permutation(K)[:k]  # present responses in arbitrary slots
    ranks[b, slots] = rng.integers(0, max(2, k // 2 + 1), size=k)  # many ties
  loss, m = _pairwise_jit(rewards, ranks)
  ref_loss, ref_acc, n = _ref_pairwise(rewards, ranks)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["accuracy"], ref_acc, rtol=1e-5, atol=1e-7)
  assert int(m["num_pairs"]) == n


def test_pairwise_gradient_sign_finite_and_matches_finite_differences():
  rewards = jnp.array([[0.3, -0.2, 1.1, 0.0], [0.5, 0.4, 0.0, 0.0]], jnp.float32)
  ranks = jnp.array([[1, 0, 3, 2], [1, 0, -1, -1]])
  f = lambda r: L.pairwise_rm_loss(r, ranks)[0]
  g = np.asarray(jax.grad(f)(rewards))
  assert np.all(np.isfinite(g))
  # Best response's reward should go up (negative grad), worst one's down (positive grad).
  assert g[0, 1] < 0 and g[0, 2] > 0
  assert g[1, 1] < 0 and g[1, 0] > 0
  assert g[1, 2] == 0 and g[1, 3] == 0  # absent slots get no gradient
  np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-6)  # loss is shift invariant per prompt
  # Central finite differences in float64 via the NumPy reference.
  eps = 1e-4
  r64 = np.asarray(rewards, np.float64)
  fd = np.zeros_like(r64)
  for idx in np.ndindex(r64.shape):
    up, dn = r64.copy(), r64.copy()
    up[idx] += eps
    dn[idx] -= eps
    rk = np.asarray(ranks)
    fd[idx] = (_ref_pairwise(up, rk)[0] - _ref_pairwise(dn, rk)[0]) / (2 * eps)
  np.testing.assert_allclose(g, fd, atol=1e-5)


def test_pairwise_extreme_margins_finite():
  rewards = jnp.array([[200.0, -200.0]])
  for ranks in (jnp.array([[0, 1]]), jnp.array([[1, 0]])):
    loss, _ = L.pairwise_rm_loss(rewards, ranks)
    g = jax.grad(lambda r, rk=ranks: L.pairwise_rm_loss(r, rk)[0])(rewards)
    assert np.isfinite(loss) and np.all(np.isfinite(g))


# ---------------------------------------------------------------------------------------------
# RM normalisation
# ---------------------------------------------------------------------------------------------


def test_rm_normalization_bias_centres_demos():
  demo = np.array([0.5, 1.5, 4.0], np.float32)
  bias = L.rm_normalization_bias(demo)
  np.testing.assert_allclose(bias, -2.0, rtol=1e-6)
  np.testing.assert_allclose(np.mean(demo + np.asarray(bias)), 0.0, atol=1e-6)
  masked = L.rm_normalization_bias(np.array([1.0, 3.0, 100.0]), mask=np.array([1, 1, 0]))
  np.testing.assert_allclose(masked, -2.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# KL-penalised rewards and sequence KL
# ---------------------------------------------------------------------------------------------


def test_kl_rewards_score_at_last_valid_token_various_lengths_and_offsets():
  B, T = 4, 7
  logp = np.full((B, T), -1.0, np.float32)
  ref = np.full((B, T), -1.5, np.float32)  # per-token kl = 0.5
  mask = np.zeros((B, T), np.float32)
  mask[0, 0:3] = 1  # starts at 0, ends at 2
  mask[1, 2:7] = 1  # offset, runs to the end
  mask[2, 3:5] = 1  # offset, ends early (PAD after EOS)
  # row 3 empty
  scores = np.array([10.0, 20.0, 30.0, 40.0], np.float32)
  beta = 0.1
  rewards, kl = L.kl_penalized_rewards(scores, logp, ref, mask, beta)
  expected = np.zeros((B, T))
  for b, (s, e) in enumerate([(0, 3), (2, 7), (3, 5)]):
    expected[b, s:e] = -beta * 0.5
    expected[b, e - 1] += scores[b]
  np.testing.assert_allclose(rewards, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(kl, 0.5 * mask, rtol=1e-6)
  assert np.all(np.asarray(rewards)[3] == 0)


def test_kl_rewards_random_against_loop():
  rng = np.random.default_rng(7)
  B, T = 5, 9
  logp = rng.normal(size=(B, T)).astype(np.float32)
  ref = rng.normal(size=(B, T)).astype(np.float32)
  scores = rng.normal(size=B).astype(np.float32)
  mask = np.zeros((B, T), bool)
  for b in range(B):
    s = rng.integers(0, T)
    e = rng.integers(s + 1, T + 1)
    mask[b, s:e] = True
  kl_coef = jnp.float32(0.02)  # traced-able coefficient
  rewards, kl = jax.jit(L.kl_penalized_rewards)(scores, logp, ref, mask, kl_coef)
  expected = np.zeros((B, T))
  for b in range(B):
    last = max(t for t in range(T) if mask[b, t])
    for t in range(T):
      if mask[b, t]:
        expected[b, t] = -0.02 * (float(logp[b, t]) - float(ref[b, t]))
    expected[b, last] += scores[b]
  np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-6)
  seq_ref = [
    sum(float(logp[b, t]) - float(ref[b, t]) for t in range(T) if mask[b, t]) for b in range(B)
  ]
  np.testing.assert_allclose(L.sequence_kl(logp, ref, mask), seq_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(kl).sum(-1), L.sequence_kl(logp, ref, mask), rtol=1e-6, atol=1e-6
  )


def test_sequence_kl_hand_case():
  logp = jnp.array([[-1.0, -2.0, -3.0]])
  ref = jnp.array([[-1.5, -1.0, -9.0]])
  mask = jnp.array([[1, 1, 0]])
  np.testing.assert_allclose(L.sequence_kl(logp, ref, mask), [0.5 - 1.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------


def _ref_gae(rewards, values, mask, gamma, lam):
  """Backward Python loop over the valid positions of each row; 0 value after the last one."""
  B, T = rewards.shape
  adv = np.zeros((B, T))
  for b in range(B):
    idx = [t for t in range(T) if mask[b, t]]
    last_gae, next_v = 0.0, 0.0
    for t in reversed(idx):
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last_gae = delta + gamma * lam * last_gae
      adv[b, t] = last_gae
      next_v = values[b, t]
  ret = np.where(mask, adv + values, 0.0)
  return adv, ret


def test_gae_gamma1_lam1_is_reward_to_go_minus_value():
  rewards = np.array([[0.0, 0.0, 1.0, 0.0], [0.5, -0.1, 0.2, 3.0]], np.float32)
  values = np.array([[0.3, 0.2, 0.1, 9.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
  adv, ret = L.gae(rewards, values, mask, gamma=1.0, lam=1.0)
  rtg = np.array([[1.0, 1.0, 1.0, 0.0], [3.6, 3.1, 3.2, 3.0]])
  np.testing.assert_allclose(adv, (rtg - values) * mask, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
    ret, rtg * mask, rtol=1e-6, atol=1e-6
  )  # the value beyond EOS is ignored


def test_gae_lam0_is_one_step_td():
  rewards = np.array([[1.0, 2.0, 3.0]], np.float32)
  values = np.array([[0.5, 0.25, 4.0]], np.float32)
  adv, _ = L.gae(rewards, values, np.ones((1, 3)), gamma=0.9, lam=0.0)
  expected = [1.0 + 0.9 * 0.25 - 0.5, 2.0 + 0.9 * 4.0 - 0.25, 3.0 - 4.0]
  np.testing.assert_allclose(adv, [expected], rtol=1e-6)


def test_gae_offset_run_and_empty_row():
  rewards = np.array([[9.0, 9.0, 1.0, 2.0, 9.0], [9.0] * 5], np.float32)
  values = np.array([[7.0, 7.0, 0.5, 1.0, 7.0], [7.0] * 5], np.float32)
  mask = np.array([[0, 0, 1, 1, 0], [0] * 5], np.float32)
  adv, ret = L.gae(rewards, values, mask, gamma=1.0, lam=0.95)
  a3 = 2.0 - 1.0
  a2 = (1.0 + 1.0 - 0.5) + 0.95 * a3
  np.testing.assert_allclose(adv, [[0, 0, a2, a3, 0], [0] * 5], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0, 0, a2 + 0.5, a3 + 1.0, 0], [0] * 5], rtol=1e-6)


@FAST
@given(
  seed=st.integers(0, 2**31 - 1),
  gamma=st.sampled_from([1.0, 0.99, 0.5]),
  lam=st.sampled_from([0.0, 0.95, 1.0]),
)
def test_gae_matches_backward_loop(seed, gamma, lam):
  rng = np.random.default_rng(seed)
  B, T = 4, 8
  rewards = rng.normal(size=(B, T)).astype(np.float32)
  values = rng.normal(size=(B, T)).astype(np.float32)
  mask = np.zeros((B, T), bool)
  for b in range(B):
    s = rng.integers(0, T + 1)
    e = rng.integers(s, T + 1)
    mask[b, s:e] = True  # contiguous run at any offset, possibly empty
  adv, ret = _gae_jit(rewards, values, mask, gamma, lam)
  ref_adv, ref_ret = _ref_gae(_np(rewards), _np(values), mask, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ret, ref_ret, rtol=1e-4, atol=1e-5)


_gae_jit = jax.jit(L.gae)


# ---------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------


def test_ppo_policy_loss_clip_quadrants():
  eps = 0.2
  # Four tokens: ratio above / below the clip range, with positive / negative advantage.
  ratios = np.array([1.5, 1.5, 0.5, 0.5])
  adv = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
  old = np.zeros(4, np.float32)
  logp = np.log(ratios).astype(np.float32)
  per_token = [
    -1.0 * 1.2,  # A>0, ratio high: clipped (no extra credit beyond 1+eps)
    1.0 * 1.5,  # A<0, ratio high: unclipped (pessimistic)
    -1.0 * 0.5,  # A>0, ratio low: unclipped
    1.0 * 0.8,  # A<0, ratio low: clipped
  ]
  mask = np.ones(4)
  loss, m = L.ppo_policy_loss(logp[None], old[None], adv[None], mask[None], eps)
  np.testing.assert_allclose(loss, np.mean(per_token), rtol=1e-6)
  np.testing.assert_allclose(m["clipfrac"], 0.5)
  np.testing.assert_allclose(m["ratio_mean"], ratios.mean(), rtol=1e-6)
  lr = np.log(ratios)
  np.testing.assert_allclose(m["approx_kl"], np.mean(0.5 * lr**2), rtol=1e-5)
  np.testing.assert_allclose(m["approx_kl_k3"], np.mean(ratios - 1 - lr), rtol=1e-5)
  # Gradient: zero on clipped tokens, -A * ratio / N on unclipped ones (d ratio / d logp = ratio).
  pg = lambda lp: L.ppo_policy_loss(lp, old[None], adv[None], mask[None], eps)[0]
  g = jax.grad(pg)(jnp.asarray(logp[None]))
  np.testing.assert_allclose(g[0], [0.0, 1.5 / 4, -0.5 / 4, 0.0], atol=1e-6)


def test_ppo_policy_loss_matches_numpy_with_mask():
  rng = np.random.default_rng(8)
  B, T = 3, 6
  old = rng.normal(size=(B, T)).astype(np.float32)
  logp = (old + 0.3 * rng.normal(size=(B, T))).astype(np.float32)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  mask = rng.random((B, T)) > 0.3
  r = np.exp(_np(logp) - _np(old))
  per = np.maximum(-adv * r, -adv * np.clip(r, 0.9, 1.1))
  loss, m = jax.jit(L.ppo_policy_loss)(logp, old, adv, mask, 0.1)
  np.testing.assert_allclose(loss, per[mask].mean(), rtol=1e-5)
  clipped = -adv * np.clip(r, 0.9, 1.1) > -adv * r
  np.testing.assert_allclose(m["clipfrac"], clipped[mask].mean(), rtol=1e-6)
  # At ratio == 1 the loss is -mean(A) and nothing is clipped.
  loss1, m1 = L.ppo_policy_loss(old, old, adv, mask)
  np.testing.assert_allclose(loss1, -_np(adv)[mask].mean(), rtol=1e-5)
  assert m1["clipfrac"] == 0 and m1["approx_kl"] == 0


def test_ppo_value_loss_hand_cases():
  eps = 0.2
  old = np.array([[0.0, 0.0, 0.0, 0.0, 5.0]], np.float32)
  v = np.array([[1.0, 1.0, 0.1, -1.0, 0.0]], np.float32)
  ret = np.array([[1.0, 0.0, 2.0, 1.0, 0.0]], np.float32)
  mask = np.array([[1, 1, 1, 1, 0]], np.float32)
  # token 0: v moved past clip towards R; clipped 0.2 is farther -> clipped err (0.8^2) dominates
  # token 1: v moved away from R; unclipped err 1 > clipped err 0.04
  # token 2: inside clip range -> both equal (0.1 - 2)^2
  # token 3: v moved away below; unclipped (−2)^2=4 vs clipped (−0.2−1)^2=1.44
  errs = [0.8**2, 1.0, 1.9**2, 4.0]
  loss, m = L.ppo_value_loss(v, old, ret, mask, eps)
  np.testing.assert_allclose(loss, 0.5 * np.mean(errs), rtol=1e-5)
  np.testing.assert_allclose(m["vf_clipfrac"], 0.25)
  # Gradient is zero where the clipped branch is active.
  g = jax.grad(lambda x: L.ppo_value_loss(x, old, ret, mask, eps)[0])(jnp.asarray(v))
  # d/dv 0.5 * (v - R)^2 / N = (v - R) / N on the unclipped, masked tokens (1 and 2 and 3).
  np.testing.assert_allclose(g, [[0.0, 1.0 / 4, (0.1 - 2.0) / 4, -2.0 / 4, 0.0]], atol=1e-6)


def test_ppo_value_loss_matches_numpy():
  rng = np.random.default_rng(9)
  B, T = 4, 5
  old = rng.normal(size=(B, T)).astype(np.float32)
  v = (old + 0.5 * rng.normal(size=(B, T))).astype(np.float32)
  ret = rng.normal(size=(B, T)).astype(np.float32)
  mask = rng.random((B, T)) > 0.25
  vc = np.minimum(np.maximum(v, old - 0.2), old + 0.2)
  per = 0.5 * np.maximum((v - ret) ** 2, (vc - ret) ** 2)
  loss, m = jax.jit(L.ppo_value_loss)(v, old, ret, mask, 0.2)
  np.testing.assert_allclose(loss, per[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(
    m["vf_clipfrac"], ((vc - ret) ** 2 > (v - ret) ** 2)[mask].mean(), rtol=1e-6
  )


# ---------------------------------------------------------------------------------------------
# KL controller and ptx
# ---------------------------------------------------------------------------------------------


def test_kl_controller_update():
  # observed/target - 1 = 0.5 -> clipped to 0.2; 0.2 * 256 / 10000 = 0.00512
  np.testing.assert_allclose(
    L.kl_controller_update(0.1, 9.0, 256, 6.0, 10000), 0.1 * 1.00512, rtol=1e-6
  )
  # Inside the clip: 5/6 - 1 = -1/6
  np.testing.assert_allclose(
    L.kl_controller_update(0.1, 5.0, 512, 6.0, 10000), 0.1 * (1 - (1 / 6) * 512 / 10000), rtol=1e-6
  )
  # Far below target -> -0.2; on target -> unchanged.
  np.testing.assert_allclose(L.kl_controller_update(0.2, 0.0, 100, 6.0, 100), 0.2 * 0.8, rtol=1e-6)
  np.testing.assert_allclose(L.kl_controller_update(0.2, 6.0, 100, 6.0, 100), 0.2, rtol=1e-6)
  coef = jnp.float32(0.02)  # As ppo.init_state holds it.
  jitted = jax.jit(L.kl_controller_update)(coef, 3.0, 64, 6.0, 1e4)
  np.testing.assert_allclose(jitted, L.kl_controller_update(coef, 3.0, 64, 6.0, 1e4))


def test_ppo_ptx_objective_and_gradient_accumulation():
  np.testing.assert_allclose(L.ppo_ptx_objective(1.5, 2.0, 27.8), 1.5 + 27.8 * 2.0, rtol=1e-6)
  assert L.ppo_ptx_objective(1.5, 2.0, 0.0) == 1.5  # gamma = 0 is plain PPO

  def f(w):
    return L.ppo_ptx_objective(jnp.sum(w**2), jnp.sum(3.0 * w), 2.0)

  w = jnp.array([1.0, -2.0])
  np.testing.assert_allclose(jax.grad(f)(w), 2 * w + 2.0 * 3.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# jit compatibility of everything
# ---------------------------------------------------------------------------------------------


def test_all_functions_jit_and_match_eager():
  rng = np.random.default_rng(10)
  B, T, V, K = 2, 5, 7, 4
  x = rng.normal(size=(B, T)).astype(np.float32)
  y = rng.normal(size=(B, T)).astype(np.float32)
  z = rng.normal(size=(B, T)).astype(np.float32)
  mask = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.float32)
  logits = rng.normal(size=(B, T, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T))
  rewards = rng.normal(size=(B, K)).astype(np.float32)
  ranks = np.array([[0, 1, 1, -1], [3, 2, 1, 0]])
  calls = [
    (L.masked_mean, (x, mask)),
    (L.masked_sum, (x, mask)),
    (L.masked_var, (x, mask)),
    (L.whiten, (x, mask)),
    (L.token_log_probs, (logits, targets, 0.7)),
    (L.lm_loss, (logits, targets, mask)),
    (L.pairwise_rm_loss, (rewards, ranks)),
    (L.kl_penalized_rewards, (x[:, 0], x, y, mask, 0.02)),
    (L.gae, (x, y, mask, 1.0, 0.95)),
    (L.ppo_policy_loss, (x * 0.1, y * 0.1, z, mask, 0.2)),
    (L.ppo_value_loss, (x, y, z, mask, 0.2)),
    (L.sequence_kl, (x, y, mask)),
    (L.kl_controller_update, (0.1, 3.0, 64, 6.0, 1e4)),
    (L.ppo_ptx_objective, (1.0, 2.0, 27.8)),
    (L.rm_normalization_bias, (x[0],)),
  ]
  for fn, args in calls:
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager, jitted)
  # whiten with shift_mean as a static flag
  jax.jit(L.whiten, static_argnames=("shift_mean",))(x, mask, shift_mean=False)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_outputs_are_float32(dtype):
  x = jnp.ones((2, 3), dtype)
  m = jnp.ones((2, 3), bool)
  assert L.masked_mean(x, m).dtype == jnp.float32
  assert L.gae(x, x, m)[0].dtype == jnp.float32
  assert L.ppo_policy_loss(x, x, x, m)[0].dtype == jnp.float32


def test_rloo_and_grpo_advantages_by_hand_and_as_trl_computes_them():
  torch = pytest.importorskip("torch")
  r = np.array([1.0, 2.0, 4.0, 0.0, 0.0, 3.0])  # Two prompts, three samples each.
  # RLOO: r_i - mean of the other two.
  np.testing.assert_allclose(
    np.asarray(L.rloo_advantages(r, 3)),
    [1 - 3, 2 - 2.5, 4 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0],
    rtol=1e-6,
  )
  # TRL's RLOO: baseline = (sum of the group - r_i) / (k - 1).
  t = torch.tensor(r).view(-1, 3)
  trl_rloo = (t - (t.sum(1, keepdim=True) - t) / 2).view(-1)
  np.testing.assert_allclose(np.asarray(L.rloo_advantages(r, 3)), trl_rloo.numpy(), rtol=1e-6)
  # TRL's GRPO: (r - group mean) / (group std, unbiased, + 1e-4).
  trl_grpo = ((t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-4)).view(-1)
  np.testing.assert_allclose(np.asarray(L.grpo_advantages(r, 3)), trl_grpo.numpy(), rtol=1e-5)
  # By hand, first group: mean 7/3, sample std sqrt(7/3).
  np.testing.assert_allclose(
    float(L.grpo_advantages(r, 3)[0]), (1 - 7 / 3) / (math.sqrt(7 / 3) + 1e-4), rtol=1e-5
  )


def test_k3_kl_is_zero_at_equal_policies_and_matches_its_formula():
  logp, ref = np.array([-1.0, -2.0, -0.5]), np.array([-1.0, -1.5, -2.0])
  d = ref - logp
  np.testing.assert_allclose(np.asarray(L.k3_kl(logp, ref)), np.exp(d) - d - 1, rtol=1e-6)
  assert float(L.k3_kl(logp, logp).sum()) == 0.0
