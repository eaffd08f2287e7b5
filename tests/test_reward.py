"""The reward of a sequence, with and without the likelihood term, against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructgpt_jax import model as model_lib
from instructgpt_jax import objectives, rm
from tests import helpers

PROMPT_LEN = 5


def _layout(seed: int = 0):
  """Left-padded prompts of PROMPT_LEN, right-padded responses: tokens/mask [4, 12]."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 128, (4, 12)).astype(np.int32)
  mask = np.zeros_like(tokens)
  for i, (pad, response) in enumerate([(0, 7), (2, 3), (1, 1), (3, 5)]):
    mask[i, pad:PROMPT_LEN] = 1
    mask[i, PROMPT_LEN : PROMPT_LEN + response] = 1
  return np.where(mask == 1, tokens, 0), mask


def _by_hand(params, cfg, tokens, mask, reduction):
  """Scalar head at the last real token plus scale x the response's log-probs, from full
  logits of the same trunk as an LM (tied embedding) and numpy's log-softmax."""
  trunk = {k: v for k, v in params.items() if k not in ("scalar_head", "likelihood_scale")}
  lm_cfg = cfg.replace(head="lm", reward_likelihood="none")
  logits = np.asarray(helpers.forward(lm_cfg, trunk, tokens, mask), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  values = np.asarray(helpers.forward(cfg.replace(reward_likelihood="none"), params, tokens, mask))
  out = []
  for i in range(tokens.shape[0]):
    last = np.nonzero(mask[i])[0][-1]
    terms = [
      logp[i, t - 1, tokens[i, t]]
      for t in range(PROMPT_LEN, tokens.shape[1])
      if mask[i, t] and mask[i, t - 1]
    ]
    term = np.mean(terms) if reduction == "mean" else np.sum(terms)
    out.append(values[i, last] + float(params["likelihood_scale"]) * term)
  return np.asarray(out)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_likelihood_reward_matches_hand_computation(reduction):
  cfg = helpers.tiny_model(head="scalar", reward_likelihood=reduction)
  params = helpers.init_params(cfg)
  params["likelihood_scale"] = jnp.asarray(0.7)
  params["scalar_head"]["bias"] = jnp.asarray([0.3])
  tokens, mask = _layout()
  got = objectives.sequence_rewards(params, cfg, tokens, jnp.asarray(mask), PROMPT_LEN)
  np.testing.assert_allclose(
    np.asarray(got), _by_hand(params, cfg, tokens, mask, reduction), rtol=1e-5, atol=1e-5
  )


def test_without_the_term_the_reward_is_the_scalar_head_at_the_last_token():
  cfg = helpers.tiny_model(head="scalar")
  params = helpers.init_params(cfg)
  assert "likelihood_scale" not in params
  tokens, mask = _layout(1)
  values = np.asarray(helpers.forward(cfg, params, tokens, mask))
  last = [np.nonzero(m)[0][-1] for m in mask]
  got = objectives.sequence_rewards(params, cfg, tokens, jnp.asarray(mask), PROMPT_LEN)
  np.testing.assert_allclose(np.asarray(got), values[np.arange(4), last], rtol=1e-6)


def test_the_scale_is_learned_and_starts_where_the_rm_stage_puts_it():
  cfg = helpers.tiny_model(head="scalar", reward_likelihood="mean")
  lm = helpers.init_params(cfg.replace(head="lm", reward_likelihood="none"))
  params = rm.trunk_with_scalar_head(lm, helpers.init_params(cfg, seed=1), likelihood_scale=2.5)
  assert float(params["likelihood_scale"]) == 2.5
  tokens, mask = _layout(2)
  grads = jax.grad(
    lambda p: objectives.sequence_rewards(p, cfg, tokens, jnp.asarray(mask), PROMPT_LEN).sum()
  )(params)
  assert float(jnp.abs(grads["likelihood_scale"])) > 0
  # The trunk's embedding gets gradient through the LM head as well as the trunk.
  assert float(jnp.abs(grads["token_embed"]["embedding"]).sum()) > 0
  # A paper RM (no term) built from the same trunk has no scale.
  plain = rm.trunk_with_scalar_head(lm, helpers.init_params(cfg.replace(reward_likelihood="none")))
  assert "likelihood_scale" not in plain
  assert model_lib.ModelConfig(head="scalar", reward_likelihood="sum").num_params() == (
    model_lib.ModelConfig(head="scalar").num_params() + 1
  )


def test_the_likelihood_term_needs_a_tied_lm_head():
  with pytest.raises(ValueError, match="tie_embeddings"):
    helpers.tiny_model(head="scalar", reward_likelihood="mean", tie_embeddings=False)
