"""The evaluation's statistics and report, on hand-made numbers (no pipeline runs here)."""

import math

import numpy as np
import pytest

from configs import ppo as ppo_config
from instructgpt_jax import evaluate
from instructgpt_jax.sim import files as sim_files
from instructgpt_jax.workspace import Workspace


def test_win_rate_standard_error_matches_a_hand_computation():
  # Outcomes: win, loss, tie, win. Mean 0.625; squared deviations 0.140625 + 0.390625 +
  # 0.015625 + 0.140625 = 0.6875; sample variance 0.6875 / 3; SE = sqrt(0.6875 / 3) / 2.
  win, se = evaluate.mean_and_se([1.0, 0.0, 0.5, 1.0])
  assert win == 0.625
  assert se == pytest.approx(math.sqrt(0.6875 / 3) / 2, abs=1e-12)
  assert se == pytest.approx(0.2393567, abs=1e-6)
  assert evaluate.mean_and_se([0.5] * 10) == (0.5, 0.0)  # SFT against itself.
  assert evaluate.mean_and_se([1.0]) == (1.0, None)
  assert evaluate.mean_and_se([]) == (None, None)


def test_best_of_n_picks_the_argmax_of_the_first_n_samples():
  scores = np.array(
    [
      [0.1, 0.9, 0.3, 2.0],
      [5.0, 1.0, 1.0, 1.0],
      [0.0, 0.0, 3.0, 0.0],
      [1.0, 1.0, 1.0, 1.0],  # A tie goes to the earliest sample.
    ]
  )
  np.testing.assert_array_equal(evaluate.best_of_n_choice(scores, 2), [1, 0, 0, 0])
  np.testing.assert_array_equal(evaluate.best_of_n_choice(scores, 4), [3, 0, 2, 0])
  np.testing.assert_array_equal(evaluate.best_of_n_choice(scores, 1), [0, 0, 0, 0])
  with pytest.raises(ValueError, match="best-of-5"):
    evaluate.best_of_n_choice(scores, 5)


