"""The RM breakdown's grouping and counting, on hand-made analyses and judges."""

import numpy as np
import pytest

from instructgpt_jax.tools import breakdown as rm_breakdown


def _analysis(score, content=1.0, constraint=None, halluc=None, ended=True, verbosity=1.0):
  return {
    "score": score,
    "content": content,
    "constraint_frac": constraint,
    "hallucinated": halluc,
    "terminated": ended,
    "verbosity": verbosity,
  }


def test_differing_criteria_names_each_difference():
  a = _analysis(0.9, content=1.0, constraint=1.0, halluc=False)
  assert rm_breakdown.differing_criteria(a, a) == "none"
  assert rm_breakdown.differing_criteria(a, {**a, "content": 0.5}) == "content"
  assert (
    rm_breakdown.differing_criteria(a, {**a, "content": 0.5, "terminated": False, "verbosity": 0.7})
    == "content+ending+verbosity"
  )
  assert (
    rm_breakdown.differing_criteria(a, {**a, "constraint_frac": 0.5, "hallucinated": True})
    == "constraint+hallucination"
  )


def test_accuracy_by_group_counts_ties_half():
  groups = ["content", "content", "content", "ending"]
  gold = np.array([0.5, -0.2, 0.1, 0.3])
  judges = {"j": np.array([1.0, -1.0, 0.0, -2.0])}  # right, right, tie, wrong
  table = rm_breakdown.accuracy_by_group(groups, gold, judges)
  assert list(table) == ["all", "content", "ending"]
  assert table["all"] == {"pairs": 4, "j": pytest.approx(2.5 / 4)}
  assert table["content"] == {"pairs": 3, "j": pytest.approx(2.5 / 3)}
  assert table["ending"] == {"pairs": 1, "j": 0.0}
  with pytest.raises(ValueError, match="gold scores differ"):
    rm_breakdown.accuracy_by_group(["x"], np.array([0.0]), {"j": np.array([1.0])})


def test_pairs_skip_equal_gold_and_unscored_responses():
  records = [
    {"responses": ["a", "b", "c"], "ranking": [1, 0, 2]},
    {"responses": ["d", "e"], "ranking": [0, 0]},
  ]
  analyses = [
    _analysis(0.2, content=0.2),
    _analysis(0.8, content=0.8),
    _analysis(0.2, content=0.2),
    _analysis(0.5),
    _analysis(0.25, ended=False),
  ]
  rm_scores = np.array([0.0, 1.0, 3.0, np.nan, 0.0])
  pairs = rm_breakdown.gold_differing_pairs(records, analyses, {"reward_model": rm_scores})
  # (a, b) and (b, c) differ in gold; (a, c) ties; the second record's pair has no RM score.
  assert pairs["groups"] == ["content", "content"]
  np.testing.assert_allclose(pairs["gold_diff"], [-0.6, 0.6])
  np.testing.assert_allclose(pairs["judge_diffs"]["reward_model"], [-1.0, -2.0])
  np.testing.assert_allclose(pairs["judge_diffs"]["labelers"], [-1.0, 2.0])
  table = rm_breakdown.accuracy_by_group(**pairs)
  assert table["all"]["labelers"] == 1.0 and table["all"]["reward_model"] == 0.5
