"""Simulated labelers for the built-in task worlds.

A :class:`Labeler` judges responses by a utility: the world's gold score plus a mild personal
preference for longer or shorter answers (at most ``MAX_LENGTH_BIAS`` of utility, so the gold score
stays what matters); in the ``paper`` world each labeler also weighs the guidelines' three criteria
(helpful, truthful, harmless) by its own factors in 1 +- ``MAX_EMPHASIS``.  Choices are Bradley-Terry on that utility with a per-labeler temperature
(``P(a > b) = sigmoid((u_a - u_b) / T)``), rankings the matching Plackett-Luce model (Gumbel
perturbation), and now and then a lapse of attention (a uniformly random choice).  Identical responses
(up to spacing) and responses of equal utility tie.

Training labelers produce the comparisons the reward model learns from; held-out labelers (their own
seeds, noise and preferences) judge the evaluation, as in the paper.  :meth:`Labeler.judge` gives
the paper's per-response rating: a Likert score and the metadata the world's analysis has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from instructgpt_jax.sim.text import count_words, normalize, tokenize

MAX_LENGTH_BIAS = 0.04
MAX_EMPHASIS = 0.25  # a labeler weighs helpful/truthful/harmless within 1 +- this
METADATA = ("fails_instruction", "constraint_ok", "hallucinated", "inappropriate")
_TIE_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Labeler:
  """One simulated labeler."""

  labeler_id: str
  world: Any  # a sim world: .task(prompt).reference and .gold_score(prompt, response)
  temperature: float  # Bradley-Terry temperature on the utility scale (gold score in [0, 1])
  length_bias: (
    float  # utility added per unit of tanh(relative length excess); |.| <= MAX_LENGTH_BIAS
  )
  lapse: float  # probability of a random choice
  # Multipliers of the gold score's (helpful, truthful, harmless) weights: this labeler's own
  # priorities (worlds whose gold score has such criteria; None: the gold score as it is).
  emphasis: tuple[float, float, float] | None = None

  def utility(self, prompt: str, response: str) -> float:
    """Gold score plus this labeler's mild length preference."""
    spec = self.world.task(prompt)
    ref = count_words(tokenize(spec.reference))
    n = count_words(tokenize(response))
    pref = self.length_bias * math.tanh((n - ref) / (ref + 2)) if n else 0.0
    if self.emphasis is None:
      return self.world.gold_score(prompt, response) + pref
    return self.world.gold_score(prompt, response, emphasis=self.emphasis) + pref

  def judge(self, prompt: str, response: str, rng: np.random.Generator) -> dict[str, Any]:
    """A rating as the paper's labelers gave one: a 1-7 Likert score (the utility plus this
    labeler's noise) and the metadata of the world's analysis that it has (fails to follow the
    instruction, violates an explicit constraint, closed-domain hallucination, inappropriate)."""
    noisy = self.utility(prompt, response) + rng.normal(0.0, self.temperature)
    if rng.random() < self.lapse:
      noisy = rng.random()
    analysis = self.world.analyze(prompt, response)
    return {
      "likert": int(np.clip(1 + round(6 * noisy), 1, 7)),
      **{key: analysis[key] for key in METADATA if key in analysis},
    }


def _make_labeler(world: Any, labeler_id: str, rng: np.random.Generator) -> Labeler:
  return Labeler(
    labeler_id=labeler_id,
    world=world,
    temperature=float(rng.uniform(0.06, 0.16)),
    length_bias=float(rng.uniform(-MAX_LENGTH_BIAS, MAX_LENGTH_BIAS)),
    lapse=float(rng.uniform(0.02, 0.08)),
  )


def make_labeler_pools(
  seed: int, n_train: int = 8, n_heldout: int = 4, *, world: Any
) -> tuple[list[Labeler], list[Labeler]]:
  """(training labelers, held-out labelers), each with its own noise and preferences, judging
  the prompts of ``world`` (the world your files came from: ``sim.files.load_world``)."""
  rng = np.random.default_rng([seed, 7177])
  train = [_make_labeler(world, f"train_{i:02d}", rng) for i in range(n_train)]
  heldout = [_make_labeler(world, f"heldout_{i:02d}", rng) for i in range(n_heldout)]
  if (
    getattr(world, "name", "") == "paper"
  ):  # its own stream: the knowledge world's stay as they were
    prio = np.random.default_rng([seed, 7178])
    train, heldout = (
      [
        dataclasses.replace(
          lab, emphasis=tuple(prio.uniform(1 - MAX_EMPHASIS, 1 + MAX_EMPHASIS, 3))
        )
        for lab in pool
      ]
      for pool in (train, heldout)
    )
  return train, heldout


def compare(labeler: Labeler, prompt: str, a: str, b: str, rng: np.random.Generator) -> float:
  """1.0 if the labeler prefers ``a``, 0.0 if ``b``, 0.5 for a tie (identical or equally good)."""
  if normalize(a) == normalize(b):
    return 0.5
  du = labeler.utility(prompt, a) - labeler.utility(prompt, b)
  if abs(du) < _TIE_EPS:
    return 0.5
  if rng.random() < labeler.lapse:
    return float(rng.random() < 0.5)
  p = 0.5 * (1.0 + math.tanh(0.5 * du / labeler.temperature))  # sigmoid, no overflow
  return float(rng.random() < p)


def rank(
  labeler: Labeler, prompt: str, responses: Sequence[str], rng: np.random.Generator
) -> list[int]:
  """ranking[i] = rank of responses[i] (0 = best, dense); identical or equally good responses tie."""
  groups: list[tuple[float, list[int]]] = []  # (utility, members)
  by_text: dict[str, int] = {}
  for i, r in enumerate(responses):
    key = normalize(r)
    if key in by_text:
      groups[by_text[key]][1].append(i)
      continue
    u = labeler.utility(prompt, r)
    same = next((g for g, (gu, _) in enumerate(groups) if abs(gu - u) < _TIE_EPS), None)
    if same is None:
      by_text[key] = len(groups)
      groups.append((u, [i]))
    else:
      by_text[key] = same
      groups[same][1].append(i)
  utilities = np.array([u for u, _ in groups])
  if rng.random() < labeler.lapse:
    keys = rng.random(len(groups))
  else:
    keys = utilities / labeler.temperature + rng.gumbel(size=len(groups))
  ranking = [0] * len(responses)
  for position, g in enumerate(np.argsort(-keys, kind="stable")):
    for i in groups[g][1]:
      ranking[i] = position
  return ranking


def labeler_agreement(
  pool: Sequence[Labeler],
  prompts_and_pairs: Sequence[tuple[str, str, str]],
  rng: np.random.Generator,
) -> float:
  """How well one labeler predicts another: over pairs (prompt, a, b) on which a labeler A of
  ``pool`` prefers one response, the fraction on which a different labeler B, drawn at random
  per pair, prefers the same one (a tie from B counts half).

  This is the human counterpart of the reward model's held-out accuracy, which is scored on the
  same kind of pairs: a labeler's strict preferences (ties dropped), where the RM never gets
  credit for a tie. Pairs that A ties (identical or equally good responses) are skipped, as they
  are for the RM."""
  if len(pool) < 2:
    raise ValueError("agreement needs at least two labelers")
  agree = total = 0.0
  for prompt, a, b in prompts_and_pairs:
    i, j = rng.choice(len(pool), size=2, replace=False)
    first = compare(pool[i], prompt, a, b, rng)
    if first == 0.5:
      continue
    agree += 1.0 - abs(first - compare(pool[j], prompt, a, b, rng))
    total += 1
  return agree / total if total else float("nan")
