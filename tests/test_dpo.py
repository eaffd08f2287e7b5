"""DPO and IPO over K-way rankings against hand computations, a torch computation of TRL's
per-pair formulas, and TRL's own DPOTrainer loss (`_compute_loss`, run on given log-probs)."""

import collections
import itertools
import math
import types

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


class _LogProbModel:
  """Stands in for the policy in TRL's DPOTrainer._compute_loss: its "forward" returns given
  per-token log-probs [2B, T] (chosen rows first), plus the statistics TRL logs."""

  def __init__(self, torch, per_token_logps):
    self.torch, self.logps = torch, per_token_logps

  def __call__(self, **_):
    zeros = self.torch.zeros_like(self.logps)
    return types.SimpleNamespace(
      log_probs=self.logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
    )


def _trl_dpo_loss(torch, trl, kind, beta, logps, ref, lengths):
  """TRL's DPOTrainer._compute_loss on pairs (row i of each [B]: chosen, rejected) whose
  summed log-probs are `logps` / `ref` [2, B] and completion lengths `lengths` [2, B]."""
  B, T = logps.shape[1], int(lengths.max())
  per_token = torch.zeros(2 * B, T, dtype=torch.float64)
  completion = torch.zeros(2 * B, T + 1, dtype=torch.long)
  for row, (lp, n) in enumerate(zip(logps.reshape(-1), lengths.reshape(-1))):
    per_token[row, : int(n)] = float(lp) / int(n)  # Sums to the sequence's log-prob.
    completion[row, 1 : int(n) + 1] = 1
  stub = types.SimpleNamespace(
    model=types.SimpleNamespace(training=True),
    accelerator=types.SimpleNamespace(
      device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x
    ),
    aux_loss_enabled=False,
    ld_alpha=None,
    precompute_ref_logps=True,
    f_divergence_type="reverse_kl",
    loss_types=[kind],
    loss_weights=[1.0],
    beta=beta,
    use_weighting=False,
    _metrics={"train": collections.defaultdict(list)},
    _total_train_tokens=0,
    _tp_size=1,
  )
  inputs = {
    "input_ids": torch.ones(2 * B, T + 1, dtype=torch.long),
    "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
    "completion_mask": completion,
    "ref_chosen_logps": torch.tensor(ref[0]),
    "ref_rejected_logps": torch.tensor(ref[1]),
  }
  model = _LogProbModel(torch, per_token)
  return float(trl.DPOTrainer._compute_loss(stub, model, inputs, False))  # pylint: disable=protected-access


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_pairs_match_trl_dpo_trainer_loss(kind):
  """Rankings of two responses are TRL's chosen/rejected pairs: our loss equals the loss of
  TRL's DPOTrainer itself on the same log-probs (IPO: both average per completion token)."""
  torch = pytest.importorskip("torch")
  trl = pytest.importorskip("trl")
  rng = np.random.default_rng(1)
  B, beta = 6, 0.3
  logps, ref = rng.normal(-15, 4, (2, B)), rng.normal(-15, 4, (2, B))
  lengths = rng.integers(2, 10, (2, B)).astype(np.float64)
  theirs = _trl_dpo_loss(torch, trl, kind, beta, logps, ref, lengths)
  ranks = np.tile(np.array([[0, 1]]), (B, 1))  # slot 0 (chosen) above slot 1 (rejected)
  ours, _ = L.dpo_loss(
    logps.T, ref.T, ranks, beta, kind, lengths=lengths.T if kind == "ipo" else None
  )
  assert float(ours) == pytest.approx(theirs, rel=1e-5)


def test_unknown_loss_is_refused():
  with pytest.raises(ValueError, match="dpo.loss"):
    L.dpo_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([[0, 1]]), 0.1, "hinge")
