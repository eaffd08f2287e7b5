"""Checkpoints: save on one mesh, restore on another, training continues with the same losses."""

import os

import jax
import numpy as np
import pytest

from instructgpt_jax import checkpoint, pretrain, sharding, train_state
from tests import helpers


def _setup(cfg, params, mesh):
  tx = train_state.make_optimizer(helpers.optim_config(3e-3), 100)
  state, shardings = train_state.create_train_state(
    cfg, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0), params=params
  )
  step = train_state.jit_step(pretrain.train_step, shardings, mesh, donate=False)
  return state, shardings, step


def _train(state, step, mesh, batches, start):
  losses = []
  with jax.set_mesh(mesh):
    for i, b in enumerate(batches):
      state, m = step(
        state, sharding.shard_batch(b, mesh, sharding.DEFAULT_RULES), jax.random.key(start + i)
      )
      losses.append(float(m["loss"]))
  return state, losses


@pytest.mark.slow  # Whole iterations on meshes: the full suite runs it.
@pytest.mark.parametrize("save_mesh,load_mesh", [((1, 8, 1), (1, 1, 1)), ((1, 1, 1), (2, 2, 2))])
def test_restore_on_another_mesh_continues_identically(tmp_path, save_mesh, load_mesh):
  cfg = helpers.tiny_model("gpt")
  params = helpers.init_params(cfg)
  rng = np.random.default_rng(0)
  batches = [helpers.lm_batch(rng, 8, 16, cfg.vocab_size) for _ in range(6)]

  mesh_a = sharding.make_mesh(save_mesh)
  state, _, step = _setup(cfg, params, mesh_a)
  state, _ = _train(state, step, mesh_a, batches[:3], 0)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(3, state, {"data": {"next_index": 3}}, force=True)
  ckpt.close()
  _, reference = _train(state, step, mesh_a, batches[3:], 3)

  mesh_b = sharding.make_mesh(load_mesh)
  fresh, shardings_b, step_b = _setup(cfg, helpers.init_params(cfg, seed=1), mesh_b)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  saved_step, restored, meta = ckpt.restore(checkpoint.abstract_like(fresh, shardings_b))
  assert saved_step == 3 and meta == {"data": {"next_index": 3}}
  leaf = restored.params["layer_0"]["mlp"]["wi"]["kernel"]
  assert leaf.sharding.mesh.shape == mesh_b.shape
  _, resumed = _train(restored, step_b, mesh_b, batches[3:], 3)
  np.testing.assert_allclose(resumed, reference, rtol=2e-5)


def test_damaged_newest_checkpoint_falls_back(tmp_path):
  cfg = helpers.tiny_model("gpt")
  mesh = sharding.make_mesh((1, 1, 1))
  state, shardings, _ = _setup(cfg, helpers.init_params(cfg), mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=3)
  for s in (1, 2):
    ckpt.save(s, state, {"s": s}, force=True)
  ckpt.close()
  # Damage every array file of step 2.
  for root, _, files in os.walk(tmp_path / "ckpt" / "2" / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=3)
  step, _, meta = ckpt.restore(checkpoint.abstract_like(state, shardings))
  assert step == 1 and meta == {"s": 1}


def test_missing_checkpoint_names_the_path(tmp_path):
  cfg = helpers.tiny_model("gpt")
  abstract = checkpoint.abstract_like(
    helpers.init_params(cfg),
    train_state.param_shardings(cfg, sharding.make_mesh((1, 1, 1)), sharding.DEFAULT_RULES),
  )
  missing = str(tmp_path / "nowhere" / "ckpt")
  with pytest.raises(checkpoint.CheckpointError, match="nowhere/ckpt does not exist"):
    checkpoint.restore_params(missing, abstract)


def test_lm_learns_a_small_corpus():
  """The LM loss falls well below its starting value on a repetitive text corpus."""
  cfg = helpers.tiny_model("llama", vocab_size=64)
  rng = np.random.default_rng(0)
  phrases = rng.integers(4, 64, size=(6, 8))
  rows = np.stack([np.concatenate([phrases[j] for j in rng.integers(0, 6, 4)]) for _ in range(64)])
  mesh = sharding.make_mesh((1, -1, 1))
  tx = train_state.make_optimizer(helpers.optim_config(1e-2), 200)
  state, shardings = train_state.create_train_state(
    cfg, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0)
  )
  step = train_state.jit_step(pretrain.train_step, shardings, mesh)
  losses = []
  with jax.set_mesh(mesh):
    for i in range(60):
      idx = rng.integers(0, 64, 16)
      batch = {"tokens": rows[idx].astype(np.int32), "mask": np.ones((16, 32), np.int32)}
      batch["loss_mask"] = batch["mask"]
      state, m = step(
        state, sharding.shard_batch(batch, mesh, sharding.DEFAULT_RULES), jax.random.key(i)
      )
      losses.append(float(m["loss"]))
  assert losses[0] > 3.5  # ~ln(64) at initialisation
  assert np.mean(losses[-5:]) < 0.5 * losses[0]
