"""The world's "public NLP tasks", for initialising the reward model (the paper's App. C.2).

The paper's reward model started from GPT-3 fine-tuned on public NLP data sets (ARC, BoolQ, DROP,
MultiNLI, RACE, ...).  Their counterparts here are written from the world's facts, in the
demonstrations' format (``{"prompt", "response", "user_id", "category"}``) so that an LM can be
fine-tuned on them:

* ``nlp_boolq``: is a statement about the world true? (``statement : tami eats fish . is it
  true ? answer :`` -> ``yes .``)
* ``nlp_nli``: does a passage support a claim? (an entailment check, the skill a closed-domain
  hallucination check needs)
* ``nlp_qa``: a short question about a passage (reading comprehension).

They never use an evaluation prompt or an evaluation user (their users are ``nlp_*``), nor any
labeler's judgement: they are made from the world's facts alone, and a prompt that any pool of the
world holds is skipped.
"""

from __future__ import annotations

import random
from typing import Any

from instructgpt_jax.sim.entities import Fact, render_fact
from instructgpt_jax.sim.text import ANSWER_CUE, normalize

NLP_CATEGORIES = ("nlp_boolq", "nlp_nli", "nlp_qa")
_ATTRS = ("kind", "color", "size", "home", "food", "age", "friend")
_QUESTIONS = {
  "kind": "what kind of animal is {s} ?",
  "color": "what color is {s} ?",
  "size": "how big is {s} ?",
  "home": "where does {s} live ?",
  "food": "what does {s} eat ?",
  "age": "how old is {s} ?",
  "friend": "who is the friend of {s} ?",
}


def nlp_task_records(world: Any, n: int, rng: random.Random) -> list[dict[str, str]]:
  """``n`` prompt/response records, a third of each task; prompts of the world's pools are
  skipped (``world.tasks`` holds them, evaluation prompts included)."""
  out: list[dict[str, str]] = []
  seen = set(world.tasks)
  while len(out) < n:
    category = NLP_CATEGORIES[len(out) % len(NLP_CATEGORIES)]
    prompt, response = _MAKERS[category](world, rng)
    key = normalize(prompt)
    if key in seen:
      continue
    seen.add(key)
    user = f"nlp_{len(out) % 100:03d}"
    out.append({"prompt": prompt, "response": response, "user_id": user, "category": category})
  return out


def _fact(world: Any, rng: random.Random) -> Fact:
  name = rng.choice(world.names)
  attr = rng.choice(_ATTRS)
  return Fact(name, attr, world.true_value(name, attr))


def _maybe_false(world: Any, fact: Fact, rng: random.Random) -> tuple[Fact, bool]:
  if rng.random() < 0.5:
    return fact, True
  return Fact(fact.subject, fact.attr, world.other_value(fact.value, rng)), False


def _boolq(world: Any, rng: random.Random) -> tuple[str, str]:
  fact, true = _maybe_false(world, _fact(world, rng), rng)
  return (
    f"statement : {render_fact(fact, rng)} is it true ? {ANSWER_CUE}",
    "yes ." if true else "no .",
  )


def _passage(world: Any, rng: random.Random) -> list[Fact]:
  name = rng.choice(world.names)
  facts = [f for f in world.entity_facts(name) if f.attr in _ATTRS]
  return rng.sample(facts, 2)


def _nli(world: Any, rng: random.Random) -> tuple[str, str]:
  facts = _passage(world, rng)
  text = " ".join(render_fact(f, rng) for f in facts)
  claim, supported = _maybe_false(world, rng.choice(facts), rng)
  if rng.random() < 0.25:  # a true fact the passage does not state: not supported either
    missing = [
      f for f in world.entity_facts(facts[0].subject) if f not in facts and f.attr in _ATTRS
    ]
    claim, supported = rng.choice(missing), False
  return (
    f"passage : {text} claim : {render_fact(claim, rng)} is the claim supported ? {ANSWER_CUE}",
    "yes ." if supported else "no .",
  )


def _qa(world: Any, rng: random.Random) -> tuple[str, str]:
  facts = _passage(world, rng)
  text = " ".join(render_fact(f, rng) for f in facts)
  fact = rng.choice(facts)
  question = _QUESTIONS[fact.attr].format(s=fact.subject)
  return f"passage : {text} question : {question} {ANSWER_CUE}", f"{fact.value} ."


_MAKERS = {"nlp_boolq": _boolq, "nlp_nli": _nli, "nlp_qa": _qa}
