"""PPO on a fixed seed: the jitted iteration raises the reward-model score it is trained on."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from instructgpt_jax import model as model_lib
from instructgpt_jax import model_configs, ppo, sharding, train_state
from tests import helpers

P, R, VOCAB, EOS, PAD = 8, 8, 32, 3, 0


def _config(**ppo_overrides):
  """The tiny PPO config on a 1-layer model, 32 prompts of 8 tokens in 2 minibatches."""
  config = helpers.config("ppo")
  config.model.update(vocab_size=VOCAB, num_layers=1, d_model=32, num_heads=4, d_ff=64, max_len=32)
  config.data.update(prompt_len=P, response_len=R)
  config.ppo.update(rollout_batch_size=32, minibatch_size=16, kl_coef=0.01)
  config.ppo.update(ppo_overrides)
  return config


def _setup(ptx_coef=0.0, lr=3e-3, **ppo_overrides):
  config = _config(ptx_coef=ptx_coef, **ppo_overrides)
  config.ppo.optim.lr = lr
  s = ppo.make_settings(config, model_configs.resolve(config), EOS, PAD, variant="ppo_ptx")
  policy_params = nn.meta.unbox(model_lib.boxed_params(s.policy_cfg, jax.random.key(0)))
  rm_params = nn.meta.unbox(model_lib.boxed_params(s.value_cfg, jax.random.key(1)))
  mesh = sharding.make_mesh((1, 1, 1))
  state, _ = ppo.init_state(config, s, mesh, sharding.DEFAULT_RULES, policy_params, rm_params)
  n_updates = config.ppo.epochs * s.num_minibatches
  rng = np.random.default_rng(0)
  prompts = rng.integers(4, VOCAB, size=(32, P)).astype(np.int32)
  ptx = rng.integers(4, VOCAB, size=(n_updates * 4, 16)).astype(np.int32)
  batch = {
    "prompts": prompts,
    "prompt_mask": np.ones_like(prompts),
    "tokens": ptx,
    "mask": np.ones_like(ptx),
    "loss_mask": np.ones_like(ptx),
  }
  return state, batch, jax.jit(ppo.make_step(s)), policy_params, (rm_params,), s


@pytest.mark.slow  # Trains whole iterations: the full suite runs it.
def test_ppo_raises_the_reward_model_score():
  state, batch, step, ref, rm_params, _ = _setup()
  scores = []
  for i in range(20):
    state, m = step(state, batch, jax.random.key(i), ref, rm_params)
    scores.append(float(m["score"]))
    assert np.isfinite(float(m["pg_loss"])) and np.isfinite(float(m["vf_loss"]))
  first, last = np.mean(scores[:3]), np.mean(scores[-3:])
  assert last > first + 0.1, scores


@pytest.mark.slow  # Trains whole iterations: the full suite runs it.
def test_ptx_term_reports_and_keeps_the_policy_closer_to_its_lm_loss():
  state, batch, step, ref, rm_params, _ = _setup(ptx_coef=1.0)
  _, m = step(state, batch, jax.random.key(0), ref, rm_params)
  assert "ptx_loss" in m and np.isfinite(float(m["ptx_loss"]))
  state0, _, step0, _, _, _ = _setup(ptx_coef=0.0)
  _, m0 = step0(state0, batch, jax.random.key(0), ref, rm_params)
  assert "ptx_loss" not in m0
  # Same rollout (same params and key): the ptx term only changes the update.
  np.testing.assert_allclose(float(m["score"]), float(m0["score"]), rtol=1e-6)


def test_rollout_logprobs_from_the_sampler_equal_a_forward_pass():
  """ppo.recompute_logprobs only adds a forward pass: the rollout's log-probs agree."""
  state, batch, _, ref, rm_params, s = _setup()
  s_recompute = _setup(recompute_logprobs=True)[-1]
  outs = [
    jax.jit(
      lambda st, s=s_: ppo.rollout(
        st, ref, rm_params, batch["prompts"], batch["prompt_mask"], jax.random.key(3), s
      )
    )(state)
    for s_ in (s, s_recompute)
  ]
  assert np.asarray(outs[0]["rmask"]).sum() > 0
  np.testing.assert_allclose(np.asarray(outs[0]["logp"]), np.asarray(outs[1]["logp"]), atol=2e-5)
  np.testing.assert_array_equal(np.asarray(outs[0]["tokens"]), np.asarray(outs[1]["tokens"]))


