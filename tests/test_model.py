"""The transformer: KV-cache decoding equals the full forward pass; options keep the function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructgpt_jax import model as model_lib
from tests import helpers


def _decode_all(cfg, params, tokens, mask, prefill):
  """Prefill `prefill` tokens, then decode one token at a time through the cache; the logits
  are the decoded hidden states times the unembedding."""
  model = model_lib.Transformer(cfg)
  B, T = tokens.shape
  positions = model_lib.positions_from_mask(mask)
  cache = model_lib.init_cache(cfg, B, T)
  spans = [(0, prefill)] + [(t, t + 1) for t in range(prefill, T)]
  outs = []
  for a, b in spans:
    hidden, cache = model.apply(
      {"params": params}, tokens[:, a:b], mask, positions[:, a:b], cache, a, method="decode_step"
    )
    outs.append(hidden @ model_lib.unembedding(params).T)
  return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("family", ["gpt", "llama"])
@pytest.mark.parametrize("scan_layers,remat", [(False, "none"), (True, "none"), (False, "full")])
def test_kv_cache_matches_full_forward(family, scan_layers, remat):
  cfg = helpers.tiny_model(family, scan_layers=scan_layers, remat=remat)
  params = helpers.init_params(cfg)
  batch = helpers.lm_batch(np.random.default_rng(0), 4, 12, cfg.vocab_size)
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"])
  full = helpers.forward(cfg, params, tokens, mask)
  decoded = _decode_all(cfg, params, tokens, mask, prefill=5)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(
    np.asarray(decoded)[real], np.asarray(full)[real], atol=1e-4, rtol=1e-4
  )


def test_left_padding_does_not_change_outputs():
  """A prompt's logits do not depend on how much padding sits to its left."""
  cfg = helpers.tiny_model("llama")
  params = helpers.init_params(cfg)
  toks = np.arange(5, 13, dtype=np.int32)[None]
  a = helpers.forward(cfg, params, toks, np.ones_like(toks))
  padded = np.concatenate([np.zeros((1, 3), np.int32), toks], 1)
  mask = np.concatenate([np.zeros((1, 3), np.int32), np.ones_like(toks)], 1)
  b = helpers.forward(cfg, params, padded, mask)
  np.testing.assert_allclose(np.asarray(b)[0, 3:], np.asarray(a)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_outputs_and_gradients(remat):
  cfg = helpers.tiny_model("gpt")
  params = helpers.init_params(cfg)
  batch = helpers.lm_batch(np.random.default_rng(1), 2, 10, cfg.vocab_size)

  def loss(cfg, p):
    return helpers.forward(cfg, p, batch["tokens"], batch["mask"]).mean()

  g0 = jax.grad(lambda p: loss(cfg, p))(params)
  g1 = jax.grad(lambda p: loss(cfg.replace(remat=remat), p))(params)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_scalar_head_and_untied_head_shapes_and_counts():
  cfg = helpers.tiny_model("gpt", head="scalar")
  params = helpers.init_params(cfg)
  batch = helpers.lm_batch(np.random.default_rng(2), 3, 7, cfg.vocab_size)
  values = helpers.forward(cfg, params, batch["tokens"], batch["mask"])
  assert values.shape == (3, 7) and values.dtype == jnp.float32
  for c in (cfg, helpers.tiny_model("llama", tie_embeddings=False)):
    n = sum(x.size for x in jax.tree.leaves(helpers.init_params(c)))
    assert n == c.num_params()


def test_bf16_compute_keeps_fp32_params_and_logits():
  cfg = helpers.tiny_model("llama", dtype="bfloat16")
  params = helpers.init_params(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  batch = helpers.lm_batch(np.random.default_rng(3), 2, 8, cfg.vocab_size)
  logits = helpers.forward(cfg, params, batch["tokens"], batch["mask"])
  ref = helpers.forward(cfg.replace(dtype="float32"), params, batch["tokens"], batch["mask"])
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=0.1)


def test_dropout_is_active_only_when_asked():
  cfg = helpers.tiny_model("gpt", dropout=0.5)
  params = helpers.init_params(cfg)
  batch = helpers.lm_batch(np.random.default_rng(4), 2, 8, cfg.vocab_size)
  model = model_lib.Transformer(cfg)
  det = model.apply({"params": params}, batch["tokens"], batch["mask"])
  drop = [
    model.apply(
      {"params": params},
      batch["tokens"],
      batch["mask"],
      deterministic=False,
      rngs={"dropout": jax.random.key(i)},
    )
    for i in range(2)
  ]
  assert not np.allclose(drop[0], drop[1])
  np.testing.assert_allclose(det, model.apply({"params": params}, batch["tokens"], batch["mask"]))


def test_bad_model_config_is_refused():
  with pytest.raises(ValueError, match="valid keys"):
    model_lib.ModelConfig.from_dict({"num_layer": 2})
  with pytest.raises(ValueError, match="family"):
    model_lib.ModelConfig(family="mamba")
  with pytest.raises(ValueError, match="divisible"):
    model_lib.ModelConfig(d_model=30, num_heads=4)


@pytest.mark.parametrize("head", ["lm", "scalar"])
def test_head_span_is_a_slice_of_the_full_output(head):
  cfg = helpers.tiny_model("gpt", head=head)
  params = helpers.init_params(cfg)
  batch = helpers.lm_batch(np.random.default_rng(2), 3, 12, cfg.vocab_size)
  model = model_lib.Transformer(cfg)
  full = model.apply({"params": params}, batch["tokens"], batch["mask"])
  part = model.apply({"params": params}, batch["tokens"], batch["mask"], head_span=(4, 7))
  np.testing.assert_allclose(np.asarray(part), np.asarray(full)[:, 4:11], atol=1e-5, rtol=1e-5)
