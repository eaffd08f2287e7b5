"""Tests for instructgpt_jax.sampling (tiny models, CPU)."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructgpt_jax import model as model_lib
from instructgpt_jax import sampling
from tests import helpers

PAD, EOS, BOS = 0, 1, 2
P, R = 6, 8
FAMILIES = ("gpt", "llama")


def _config(family):
  return model_lib.ModelConfig(
    vocab_size=64,
    num_layers=2,
    d_model=32,
    num_heads=4,
    num_kv_heads=2 if family == "llama" else 0,
    d_ff=64,
    max_len=32,
    family=family,
  )


@functools.cache
def _setup(family):
  """Config and params; the token embedding is scaled so that next-token distributions are peaky
  (a freshly initialised model is nearly uniform, which would make top-k/top-p tests vacuous)."""
  cfg = _config(family)
  params = model_lib.Transformer(cfg).init(
    jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)
  )["params"]
  params = flax.core.unfreeze(nn.unbox(params))
  params["token_embed"]["embedding"] = params["token_embed"]["embedding"] * 10.0
  return cfg, params


def _prompts(batch=4, seed=0):
  """Left-padded prompts with different lengths (1..P), BOS first."""
  rs = np.random.RandomState(seed)
  tokens = np.full((batch, P), PAD, np.int32)
  mask = np.zeros((batch, P), np.int32)
  for b in range(batch):
    n = P - (b % P)
    tokens[b, P - n :] = np.concatenate([[BOS], rs.randint(3, 64, size=n - 1)])
    mask[b, P - n :] = 1
  return jnp.asarray(tokens), jnp.asarray(mask)


def _gen(family, rng=0, batch=4, **kw):
  cfg, params = _setup(family)
  tokens, mask = _prompts(batch)
  kw = dict(dict(max_new_tokens=R, eos_id=EOS, pad_id=PAD), **kw)
  out = helpers.generate_jit(params, cfg, tokens, mask, jax.random.PRNGKey(rng), **kw)
  return cfg, params, tokens, mask, jax.device_get(out)


@functools.cache
def _forward_fn(family):
  cfg, params = _setup(family)
  return jax.jit(lambda t, m: model_lib.Transformer(cfg).apply({"params": params}, t, m))


def _full_logits(family, tokens, mask):
  return np.asarray(_forward_fn(family)(jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_matches_full_forward(family):
  cfg, params = _setup(family)
  model = model_lib.Transformer(cfg)
  tokens, pmask = _prompts(4)
  S = P + R
  rs = np.random.RandomState(1)
  resp = jnp.asarray(rs.randint(3, 64, size=(4, R)), jnp.int32)
  full_tokens = jnp.concatenate([tokens, resp], axis=1)
  full_mask = jnp.concatenate([pmask, jnp.ones((4, R), jnp.int32)], axis=1)
  ref = model.apply({"params": params}, full_tokens, full_mask)

  def step(*a):
    hidden, cache = model.apply({"params": params}, *a, method="decode_step")
    return hidden @ model_lib.unembedding(params).T, cache

  step = jax.jit(step)
  cache = model_lib.init_cache(cfg, 4, S)
  key_mask = jnp.concatenate([pmask, jnp.zeros((4, R), jnp.int32)], axis=1)
  logits, cache = step(tokens, key_mask, model_lib.positions_from_mask(pmask), cache, 0)
  got = [logits]
  plen = pmask.sum(-1)
  for i in range(R):  # One token at a time (cache_index is traced: one compilation).
    key_mask = key_mask.at[:, P + i].set(1)
    logits, cache = step(resp[:, i : i + 1], key_mask, (plen + i)[:, None], cache, P + i)
    got.append(logits)
  got = jnp.concatenate(got, axis=1)
  real = np.asarray(full_mask, bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(ref)[real], atol=1e-4, rtol=1e-4)


def _check_layout(out, tokens, mask, eos=EOS):
  np.testing.assert_array_equal(out.tokens[:, :P], tokens)
  np.testing.assert_array_equal(out.mask[:, :P], mask)
  np.testing.assert_array_equal(out.response_mask[:, :P], 0)
  np.testing.assert_array_equal(out.logprobs[:, :P], 0)
  np.testing.assert_array_equal(out.response_mask[:, P:], out.mask[:, P:])
  np.testing.assert_array_equal(out.lengths, out.response_mask.sum(-1))
  for b in range(tokens.shape[0]):
    resp = out.tokens[b, P:]
    hits = np.nonzero(resp == eos)[0]
    n = hits[0] + 1 if len(hits) else R
    assert out.ended[b] == bool(len(hits))
    assert out.lengths[b] == n
    np.testing.assert_array_equal(out.response_mask[b, P : P + n], 1)
    np.testing.assert_array_equal(out.response_mask[b, P + n :], 0)
    np.testing.assert_array_equal(resp[n:], PAD)
    np.testing.assert_array_equal(out.logprobs[b, P + n :], 0)
    assert np.all(out.logprobs[b, P : P + n] <= 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_deterministic_and_matches_reference(family):
  _, _, tokens, mask, out1 = _gen(family, rng=0, greedy=True)
  _, _, _, _, out2 = _gen(family, rng=123, greedy=True)
  np.testing.assert_array_equal(out1.tokens, out2.tokens)
  _check_layout(out1, tokens, mask)

  # Reference: argmax of a full forward pass (no cache), one token at a time in a Python loop.
  # The sequence is kept at its final length P + R (future slots masked and, by causality,
  # invisible) so that the forward pass compiles once.
  seq = np.concatenate([np.asarray(tokens), np.full((len(tokens), R), PAD, np.int32)], 1)
  m = np.concatenate([np.asarray(mask), np.zeros((len(tokens), R), np.int32)], 1)
  done = np.zeros(len(seq), bool)
  for i in range(R):
    logits = _full_logits(family, seq, m)[:, P + i - 1]
    seq[:, P + i] = np.where(done, PAD, logits.argmax(-1))
    m[:, P + i] = ~done
    done |= seq[:, P + i] == EOS
  np.testing.assert_array_equal(out1.tokens, seq)
  np.testing.assert_array_equal(out1.mask, m)


def test_eos_stops_row_and_masks_rest():
  family = "gpt"
  # Greedy: take the token that row 0 emits at step 2 and make it EOS; row 0 must stop there.
  cfg, params, tokens, mask, out = _gen(family, greedy=True, eos_id=63)
  row = next(b for b in range(len(tokens)) if out.lengths[b] > 3)
  new_eos = int(out.tokens[row, P + 2])
  assert new_eos != PAD
  out2 = jax.device_get(
    helpers.generate_jit(
      params,
      cfg,
      tokens,
      mask,
      jax.random.PRNGKey(0),
      max_new_tokens=R,
      eos_id=new_eos,
      pad_id=PAD,
      greedy=True,
    )
  )
  assert out2.ended[row] and out2.lengths[row] <= 3
  _check_layout(out2, tokens, mask, eos=new_eos)
  # The same row alone: every row has ended, so the while_loop exits early; the rest stays pad.
  out1 = jax.device_get(
    helpers.generate_jit(
      params,
      cfg,
      tokens[row : row + 1],
      mask[row : row + 1],
      jax.random.PRNGKey(0),
      max_new_tokens=R,
      eos_id=new_eos,
      pad_id=PAD,
      greedy=True,
    )
  )
  np.testing.assert_array_equal(out1.tokens[0], out2.tokens[row])
  np.testing.assert_array_equal(out1.mask[0], out2.mask[row])

  # Sampling, many rows, a flat-ish distribution (high temperature) so that EOS shows up.
  cfg, params = _setup(family)
  tokens, mask = _prompts(48, seed=3)
  out3 = jax.device_get(
    helpers.generate_jit(
      params,
      cfg,
      tokens,
      mask,
      jax.random.PRNGKey(5),
      max_new_tokens=R,
      eos_id=EOS,
      pad_id=PAD,
      temperature=30.0,
    )
  )
  assert out3.ended.any() and not out3.ended.all()
  _check_layout(out3, tokens, mask)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_score_logprobs(family, temperature):
  cfg, params, tokens, mask, out = _gen(family, rng=7, batch=6, temperature=temperature)
  _check_layout(out, tokens, mask)
  scored = jax.jit(helpers.token_logprobs, static_argnums=1)(
    params, cfg, jnp.asarray(out.tokens), jnp.asarray(out.mask), temperature
  )
  scored = np.asarray(scored) * out.response_mask
  np.testing.assert_allclose(out.logprobs, scored, atol=1e-4)
  # The first response token always counts, and sampling is not greedy (rng matters).
  assert np.all(out.lengths >= 1)


def test_score_logprobs_zero_on_prompt_start_and_padding():
  cfg, params = _setup("llama")
  tokens, mask = _prompts(4)
  lp = np.asarray(helpers.token_logprobs(params, cfg, tokens, mask, 1.0))
  first_real = np.argmax(np.asarray(mask), axis=1)
  for b in range(4):
    assert np.all(lp[b, : first_real[b] + 1] == 0)
    assert np.all(lp[b, first_real[b] + 1 :] < 0)


def test_top_k_stays_in_top_k():
  family, k, temperature = "llama", 3, 2.0
  _, _, tokens, mask, out = _gen(family, rng=11, batch=8, top_k=k, temperature=temperature)
  _check_layout(out, tokens, mask)
  logits = _full_logits(family, out.tokens, out.mask) / temperature
  for b in range(len(tokens)):
    for t in range(P, P + out.lengths[b]):
      step = logits[b, t - 1]
      kth = np.sort(step)[-k]
      assert step[out.tokens[b, t]] >= kth - 1e-4, (b, t)


def test_top_p_stays_in_nucleus():
  family, top_p = "gpt", 0.5
  _, _, tokens, mask, out = _gen(family, rng=13, batch=8, top_p=top_p)
  _check_layout(out, tokens, mask)
  logits = _full_logits(family, out.tokens, out.mask)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  sizes = []
  for b in range(len(tokens)):
    for t in range(P, P + out.lengths[b]):
      p = probs[b, t - 1]
      tok = out.tokens[b, t]
      mass_before = p[p > p[tok]].sum()  # mass of strictly more likely tokens
      assert mass_before < top_p + 1e-4, (b, t, mass_before)
      sorted_p = np.sort(p)[::-1]
      sizes.append(int(((np.cumsum(sorted_p) - sorted_p) < top_p).sum()))
  # Not vacuous: the nucleus is much smaller than the vocabulary, yet sometimes holds > 1 token.
  assert max(sizes) > 1 and np.mean(sizes) < 16, sizes


def test_jit_with_traced_temperature_and_top_p():
  cfg, params = _setup("gpt")
  tokens, mask = _prompts(4)
  fn = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)
  kw = dict(max_new_tokens=R, eos_id=EOS, pad_id=PAD)
  a = fn(
    params,
    cfg,
    tokens,
    mask,
    jax.random.PRNGKey(1),
    temperature=jnp.float32(0.7),
    top_p=jnp.float32(1.0),
    **kw,
  )
  b = fn(
    params,
    cfg,
    tokens,
    mask,
    jax.random.PRNGKey(1),
    temperature=jnp.float32(0.7),
    top_p=jnp.float32(0.999999),
    **kw,
  )
  c = sampling.generate(params, cfg, tokens, mask, jax.random.PRNGKey(1), temperature=0.7, **kw)
  assert a.tokens.shape == (4, P + R) and a.logprobs.dtype == jnp.float32
  np.testing.assert_array_equal(a.tokens[:, :P], tokens)
  np.testing.assert_array_equal(a.tokens, c.tokens)
  np.testing.assert_allclose(a.logprobs, c.logprobs, atol=1e-5)
  _check_layout(jax.device_get(b), np.asarray(tokens), np.asarray(mask))


def test_rejects_bad_arguments():
  cfg, params = _setup("gpt")
  tokens, mask = _prompts(2)
  kw = dict(eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match="max_len"):
    sampling.generate(params, cfg, tokens, mask, jax.random.PRNGKey(0), max_new_tokens=40, **kw)
  with pytest.raises(ValueError, match="pad_id"):
    sampling.generate(
      params, cfg, tokens, mask, jax.random.PRNGKey(0), max_new_tokens=2, eos_id=EOS, pad_id=EOS
    )


@pytest.mark.parametrize("block", [sampling.CDF_BLOCK, 4, 2])
def test_sample_categorical_draws_from_softmax(block):
  """Frequencies over many rows match softmax(logits); -inf entries are never drawn, also at
  the edges of the two-level CDF's blocks (block 4: a last block that starts at -inf and is
  padded; block 2: blocks that end and start at -inf)."""
  probs = np.array([0.05, 0.0, 0.15, 0.3, 0.0, 0.5])
  logits = np.where(probs > 0, np.log(np.maximum(probs, 1e-30)), -np.inf).astype(np.float32)
  n = 20000
  draws = np.asarray(
    sampling.sample_categorical(jax.random.key(0), jnp.tile(jnp.asarray(logits), (n, 1)), block)
  )
  freq = np.bincount(draws, minlength=len(probs)) / n
  assert freq[1] == 0 and freq[4] == 0
  # 5 standard errors of a binomial proportion.
  np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9)


def test_sample_with_log_z_over_many_blocks():
  """A vocabulary of several blocks: the draws follow softmax, whole blocks at -inf are never
  drawn, and the returned normaliser is logsumexp."""
  V, n = 700, 40000
  logits = np.array(jax.random.normal(jax.random.key(1), (V,)) * 2, np.float32)
  logits[128:256] = -np.inf  # a whole block
  logits[300:420:7] = -np.inf
  tiled = jnp.tile(jnp.asarray(logits), (n, 1))
  draws, log_z = sampling.sample_with_log_z(jax.random.key(2), tiled)
  draws = np.asarray(draws)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
  freq = np.bincount(draws, minlength=V) / n
  assert not np.any(freq[~np.isfinite(logits)])
  np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9)
  np.testing.assert_allclose(log_z, jax.nn.logsumexp(jnp.asarray(logits)), rtol=1e-6)