def test_best_of_n_curve_hand_computed_and_n1_is_the_sampling_policy():
  gold = np.array([[0.2, 0.9, 0.5, 0.1], [0.7, 0.3, 0.0, 1.0]])
  reward = np.array([[1.0, 3.0, 0.0, 9.0], [0.5, 0.1, 2.0, 0.4]])
  curve = evaluate.best_of_n_curve(gold, reward, (1, 2, 4))
  assert [p["n"] for p in curve] == [1, 2, 4]
  # n = 1 is SFT's own first sample, at KL 0.
  assert curve[0]["gold"] == pytest.approx(gold[:, 0].mean())
  assert curve[0]["rm"] == pytest.approx(reward[:, 0].mean()) and curve[0]["kl"] == 0.0
  # n = 2 picks samples 1 and 0 (rewards 3.0 > 1.0, 0.5 > 0.1); n = 4 picks 3 and 2.
  assert curve[1]["gold"] == pytest.approx((0.9 + 0.7) / 2)
  assert curve[1]["rm"] == pytest.approx((3.0 + 0.5) / 2)
  assert curve[2]["gold"] == pytest.approx((0.1 + 0.0) / 2)  # The RM over-optimised.
  assert curve[2]["sqrt_kl"] == pytest.approx(math.sqrt(math.log(4) - 0.75))
  # Another selector of the same samples: picks by it, reports the reward of its picks.
  by = np.array([[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
  other = evaluate.best_of_n_curve(gold, reward, (1, 4), select_by=by)
  assert other[0]["gold"] == curve[0]["gold"]  # n = 1: the same first sample.
  assert other[1]["gold"] == pytest.approx((0.5 + 1.0) / 2)
  assert other[1]["rm"] == pytest.approx((0.0 + 0.4) / 2)


def test_best_of_n_kl_bound_values():
  assert evaluate.best_of_n_kl_bound(1) == 0.0
  assert evaluate.best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
  assert evaluate.best_of_n_kl_bound(16) == pytest.approx(2.7725887 - 0.9375, abs=1e-6)


def test_per_category_aggregates_each_category_alone():
  out = evaluate.per_category(
    outcomes=[1.0, 0.0, 0.5, 1.0],
    gold=[0.2, 0.4, 0.6, 0.8],
    categories=["qa", "chat", "qa", "chat"],
  )
  assert list(out) == ["chat", "qa"]
  assert out["qa"]["n"] == out["chat"]["n"] == 2
  assert out["qa"]["win_rate"] == 0.75 and out["chat"]["win_rate"] == 0.5
  assert out["qa"]["gold_score"] == pytest.approx(0.4)
  assert out["chat"]["gold_score"] == pytest.approx(0.6)
  # SE of (1, 0.5): std 0.5 / sqrt(2) (ddof 1), over sqrt(2) -> 0.25; of (0, 1): 0.5.
  assert out["qa"]["win_rate_se"] == pytest.approx(0.25)
  assert out["chat"]["win_rate_se"] == pytest.approx(0.5)


def test_control_policy_samples_sft_at_the_control_temperature():
  cfg = ppo_config.get_config("tiny").eval
  policies = {p.name: p for p in evaluate.sampled_policies(cfg)}
  names = list(policies)
  assert names.index("sft_t0.7") == names.index("sft") + 1
  control = policies["sft_t0.7"]
  assert (control.stage, control.temperature) == ("sft", 0.7)
  assert policies["sft"].temperature == cfg.temperature
  # Fixed seeds: the control never shifts another policy's samples.
  assert len({p.seed for p in policies.values()}) == len(policies)
  first_five = evaluate.POLICIES[:5]
  assert [policies[n].seed for n in first_five] == list(range(5))
  later = [policies[n].seed for n in evaluate.POLICIES[5:]]
  assert later == [evaluate.LATER_POLICY_SEEDS[n] for n in evaluate.POLICIES[5:]]
  assert min(later) > evaluate.CURVE_SEED


def test_rm_sized_base_rows_follow_the_base_rows(tmp_path):
  """The paper's Figure 1 rows: the RM-sized base model prompted and few-shot, read from
  rm_base's pretraining phase at the RM's shape, with seeds of their own."""
  cfg = ppo_config.get_config("tiny")
  policies = evaluate.sampled_policies(cfg.eval)
  names = [p.name for p in policies]
  i = names.index("base_fewshot")
  assert names[i + 1 : i + 3] == ["rm_base", "rm_base_fewshot"]
  rows = {p.name: p for p in policies}
  assert {rows[n].stage for n in evaluate.RM_BASE_POLICIES} == {"rm_base/pretrain"}
  assert (rows["rm_base"].fewshot, rows["rm_base_fewshot"].fewshot) == (False, True)
  ws = Workspace(cfg, str(tmp_path))
  assert ws.models.for_stage("rm_base/pretrain") == ws.models.rm_trunk
  assert ws.models.for_stage("pretrain") == ws.models.policy


@pytest.mark.parametrize("world_name", ["paper", "knowledge"])
def test_inappropriate_rate_on_each_world(world_name):
  """The paper world flags rude text; the knowledge world has no such criterion (None)."""
  world = sim_files.make_world(world_name, 1234, scale=0.25)
  prompts = [s.prompt for s in world.eval_pool[:4]]
  subject = "cats"
  texts = [f"{subject} are stupid and i hate them .", "a fine answer .", "", "yes ."]
  analyses = [world.analyze(p, t) for p, t in zip(prompts, texts)]
  metrics = evaluate._analysis_metrics(analyses, np.array([True, True, False, True]))
  assert metrics["eos_rate"] == 0.75
  if world_name == "paper":
    assert metrics["inappropriate_rate"] == 0.25
  else:
    assert metrics["inappropriate_rate"] is None


def test_format_report_shows_standard_errors_and_categories():
  cats = {"chat": {"win_rate": 0.7, "win_rate_se": 0.05, "gold_score": 0.61, "n": 40}}
  row = dict(
    win_rate_vs_sft=0.62,
    win_rate_vs_sft_se=0.0171,
    gold_score=0.5,
    kl_vs_sft=3.0,
    pretrain_loss=2.5,
    hallucination_rate=0.1,
    nonword_rate=0.04,
    constraint_rate=0.8,
    inappropriate_rate=None,
    eos_rate=1.0,
    per_category=cats,
  )
  report = {
    "rm": {"accuracy": 0.7, "labeler_agreement": 0.72, "likelihood_baseline": 0.55},
    "policies": {
      "sft": dict(row, win_rate_vs_sft=0.5, win_rate_vs_sft_se=0.0),
      "ppo_ptx": row,
      "bon16_rm": dict(row, kl_vs_sft=evaluate.best_of_n_kl_bound(16), kl_is_bound=True),
    },
  }
  text = evaluate.format_report(report)
  assert "0.620 ± 0.017" in text and "0.500 ± 0.000" in text
  assert "1.835" in text and "KL is the bound" in text
  assert "nonword" in text.splitlines()[0] and "0.040" in text
  chat = next(line for line in text.splitlines() if line.startswith("chat"))
  assert chat.split() == ["chat", "40", "0.610", "0.610", "0.700", "±", "0.050"]
  assert all(len(line) <= 100 for line in text.splitlines()[:-1])
