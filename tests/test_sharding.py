"""On 8 simulated devices: every mesh gives one device's losses, and parameters are split by the rules."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from instructgpt_jax import pretrain, sharding, train_state
from tests import helpers

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4), (1, 1, 8)]
STEPS = 4


def _run(cfg, params, mesh, batches):
  tx = train_state.make_optimizer(helpers.optim_config(3e-3), 100)
  state, shardings = train_state.create_train_state(
    cfg, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0), params=params
  )
  step = train_state.jit_step(pretrain.train_step, shardings, mesh)
  losses = []
  with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
    logits = jax.jit(lambda p, b: state.apply_fn({"params": p}, b["tokens"], b["mask"]))(
      state.params, sharding.shard_batch(batches[0], mesh, sharding.DEFAULT_RULES)
    )
    for i, b in enumerate(batches):
      state, m = step(
        state, sharding.shard_batch(b, mesh, sharding.DEFAULT_RULES), jax.random.key(i)
      )
      losses.append(float(m["loss"]))
  return np.asarray(logits), losses, state


@pytest.mark.slow  # Whole iterations on meshes: the full suite runs it.
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_meshes_agree_with_one_device(family):
  assert jax.device_count() == 8
  cfg = helpers.tiny_model(family, num_kv_heads=8 if family == "llama" else 0)
  params = helpers.init_params(cfg)
  rng = np.random.default_rng(0)
  batches = [helpers.lm_batch(rng, 8, 16, cfg.vocab_size) for _ in range(STEPS)]
  ref_logits, ref_losses, _ = _run(cfg, params, sharding.make_mesh((1, 1, 1)), batches)
  for shape in MESHES:
    logits, losses, state = _run(cfg, params, sharding.make_mesh(shape), batches)
    np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=1e-4, err_msg=str(shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, err_msg=str(shape))
    assert losses[-1] < losses[0]
    _check_partitioned(state.params, shape)


def _check_partitioned(params, shape):
  data, fsdp, tensor = shape
  layer = params["layer_0"]
  mlp = layer["mlp"]
  wi = (mlp["wi"] if "wi" in mlp else mlp["wi_gate"])[
    "kernel"
  ]  # logical ("embed", "mlp") -> ("fsdp", "tensor")
  assert wi.sharding.spec == P("fsdp", "tensor")
  shard_shape = wi.addressable_shards[0].data.shape
  assert shard_shape == (wi.shape[0] // fsdp, wi.shape[1] // tensor)
  q = layer["attn"]["query"]["kernel"]  # ("embed", "heads", "kv")
  assert q.addressable_shards[0].data.shape == (
    q.shape[0] // fsdp,
    q.shape[1] // tensor,
    q.shape[2],
  )
  emb = params["token_embed"]["embedding"]  # ("vocab", "embed")
  assert emb.addressable_shards[0].data.shape == (emb.shape[0] // tensor, emb.shape[1] // fsdp)


def test_mesh_errors_are_actionable():
  with pytest.raises(ValueError, match="does not divide the 8 available devices"):
    sharding.make_mesh((3, -1, 1))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1, 1))
  assert sharding.make_mesh((2, -1, 2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.make_mesh((1, 1, 2)).devices.size == 2


def test_non_divisible_parameter_is_named():
  cfg = helpers.tiny_model("gpt", num_heads=4)
  tx = train_state.make_optimizer(helpers.optim_config(), 10)
  with pytest.raises(ValueError, match=r"attn.*not divisible by 8"):
    train_state.create_train_state(
      cfg, tx, sharding.make_mesh((1, 1, 8)), sharding.DEFAULT_RULES, jax.random.key(0)
    )


@pytest.mark.slow
def test_rules_are_overridable_from_the_command_line():
  """Parallelism is configuration: replicating every weight by a flag grows the state 8x/device."""
  replicated = tuple(
    (name, axes if name in ("batch", "activation_batch") else None)
    for name, axes in sharding.DEFAULT_RULES
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def state_bytes(*extra):
    out = subprocess.run(
      [
        sys.executable,
        "-m",
        "instructgpt_jax.main",
        "--config=configs/pretrain.py:tiny",
        "--config.dry_run=True",
        *extra,
      ],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    )
    return json.loads(out.stdout[out.stdout.index("{") :])["state_bytes_per_device"]

  sharded = state_bytes()
  full = state_bytes(f"--config.sharding.rules={replicated!r}")
  assert full > 6 * sharded
