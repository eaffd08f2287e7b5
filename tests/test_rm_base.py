"""The reward model's own shape and base model, the label sources and SFT's pretraining mix,
without running a pipeline (tests/test_stages.py runs them on tiny); the rm_base stage alone."""

import os

import numpy as np
import pytest

from instructgpt_jax import inputs, label, loop, model_configs, pipeline, rm_base, scoring
from instructgpt_jax.workspace import Workspace
from tests import helpers


def test_rm_model_overrides_the_policy_shape_and_the_value_follows():
  small = model_configs.resolve(helpers.config("ppo", "small"))
  # small: the RM starts from the 4 x 192 policy's SFT model (configs/rm_base.py says why).
  assert (small.policy.num_layers, small.policy.d_model) == (4, 192)
  assert small.rm_trunk == small.policy and small.rm_init_from == "sft"
  config = helpers.config("ppo")  # tiny: the RM has one layer more than the policy.
  models = model_configs.resolve(config)
  policy, rm_cfg = models.policy, models.reward
  assert (rm_cfg.num_layers, rm_cfg.d_model, rm_cfg.head) == (policy.num_layers + 1, 64, "scalar")
  assert rm_cfg.num_params() > policy.num_params()
  assert models.rm_trunk == rm_cfg.replace(head="lm") == models.rm_init
  assert config.rm.init_from == "rm_base" == models.rm_init_from == model_configs.RM_INIT_FROM[0]
  assert models.for_stage("rm/member_1") == rm_cfg and models.for_stage("ppo/ppo_ptx") == policy
  assert models.for_stage("rm_base/nlp") == models.rm_trunk
  from instructgpt_jax import ppo  # pylint: disable=import-outside-toplevel

  assert ppo.make_settings(config, models, eos_id=1, pad_id=0).value_cfg == rm_cfg == models.value


def test_rm_from_the_policy_needs_the_policy_shape():
  config = helpers.config("rm")
  config.rm.init_from = "sft"
  with pytest.raises(ValueError, match="rm.init_from='rm_base'"):
    model_configs.resolve(config)
  config.rm.model = {}
  models = model_configs.resolve(config)
  assert models.rm_init == models.policy == models.rm_trunk and models.rm_init_from == "sft"
  config.rm.model = {"num_layer": 3}
  with pytest.raises(ValueError, match="not model settings"):
    model_configs.resolve(config)
  config.rm.model = {}
  config.rm.init_from = "gpt3"
  with pytest.raises(ValueError, match="not one of"):
    model_configs.resolve(config)


def test_rm_base_runs_before_rm_and_after_label():
  order = pipeline.stages_to_run("rm")
  assert order.index("label") < order.index("rm_base") == order.index("rm") - 1
  assert "rm_base" not in pipeline.stages_to_run("label")


def test_label_sources_parse_and_mix():
  cfg = helpers.config("label", "small").label
  sources, weights = label.parse_sources(cfg)
  assert sources == [("sft", 1.0), ("sft", 0.7), ("base_fewshot", 1.0)]
  assert np.allclose(weights, [0.5, 0.25, 0.25])
  fits = np.ones((4000, 3), bool)
  fits[2000:, 2] = False  # Half the prompts are too long for the few-shot prefix.
  assigned = label.assign_sources(fits, weights, np.full(4000, 6), np.random.default_rng(0))
  first, second = np.concatenate(assigned[:2000]), np.concatenate(assigned[2000:])
  assert np.allclose(np.bincount(first, minlength=3) / first.size, weights, atol=0.02)
  assert (second != 2).all() and abs(np.mean(second == 0) - 2 / 3) < 0.02
  for bad in (("sft:hot",), ("policy:1.0",), ("sft:0",)):
    cfg.sources, cfg.source_weights = bad, (1.0,)
    with pytest.raises(ValueError, match="policy:temperature"):
      label.parse_sources(cfg)
  cfg.sources, cfg.source_weights = ("sft:1.0", "sft:0.7"), (1.0,)
  with pytest.raises(ValueError, match="one per label.sources"):
    label.parse_sources(cfg)


def test_ranks_among_keeps_only_one_source():
  arrays = {
    "ranks": np.array([[0, 1, 2, -1], [1, 0, -1, -1]]),
    "slots": np.array([[0, 2, 3, -1], [0, 1, -1, -1]]),
    "sources": [["sft:1.0", "base:1.0", "sft:1.0", "sft:0.7"], []],
  }
  assert inputs.ranks_among(arrays, "sft:1.0").tolist() == [[0, 1, -1, -1], [-1, -1, -1, -1]]