@pytest.mark.slow  # Trains whole iterations: the full suite runs it.
def test_ppo_iteration_on_a_2x2x2_mesh_equals_one_device():
  """Data x fsdp x tensor all > 1 (8 simulated devices): the rollout (KV cache placed by the
  rules), scoring, GAE and both updates give one device's metrics and parameters."""
  config = _config(ptx_coef=1.0)
  config.model.update(num_heads=4, d_model=32)
  s = ppo.make_settings(config, model_configs.resolve(config), EOS, PAD, variant="ppo_ptx")
  policy_params = nn.meta.unbox(model_lib.boxed_params(s.policy_cfg, jax.random.key(0)))
  rm_params = nn.meta.unbox(model_lib.boxed_params(s.value_cfg, jax.random.key(1)))
  _, batch, _, _, _, _ = _setup(ptx_coef=1.0)
  rules = sharding.DEFAULT_RULES
  results = []
  for shape in ((1, 1, 1), (2, 2, 2)):
    mesh = sharding.make_mesh(shape)
    state, sh = ppo.init_state(config, s, mesh, rules, policy_params, rm_params)
    step = train_state.jit_step(
      ppo.make_step(s), sh, mesh, const_shardings=(sh.policy.params, (sh.value.params,))
    )
    ref = train_state.place_params(policy_params, s.policy_cfg, mesh, rules)
    rm = (train_state.place_params(rm_params, s.value_cfg, mesh, rules),)
    with sharding.use_rules(mesh, rules):
      for i in range(2):
        state, m = step(state, sharding.shard_batch(batch, mesh, rules), jax.random.key(i), ref, rm)
    if shape == (2, 2, 2):  # Really split over every axis.
      emb = state.policy.params["token_embed"]["embedding"]
      assert (
        emb.sharding.spec == PartitionSpec("tensor", "fsdp") and len(emb.sharding.device_set) == 8
      )
    results.append((jax.device_get(m), jax.device_get(state.policy.params)))
  (m1, p1), (m8, p8) = results
  assert set(m1) == set(m8)
  for k in m1:
    # A clip fraction counts tokens past a threshold; float rounding may move one of ~250.
    atol = 1e-2 if k.endswith("clipfrac") else 2e-5
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, atol=atol, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p8, p1)


def test_rollout_score_is_the_mean_of_the_rm_ensemble():
  """With two RM members the rollout's score is the mean of each member's score alone; the
  samples (same key, same policy) are the same."""
  state, batch, _, ref, (rm_a,), s = _setup()
  rm_b = nn.meta.unbox(model_lib.boxed_params(s.value_cfg, jax.random.key(7)))
  roll = jax.jit(
    lambda st, members: ppo.rollout(
      st, ref, members, batch["prompts"], batch["prompt_mask"], jax.random.key(3), s
    )
  )
  a, b, both = roll(state, (rm_a,)), roll(state, (rm_b,)), roll(state, (rm_a, rm_b))
  np.testing.assert_array_equal(np.asarray(both["tokens"]), np.asarray(a["tokens"]))
  assert not np.allclose(np.asarray(a["raw_score"]), np.asarray(b["raw_score"]))
  np.testing.assert_allclose(
    np.asarray(both["raw_score"]),
    (np.asarray(a["raw_score"]) + np.asarray(b["raw_score"])) / 2,
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.slow  # Trains whole iterations: the full suite runs it.
def test_group_estimators_raise_the_score_without_a_value_function():
  """RLOO and GRPO (group_size 4: 8 prompts sampled 4 times): the same one-program iteration
  raises the RM score; each response's advantage is one number on all its tokens, and the value
  function is neither read nor trained."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  for estimator in ("rloo", "grpo"):
    state, batch, step, ref, rm_params, s = _setup(estimator=estimator, group_size=4)
    batch = dict(batch, prompts=batch["prompts"][:8], prompt_mask=batch["prompt_mask"][:8])
    ro = jax.jit(
      lambda st, ref, rmp, prompts, pmask, s=s: ppo.rollout(
        st, ref, rmp, prompts, pmask, jax.random.key(3), s
      )
    )(state, ref, rm_params, batch["prompts"], batch["prompt_mask"])
    adv, rmask = np.asarray(ro["advantages"]), np.asarray(ro["rmask"])
    assert adv.shape == (32, R)
    per_response = adv.sum(1) / np.maximum(rmask.sum(1), 1)
    np.testing.assert_allclose(adv, per_response[:, None] * rmask, atol=1e-6)
    groups = per_response.reshape(8, 4)
    np.testing.assert_allclose(groups.mean(1), 0.0, atol=1e-4)  # Both baselines centre a group.
    np.testing.assert_array_equal(
      np.asarray(ro["tokens"])[:4, :P], np.repeat(batch["prompts"][:1], 4, 0)
    )
    value_before = jax.tree.map(np.asarray, state.value.params)
    scores = []
    for i in range(20):
      state, m = step(state, batch, jax.random.key(i), ref, rm_params)
      scores.append(float(m["score"]))
      assert "vf_loss" not in m and (estimator == "grpo") == ("kl_term" in m)
    assert np.mean(scores[-3:]) > np.mean(scores[:3]) + 0.1, (estimator, scores)
    jax.tree.map(
      np.testing.assert_array_equal, value_before, jax.tree.map(jnp.asarray, state.value.params)
    )
