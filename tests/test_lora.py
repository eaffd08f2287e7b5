"""LoRA (lora.py): zero B is the base model, the merged kernel by hand, gradients only in the
adapters, adapters sharded as their kernels, and each policy stage (SFT, DPO, PPO) with it."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from instructgpt_jax import lora, model_configs, ppo, sft, sharding, train_state
from tests import helpers

LORA = lora.LoraConfig(rank=4, alpha=8.0)


def _adapters(cfg, lcfg=LORA, seed=1):
  return nn.meta.unbox(lora.boxed_adapters(cfg, lcfg, jax.random.key(seed)))


@pytest.mark.parametrize("family,scan", [("gpt", False), ("llama", True)])
def test_zero_b_is_the_base_model_and_a_nonzero_b_is_not(family, scan):
  cfg = helpers.tiny_model(family, scan_layers=scan)
  base = helpers.init_params(cfg)
  adapters = _adapters(cfg)
  b = {k: v for k, v in jax.tree_util.tree_leaves_with_path(adapters) if "lora_b" in str(k)}
  assert b and all(float(jnp.abs(v).max()) == 0.0 for v in b.values())
  batch = helpers.lm_batch(np.random.default_rng(0), 3, 12, cfg.vocab_size)
  ours = helpers.forward(cfg, lora.merge(base, adapters, LORA), batch["tokens"], batch["mask"])
  want = helpers.forward(cfg, base, batch["tokens"], batch["mask"])
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))
  moved = jax.tree.map(lambda x: x + 0.05, adapters)
  other = helpers.forward(cfg, lora.merge(base, moved, LORA), batch["tokens"], batch["mask"])
  assert float(jnp.abs(other - want).max()) > 1e-3


def test_merged_kernels_by_hand():
  """The attention output kernel [heads, kv, embed] reads two axes, the query kernel [embed,
  heads, kv] writes two, and a scanned model's kernels lead with [layers]: each merged kernel is
  W + alpha / rank * sum_r A[..., r] B[r, ...], computed here with numpy."""
  for scan in (False, True):
    cfg = helpers.tiny_model("gpt", scan_layers=scan)
    base = helpers.init_params(cfg)
    leaves, tree = jax.tree.flatten(_adapters(cfg))
    rng = np.random.default_rng(3)
    adapters = tree.unflatten([rng.normal(size=x.shape).astype(np.float32) for x in leaves])
    merged = lora.merge(base, adapters, LORA)
    layer = (lambda t: t["layers"]) if scan else (lambda t: t["layer_1"])
    for name, spec in (("out", "hdr,re->hde"), ("query", "er,rhd->ehd")):
      a, b = (np.asarray(layer(adapters)["attn"][name][k]) for k in ("lora_a", "lora_b"))
      w = np.asarray(layer(base)["attn"][name]["kernel"])
      if scan:  # A leading [layers] axis on every array.
        spec = "l" + spec.replace(",", ",l").replace("->", "->l")
      want = w + 8.0 / 4 * np.einsum(spec, a, b)
      np.testing.assert_allclose(
        np.asarray(layer(merged)["attn"][name]["kernel"]), want, rtol=1e-5, atol=1e-5
      )
    # Everything that is not an adapted kernel is the base's own array.
    np.testing.assert_array_equal(
      merged["token_embed"]["embedding"], base["token_embed"]["embedding"]
    )


def test_targets_choose_the_kernels_and_bad_settings_are_refused():
  cfg = helpers.tiny_model("llama")
  only_qv = _adapters(cfg, lora.LoraConfig(rank=2, targets=("query", "value")))
  assert set(only_qv["layer_0"]["attn"]) == {"query", "value"} and "mlp" not in only_qv["layer_0"]
  config = helpers.config("sft")
  config.sft.lora.update(rank=2, targets=("query", "attention"))
  with pytest.raises(ValueError, match=r"sft.lora.targets=.*valid"):
    lora.LoraConfig.from_config(config.sft.lora, "sft")
  config.sft.lora.update(rank=-1, targets=("query",))
  with pytest.raises(ValueError, match=r"sft.lora.rank=-1"):
    lora.LoraConfig.from_config(config.sft.lora, "sft")


def test_sft_step_trains_only_the_adapters():
  """With `sft.lora`, the state (and the optimizer's moments) hold the adapters alone, the loss
  falls, and the base model passed to the step is left as it was."""
  config = helpers.config("sft")
  config.sft.lora.rank = 4
  config.sft.optim = helpers.optim_config(3e-2)
  config.sft.dropout = 0.0
  models = model_configs.resolve(config)
  cfg = models.policy
  mesh, rules = sharding.make_mesh((1, 1, 1)), sharding.DEFAULT_RULES
  base = train_state.place_params(helpers.init_params(cfg), cfg, mesh, rules)
  before = jax.tree.map(np.asarray, base)
  state, sh = sft.init_state(config, models, mesh, rules, 10, base)
  assert "token_embed" not in state.params and "lora_b" in state.params["layer_0"]["attn"]["query"]
  moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) > 0]
  assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(state.params))
  step = train_state.jit_step(
    functools.partial(sft.train_step, lora_cfg=lora.LoraConfig.from_config(config.sft.lora, "sft")),
    sh,
    mesh,
    const_shardings=(train_state.param_shardings(cfg, mesh, rules),),
  )
  batch = helpers.lm_batch(np.random.default_rng(0), 8, 24, cfg.vocab_size)
  losses = []
  for i in range(8):
    state, m = step(state, batch, jax.random.key(i), base)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] - 0.05, losses
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, base), before)
  assert float(jnp.abs(state.params["layer_0"]["mlp"]["wi"]["lora_b"]).max()) > 0


def _ppo_setup(mesh_shape, rank=4):
  config = helpers.config("ppo")
  config.model.update(vocab_size=32, num_layers=1, d_model=32, num_heads=4, d_ff=64, max_len=32)
  config.data.update(prompt_len=8, response_len=8)
  config.ppo.update(rollout_batch_size=16, minibatch_size=8, kl_coef=0.01, ptx_coef=1.0)
  config.ppo.optim.lr = 3e-3
  config.ppo.lora.rank = rank
  s = ppo.make_settings(config, model_configs.resolve(config), 3, 0, variant="ppo_ptx")
  sft_params = helpers.init_params(s.policy_cfg)
  rm_params = helpers.init_params(s.value_cfg, seed=1)
  mesh, rules = sharding.make_mesh(mesh_shape), sharding.DEFAULT_RULES
  state, sh = ppo.init_state(config, s, mesh, rules, sft_params, rm_params)
  ref = train_state.place_params(sft_params, s.policy_cfg, mesh, rules)
  rm = (train_state.place_params(rm_params, s.value_cfg, mesh, rules),)
  step = train_state.jit_step(
    ppo.make_step(s),
    sh,
    mesh,
    const_shardings=(train_state.param_shardings(s.policy_cfg, mesh, rules), (sh.value.params,)),
  )
  rng = np.random.default_rng(0)
  prompts = rng.integers(4, 32, size=(16, 8)).astype(np.int32)
  ptx = rng.integers(4, 32, size=(2 * 4, 16)).astype(np.int32)
  batch = {"prompts": prompts, "prompt_mask": np.ones_like(prompts), "tokens": ptx}
  batch.update(mask=np.ones_like(ptx), loss_mask=np.ones_like(ptx))
  return s, mesh, rules, state, step, ref, rm, batch


@pytest.mark.slow  # Whole iterations on meshes: the full suite runs it.
def test_ppo_with_lora_holds_one_copy_of_sft_and_agrees_on_8_devices():
  """PPO-ptx with `ppo.lora`: the policy state is adapters (SFT is only the reference argument),
  the first rollout is SFT's own (KL 0), and a 2x2x2 mesh gives one device's metrics and
  adapters, each adapter sharded like its kernel."""
  results = []
  for shape in ((1, 1, 1), (2, 2, 2)):
    s, mesh, rules, state, step, ref, rm, batch = _ppo_setup(shape)
    assert "token_embed" not in state.policy.params
    with sharding.use_rules(mesh, rules):
      metrics = []
      for i in range(3):
        state, m = step(state, sharding.shard_batch(batch, mesh, rules), jax.random.key(i), ref, rm)
        metrics.append(jax.device_get(m))
    assert abs(float(metrics[0]["kl"])) < 1e-5  # Zero B: the policy starts as SFT exactly.
    assert float(metrics[-1]["kl"]) > 1e-6  # ... and moves away from it.
    if shape == (2, 2, 2):
      b = state.policy.params["layer_0"]["attn"]["query"]["lora_b"]  # [rank, heads, kv]
      assert b.sharding.spec == PartitionSpec(None, "tensor", None)
      a = state.policy.params["layer_0"]["attn"]["query"]["lora_a"]  # [embed, rank]
      assert a.sharding.spec == PartitionSpec("fsdp", None)
    results.append((metrics[-1], jax.device_get(state.policy.params)))
  (m1, p1), (m8, p8) = results
  for k in m1:
    atol = 1e-2 if k.endswith("clipfrac") else 2e-5
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, atol=atol, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p8, p1)
