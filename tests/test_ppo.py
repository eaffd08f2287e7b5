"""PPO on a fixed seed: the jitted iteration raises the reward-model score it is trained on."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructgpt_jax import model as model_lib
from instructgpt_jax import ppo, presets, sharding, train_state

P, R, VOCAB, EOS, PAD = 8, 8, 32, 3, 0


def _settings(policy_cfg, value_cfg, **kw):
  cfg = presets.pipeline_config("ppo", "tiny").ppo
  cfg.rollout_batch_size, cfg.minibatch_size = 32, 16
  for k, v in kw.items():
    cfg[k] = v
  data = presets.pipeline_config("ppo", "tiny").data
  data.prompt_len, data.response_len = P, R
  return cfg, ppo.PPOSettings.from_config(cfg, policy_cfg, value_cfg, data, EOS, PAD, cfg.ptx_coef)


POLICY_CFG = model_lib.ModelConfig(
  vocab_size=VOCAB, num_layers=1, d_model=32, num_heads=4, d_ff=64, max_len=32
)


def _setup(ptx_coef=0.0, lr=3e-3):
  policy_cfg = POLICY_CFG
  value_cfg = policy_cfg.replace(head="scalar")
  cfg, s = _settings(policy_cfg, value_cfg, ptx_coef=ptx_coef, kl_coef=0.01)
  cfg.optim.lr = lr
  mesh = sharding.make_mesh((1, 1, 1))
  rules = sharding.DEFAULT_RULES
  policy_params = nn.meta.unbox(train_state.boxed_params(policy_cfg, jax.random.key(0)))
  rm_params = nn.meta.unbox(train_state.boxed_params(value_cfg, jax.random.key(1)))
  n_updates = s.epochs * s.num_minibatches
  policy, policy_sh = train_state.create_train_state(
    policy_cfg,
    train_state.make_optimizer(cfg.optim, 100),
    mesh,
    rules,
    jax.random.key(0),
    policy_params,
  )
  value, value_sh = train_state.create_train_state(
    value_cfg,
    train_state.make_optimizer(cfg.value_optim, 100),
    mesh,
    rules,
    jax.random.key(0),
    rm_params,
  )
  state = ppo.PPOState(policy=policy, value=value, kl_coef=jnp.float32(cfg.kl_coef))
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
  step = jax.jit(lambda st, b, r, ref, rmp: ppo.ppo_iteration(st, b, r, ref, rmp, s))
  return state, batch, step, policy_params, rm_params


def test_ppo_raises_the_reward_model_score():
  state, batch, step, ref, rm_params = _setup()
  scores = []
  for i in range(20):
    state, m = step(state, batch, jax.random.key(i), ref, rm_params)
    scores.append(float(m["score"]))
    assert np.isfinite(float(m["pg_loss"])) and np.isfinite(float(m["vf_loss"]))
  first, last = np.mean(scores[:3]), np.mean(scores[-3:])
  assert last > first + 0.1, scores


def test_ptx_term_reports_and_keeps_the_policy_closer_to_its_lm_loss():
  state, batch, step, ref, rm_params = _setup(ptx_coef=1.0)
  _, m = step(state, batch, jax.random.key(0), ref, rm_params)
  assert "ptx_loss" in m and np.isfinite(float(m["ptx_loss"]))
  state0, _, step0, _, _ = _setup(ptx_coef=0.0)
  _, m0 = step0(state0, batch, jax.random.key(0), ref, rm_params)
  assert "ptx_loss" not in m0
  # Same rollout (same params and key): the ptx term only changes the update.
  np.testing.assert_allclose(float(m["score"]), float(m0["score"]), rtol=1e-6)


def test_rollout_logprobs_from_the_sampler_equal_a_forward_pass():
  """ppo.recompute_logprobs only adds a forward pass: the rollout's log-probs agree."""
  state, batch, _, ref, rm_params = _setup()
  _, s = _settings(POLICY_CFG, POLICY_CFG.replace(head="scalar"))
  outs = [
    jax.jit(
      lambda st, s=s_: ppo.rollout(
        st, ref, rm_params, batch["prompts"], batch["prompt_mask"], jax.random.key(3), s
      )
    )(state)
    for s_ in (s, dataclasses.replace(s, recompute_logprobs=True))
  ]
  assert np.asarray(outs[0]["rmask"]).sum() > 0
  np.testing.assert_allclose(np.asarray(outs[0]["logp"]), np.asarray(outs[1]["logp"]), atol=2e-5)
  np.testing.assert_array_equal(np.asarray(outs[0]["tokens"]), np.asarray(outs[1]["tokens"]))