def test_mix_pretraining_fraction(tmp_path):
  demos = {k: np.zeros((90, 6), np.int32) for k in ("tokens", "mask", "loss_mask")}
  text = {k: np.ones((50, 6), np.int32) for k in ("tokens", "mask", "loss_mask")}
  mixed, n_text = inputs.mix_pretraining(demos, text, 0.1, seed=0)
  assert n_text == 10 and mixed["tokens"].shape == (100, 6)
  assert mixed["loss_mask"][90:].all() and not mixed["loss_mask"][:90].any()
  assert inputs.mix_pretraining(demos, text, 0.0, seed=0)[1] == 0
  config = helpers.config("rm_base")
  config.rm_base.sft.pretrain_mix = 1.0  # All pretraining rows: checked before any stage.
  with pytest.raises(ValueError, match=r"rm_base\.sft\.pretrain_mix=1\.0: must be in \[0, 1\)"):
    inputs.check_sft_section(Workspace(config, str(tmp_path)), config.rm_base.sft, "rm_base.sft")


def test_nlp_tasks_are_optional(tmp_path):
  config = helpers.config("rm")
  config.data.world = "knowledge"  # Writes no NLP tasks.
  assert Workspace(config, str(tmp_path / "knowledge")).optional_jsonl("nlp_tasks") is None
  paper = Workspace(helpers.config("rm"), str(tmp_path / "paper"))
  assert paper.optional_jsonl("nlp_tasks").endswith("world/nlp_tasks.jsonl")
  # Files of one's own: no NLP tasks (the world's would teach its language), and the world
  # fills the other files.
  own = helpers.config("rm")
  for key in ("pretrain_jsonl", "demonstrations_jsonl", "prompts_jsonl"):
    own.data[key] = paper.jsonl(key.replace("_jsonl", "").replace("pretrain", "pretraining"))
  ws = Workspace(own, str(tmp_path / "own"))
  assert not ws.uses_world and ws.optional_jsonl("nlp_tasks") is None
  assert ws.jsonl("demonstrations") == own.data.demonstrations_jsonl
  assert ws.jsonl("rm_prompts") == os.path.join(ws.workdir, "world", "rm_prompts.jsonl")
  assert os.path.exists(ws.jsonl("rm_prompts"))
  assert "your pretraining, demonstrations, prompts (config.data)" in ws.data_summary()


def test_own_rm_prompts_need_own_comparisons(tmp_path):
  """The simulated labelers judge only the world's prompts: with RM prompts of your own and no
  comparisons, labelling is refused before anything is sampled."""
  config = helpers.config("rm")
  config.data.rm_prompts_jsonl = Workspace(helpers.config("rm"), str(tmp_path / "w")).jsonl(
    "rm_prompts"
  )
  with pytest.raises(ValueError, match="set config.data.comparisons_jsonl"):
    label.check_settings(Workspace(config, str(tmp_path / "own")))


@pytest.mark.slow
def test_rm_base_ends_with_the_sft_recipe_on_the_rm_shape(tmp_path):
  """Phase 3 (paper 3.5: the RM starts from the SFT model) runs the policy's SFT recipe on the
  RM-sized model, after pretraining and the NLP tasks, reading only data; epochs=0 skips it."""
  config = helpers.config("rm_base")
  scfg = config.rm_base.sft
  assert (scfg.epochs, scfg.pretrain_mix) == (1, 0.1)
  ws = Workspace(config, str(tmp_path / "sft"))
  summary = rm_base.run(ws)
  mix = summary["sft_pretrain_rows"]
  assert summary["sft_examples"] > 0 and mix == round(summary["sft_examples"] * 0.1 / 0.9)
  rows = summary["sft_examples"] + mix
  assert summary["sft_steps"] == loop.steps_for_epochs(rows, scfg.batch_size, scfg.epochs)
  assert summary["nlp_steps"] > 0 and summary["sft_seconds"] > 0
  assert np.isfinite(summary["sft_final_loss"]) and np.isfinite(summary["sft_validation_loss"])
  assert os.path.exists(os.path.join(ws.stage_dir("rm_base"), "sft", "metrics.jsonl"))
  assert not os.path.exists(ws.stage_dir("sft"))  # The policy's SFT is not needed.

  skipped_cfg = helpers.config("rm_base")
  skipped_cfg.rm_base.sft.epochs = 0
  skipped_ws = Workspace(skipped_cfg, str(tmp_path / "no_sft"))
  skipped = rm_base.run(skipped_ws)
  assert "sft_steps" not in skipped and not os.path.exists(
    os.path.join(skipped_ws.stage_dir("rm_base"), "sft")
  )
  # Same seeds up to phase 3, so the tuned model fits the demonstrations better than the other.
  lm_cfg = ws.models.rm_trunk
  val = inputs.sft_arrays(ws, "validation")
  assert val["tokens"].shape[0]
  tuned = scoring.lm_loss(ws, ws.load_params("rm_base", lm_cfg), lm_cfg, val)
  untuned = scoring.lm_loss(skipped_ws, skipped_ws.load_params("rm_base", lm_cfg), lm_cfg, val)
  assert tuned == pytest.approx(summary["sft_validation_loss"]) and tuned < untuned
