"""The pretraining corpus: paragraphs of plain statements about an :class:`Atlas`'s world.

It never holds the answer cue, a question mark or an instruction, so a base model learns the
world's facts but not to follow orders (the paper's misalignment).  Like web text it may hold a
small share of rude or unsafe sentences (the ``paper`` world's corpus does).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from instructgpt_jax.sim.entities import (
  COLORS,
  FOODS,
  KINDS,
  SIZES,
  Atlas,
  Fact,
  render_fact,
)
from instructgpt_jax.sim.safety import inappropriate_sentence
from instructgpt_jax.sim.text import article, join_and, split_sentences


def pretraining_sentences(atlas: Atlas, n: int, rng: random.Random) -> list[str]:
  """``n`` plain sentences about the world (the corpus's paragraphs, split)."""
  return [s for p in pretraining_corpus(atlas, n, rng) for s in split_sentences(p)][:n]


def pretraining_corpus(
  atlas: Atlas, n_sentences: int, rng: random.Random, inappropriate_rate: float = 0.0
) -> list[str]:
  """Paragraphs of plain statements (no instructions, no questions, no answer cue), about 4 % of
  them shouted (upper case); ``inappropriate_rate`` of them also hold one rude or unsafe sentence
  about their animal (:mod:`instructgpt_jax.sim.safety`)."""
  makers: list[tuple[Callable[[Atlas, random.Random], list[str]], float]] = [
    (entity_paragraph, 0.70),
    (town_paragraph, 0.12),
    (kind_paragraph, 0.08),
    (group_paragraph, 0.10),
  ]
  fns, ws = zip(*makers)
  paragraphs, count = [], 0
  while count < n_sentences:
    sents = rng.choices(fns, ws)[0](atlas, rng)
    if rng.random() < 0.04:
      i = rng.randrange(len(sents))
      sents[i] = sents[i].upper()
    # Drawn only when asked for, so a corpus without such sentences keeps its random stream.
    if inappropriate_rate and rng.random() < inappropriate_rate:
      ent = atlas.entities[rng.choice(atlas.names)]
      sent = inappropriate_sentence(rng, ent.name, ent.kind, KINDS[ent.kind][2])
      sents.insert(rng.randint(0, len(sents)), sent)
    paragraphs.append(" ".join(sents))
    count += len(sents)
  return paragraphs


def entity_paragraph(atlas: Atlas, rng: random.Random) -> list[str]:
  """3-6 facts about one animal, in varied phrasing."""
  ent = atlas.entities[rng.choice(atlas.names)]
  facts = atlas.entity_facts(ent.name)
  rng.shuffle(facts)
  facts = facts[: rng.randint(3, 6)]
  sents = []
  for i, fact in enumerate(facts):
    r = rng.random()
    if fact.attr == "kind" and r < 0.5:
      sents.append(f"{ent.name} is a {ent.size} {ent.color} {ent.kind} .")
    elif fact.attr == "food" and r < 0.2:
      sents.append(f"yesterday {ent.name} ate {ent.food} .")
    elif fact.attr == "home" and r < 0.15:
      sents.append(f"{ent.name} was born in {ent.home} .")
    elif fact.attr == "legs" and r < 0.4:
      sents.append(f"like every {ent.kind} , {ent.name} has {ent.legs} legs .")
    else:
      s = render_fact(fact, rng)
      if i > 0 and r > 0.75 and fact.attr != "friend" and s.startswith(ent.name + " "):
        s = "it" + s[len(ent.name) :]
      sents.append(s)
  return sents


def town_paragraph(atlas: Atlas, rng: random.Random) -> list[str]:
  """A town's region and some of its residents."""
  town = rng.choice(list(atlas.towns))
  residents = [e.name for e in atlas.entities.values() if e.home == town]
  rng.shuffle(residents)
  k = min(len(residents), rng.randint(2, 4))
  sents = [
    render_fact(Fact(town, "region", atlas.towns[town]), rng),
    f"{join_and(residents[:k])} live in {town} .",
  ]
  if rng.random() < 0.5:
    sents.append(f"{len(residents)} animals live in {town} .")
  return sents


def kind_paragraph(atlas: Atlas, rng: random.Random) -> list[str]:
  """A kind's class and legs, and some animals of that kind."""
  kind = rng.choice(sorted(KINDS))
  cls_, legs, plural = KINDS[kind]
  sents = [f"{article(kind)} {kind} is a {cls_} .", f"{article(kind)} {kind} has {legs} legs ."]
  members = [e.name for e in atlas.entities.values() if e.kind == kind]
  if len(members) >= 2:
    rng.shuffle(members)
    sents.append(f"{join_and(members[:3])} are {plural} .")
  return sents


def group_paragraph(atlas: Atlas, rng: random.Random) -> list[str]:
  """Animals that share a colour, a food or a size."""
  attr = rng.choice(("color", "food", "size"))
  value = rng.choice({"color": COLORS, "food": FOODS, "size": SIZES}[attr])
  members = [e.name for e in atlas.entities.values() if e.value(attr) == value]
  rng.shuffle(members)
  if len(members) < 2:
    return [f"no animal is {value} ."] if attr != "food" else [f"no animal eats {value} ."]
  group = join_and(members[: rng.randint(2, 3)])
  verb = {"color": f"are {value}", "food": f"eat {value}", "size": f"are {value}"}[attr]
  return [f"{group} {verb} ."]


# --- demonstrations ---------------------------------------------------------------------
