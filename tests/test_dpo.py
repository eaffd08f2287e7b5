"""DPO and IPO over K-way rankings against hand computations and a torch computation of TRL's
per-pair formulas (TRL 1.16 keeps them inside DPOTrainer._compute_loss, which needs a model)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructgpt_jax import losses as L


def _pairs(ranks):
  return [
    (i, j)
    for i, j in itertools.permutations(range(len(ranks)), 2)
    if ranks[i] >= 0 and ranks[j] >= 0 and ranks[i] < ranks[j]
  ]


def test_dpo_single_pair_by_hand():
  # h = (-3 - -4) - (-5 - -4.5) = 1.5; loss = -log sigmoid(0.1 * 1.5) = log(1 + e^-0.15).
  logps, ref = jnp.array([[-3.0, -5.0]]), jnp.array([[-4.0, -4.5]])
  loss, m = L.dpo_loss(logps, ref, jnp.array([[0, 1]]), beta=0.1)
  assert float(loss) == pytest.approx(math.log1p(math.exp(-0.15)), rel=1e-6)
  assert float(m["chosen_reward"]) == pytest.approx(0.1) and float(
    m["rejected_reward"]
  ) == pytest.approx(-0.05)
  assert float(m["accuracy"]) == 1.0
  # d loss / d logp_w = -beta * sigmoid(-beta h); d / d logp_l is its negative.
  g = jax.grad(lambda x: L.dpo_loss(x, ref, jnp.array([[0, 1]]), 0.1)[0])(logps)
  expected = -0.1 / (1 + math.exp(0.15))
  np.testing.assert_allclose(np.asarray(g), [[expected, -expected]], rtol=1e-5)


def test_ipo_single_pair_by_hand():
  logps, ref = jnp.array([[-3.0, -5.0]]), jnp.array([[-4.0, -4.5]])
  loss, _ = L.dpo_loss(logps, ref, jnp.array([[0, 1]]), beta=0.5, loss="ipo")
  assert float(loss) == pytest.approx((1.5 - 1.0) ** 2)
  lengths = jnp.array([[2.0, 4.0]])  # Per-token: 1 / 2 - (-0.5) / 4 = 0.625.
  loss, _ = L.dpo_loss(logps, ref, jnp.array([[0, 1]]), beta=0.5, loss="ipo", lengths=lengths)
  assert float(loss) == pytest.approx((0.625 - 1.0) ** 2)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_k_way_rankings_match_trl_formulas_per_pair(kind):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  logps, ref = rng.normal(-20, 3, (3, 5)), rng.normal(-20, 3, (3, 5))
  lengths = rng.integers(1, 9, (3, 5)).astype(np.float64)
  ranks = np.array([[0, 1, 2, 3, 4], [1, 0, 1, -1, 2], [0, 0, 1, -1, -1]])
  beta = 0.2
  per_prompt = []
  for b in range(3):
    pairs = _pairs(ranks[b])
    win, lose = (torch.tensor([p[k] for p in pairs]) for k in (0, 1))
    lp, rf, ln = (torch.tensor(x[b]) for x in (logps, ref, lengths))
    chosen, rejected = lp[win] - rf[win], lp[lose] - rf[lose]
    if kind == "sigmoid":  # TRL: -logsigmoid(beta * delta_score)
      per_pair = -F.logsigmoid(beta * (chosen - rejected))
    else:  # TRL: per-token average scores, (delta - 1 / (2 beta))^2
      per_pair = (chosen / ln[win] - rejected / ln[lose] - 1 / (2 * beta)) ** 2
    per_prompt.append(float(per_pair.mean()))
  loss, m = L.dpo_loss(logps, ref, ranks, beta, kind, lengths=lengths if kind == "ipo" else None)
  assert float(loss) == pytest.approx(np.mean(per_prompt), rel=1e-5)
  assert int(m["num_pairs"]) == sum(len(_pairs(r)) for r in ranks)


def test_unknown_loss_is_refused():
  with pytest.raises(ValueError, match="dpo.loss"):
    L.dpo_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([[0, 1]]), 0.1, "hinge")
