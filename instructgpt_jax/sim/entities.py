"""The world's facts: named animals and towns, their attributes, and a parser of statements.

:class:`Atlas` builds, from one seed, ~96 named animals (``tami``, ``bori``, ...) with a kind (fox,
owl, ...), colour, size, home town, food, age, number of legs (from the kind) and one friend, and
~10 towns, each in a region.  It knows which statements are true (:meth:`Atlas.check`) and parses
the statements a text makes (:meth:`Atlas.claims`).  Both worlds (``knowledge`` and ``paper``) are
an :class:`Atlas` plus their prompts and gold score.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence

from instructgpt_jax.sim.text import article, split_clauses

KINDS: dict[str, tuple[str, int, str]] = {  # kind -> (class, legs, plural)
  "fox": ("mammal", 4, "foxes"),
  "cat": ("mammal", 4, "cats"),
  "dog": ("mammal", 4, "dogs"),
  "bear": ("mammal", 4, "bears"),
  "goat": ("mammal", 4, "goats"),
  "mouse": ("mammal", 4, "mice"),
  "wolf": ("mammal", 4, "wolves"),
  "owl": ("bird", 2, "owls"),
  "duck": ("bird", 2, "ducks"),
  "hen": ("bird", 2, "hens"),
  "crow": ("bird", 2, "crows"),
  "snake": ("reptile", 0, "snakes"),
  "lizard": ("reptile", 4, "lizards"),
  "turtle": ("reptile", 4, "turtles"),
  "ant": ("bug", 6, "ants"),
  "beetle": ("bug", 6, "beetles"),
  "spider": ("bug", 8, "spiders"),
}
CLASSES: dict[str, str] = {
  "mammal": "mammals",
  "bird": "birds",
  "reptile": "reptiles",
  "bug": "bugs",
}
COLORS = ("red", "blue", "green", "brown", "black", "white", "gray", "yellow")
FOODS = (
  "fish",
  "berries",
  "seeds",
  "nuts",
  "grass",
  "apples",
  "corn",
  "worms",
  "leaves",
  "honey",
  "carrots",
  "bread",
)
SIZES = ("small", "big")
REGIONS = ("north", "south", "east", "west")
NUMBER_WORDS = {
  w: i
  for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split()
  )
}
TOWN_PREFIXES = (
  "oak",
  "ash",
  "elm",
  "pine",
  "mill",
  "stone",
  "brook",
  "marsh",
  "glen",
  "moss",
  "fern",
  "reed",
)
TOWN_SUFFIXES = ("vale", "ford", "field", "more", "wick", "ton", "dale", "by")
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
PAST_TENSE = {
  "lives": "lived",
  "eats": "ate",
  "is": "was",
  "has": "had",
  "are": "were",
  "likes": "liked",
}

ATTRS = ("kind", "color", "size", "home", "food", "age", "legs", "friend")

NUMBER_WORDS_INV = {i: w for w, i in NUMBER_WORDS.items()}


@dataclasses.dataclass(frozen=True)
class Entity:
  """A named animal of the world."""

  name: str
  kind: str
  color: str
  size: str
  home: str
  food: str
  age: int
  legs: int
  friend: str

  def value(self, attr: str) -> str:
    """The attribute's value as a word."""
    return str(getattr(self, attr))


@dataclasses.dataclass(frozen=True)
class Fact:
  """One statement: ``subject`` has ``attr`` = ``value`` (all strings)."""

  subject: str
  attr: str
  value: str


@dataclasses.dataclass
class Claim:
  """A statement parsed from a response."""

  subject: str
  attr: str
  value: str


# Sentences stating facts.
_FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
  "kind": ("{s} is {a} {v} .",),
  "color": ("{s} is {v} .", "the color of {s} is {v} ."),
  "size": ("{s} is {v} .",),
  "home": ("{s} lives in {v} .", "{s} is from {v} .", "the home of {s} is {v} ."),
  "food": ("{s} eats {v} .", "{s} likes to eat {v} .", "the food of {s} is {v} ."),
  "age": ("{s} is {v} years old .",),
  "legs": ("{s} has {v} legs .",),
  "friend": ("{s} is friends with {v} .", "{s} and {v} are friends ."),
  "region": ("{s} is in the {v} .", "{s} is a town in the {v} ."),
}


def render_fact(fact: Fact, rng: random.Random | None = None) -> str:
  """One sentence stating a fact (the first template without rng)."""
  templates = _FACT_TEMPLATES[fact.attr]
  template = templates[0] if rng is None else rng.choice(templates)
  return template.format(s=fact.subject, v=fact.value, a=article(fact.value))


def describe(subject: str, facts: dict[str, str], rng: random.Random) -> str:
  """One sentence combining several facts about one animal (kind must be among them)."""
  adjs = " ".join(facts[a] for a in ("size", "color") if a in facts)
  noun = f"{adjs} {facts['kind']}" if adjs else facts["kind"]
  head = f"{subject} is {article(noun)} {noun}"
  tails = []
  if "home" in facts:
    tails.append(rng.choice(("from {v}", "that lives in {v}")).format(v=facts["home"]))
  if "food" in facts:
    tails.append(f"that eats {facts['food']}")
  if "age" in facts:
    tails.append(f"that is {facts['age']} years old")
  if "friend" in facts:
    tails.append(f"and a friend of {facts['friend']}")
  return " ".join([head, *tails]) + " ."


def make_names(rng: random.Random, n: int, reserved: set[str]) -> list[str]:
  """``n`` distinct pronounceable names (``tami``, ``boril``) outside ``reserved``."""
  names: list[str] = []
  seen = set(reserved)
  while len(names) < n:
    name = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(2))
    if rng.random() < 0.3:
      name += rng.choice("lmnr")
    if name not in seen:
      seen.add(name)
      names.append(name)
  return names


class Atlas:
  """The entities and towns of one seed, the lexicon of their words, and what is true of them.

  ``reserved`` are extra words that never become names (a world's template words);
  ``namespace`` seeds the random streams (the same seed and arguments give the same atlas)."""

  def __init__(
    self,
    seed: int = 0,
    n_entities: int = 96,
    n_towns: int = 10,
    reserved: Iterable[str] = (),
    namespace: str = "instructgpt-world",
  ) -> None:
    self.seed = seed
    self._namespace = namespace
    self._build_entities(n_entities, n_towns, frozenset(reserved))
    self._lexicon = self._build_lexicon()

  def _rng(self, purpose: str) -> random.Random:
    return random.Random(f"{self._namespace}/{self.seed}/{purpose}")

  def _build_entities(self, n_entities: int, n_towns: int, reserved: frozenset[str]) -> None:
    rng = self._rng("entities")
    prefixes = rng.sample(TOWN_PREFIXES, n_towns)
    self.towns: dict[str, str] = {
      p + rng.choice(TOWN_SUFFIXES): REGIONS[i % len(REGIONS)] for i, p in enumerate(prefixes)
    }
    town_names = list(self.towns)
    names = make_names(rng, n_entities + 400, reserved={*self._reserved_words(), *reserved})
    self.fresh_names: tuple[str, ...] = tuple(names[n_entities:])
    names = names[:n_entities]
    order = list(range(n_entities))
    rng.shuffle(order)
    friends = {}
    for a, b in zip(order[0::2], order[1::2]):
      friends[names[a]], friends[names[b]] = names[b], names[a]
    homes = [town_names[i % n_towns] for i in range(n_entities)]
    rng.shuffle(homes)
    kinds = sorted(KINDS)
    self.entities: dict[str, Entity] = {}
    for i, name in enumerate(names):
      kind = rng.choice(kinds)
      self.entities[name] = Entity(
        name=name,
        kind=kind,
        color=rng.choice(COLORS),
        size=rng.choice(SIZES),
        home=homes[i],
        food=rng.choice(FOODS),
        age=rng.randint(1, 15),
        legs=KINDS[kind][1],
        friend=friends.get(name, names[(i + 1) % n_entities]),
      )
    self.names = tuple(names)

  @staticmethod
  def _reserved_words() -> Iterable[str]:
    yield from KINDS
    yield from (p for _, _, p in KINDS.values())
    yield from CLASSES
    yield from CLASSES.values()
    yield from COLORS
    yield from FOODS
    yield from SIZES
    yield from REGIONS
    yield from NUMBER_WORDS
    yield from TOWN_PREFIXES

  def _build_lexicon(self) -> dict[str, tuple[str, str]]:
    lex: dict[str, tuple[str, str]] = {}
    for kind, (_, _, plural) in KINDS.items():
      lex[kind] = lex[plural] = ("kind", kind)
    for cls_, plural in CLASSES.items():
      lex[cls_] = lex[plural] = ("class", cls_)
    lex.update({c: ("color", c) for c in COLORS})
    lex.update({f: ("food", f) for f in FOODS})
    lex.update({s: ("size", s) for s in SIZES})
    lex.update({r: ("region", r) for r in REGIONS})
    lex.update({t: ("town", t) for t in self.towns})
    lex.update({n: ("name", n) for n in self.names})
    lex.update({n: ("name", n) for n in self.fresh_names})
    lex.update({w: ("number", str(i)) for w, i in NUMBER_WORDS.items()})
    return lex

  def true_value(self, subject: str, attr: str) -> str | None:
    """The world's value of ``attr`` for an animal or a town (None when it has none)."""
    if subject in self.towns:
      return self.towns[subject] if attr == "region" else None
    ent = self.entities.get(subject)
    if ent is None:
      return None
    if attr == "class":
      return KINDS[ent.kind][0]
    if attr == "region":
      return self.towns[ent.home]
    if attr in ATTRS:
      return ent.value(attr)
    return None

  def check(self, claim: Claim) -> bool | None:
    """True/False for a claim the world can verify, None when it cannot."""
    truth = self.true_value(claim.subject, claim.attr)
    return None if truth is None else truth == claim.value

  def entity_facts(self, name: str) -> list[Fact]:
    """All facts about one animal."""
    ent = self.entities[name]
    return [Fact(name, a, ent.value(a)) for a in ATTRS]

  def other_value(self, word: str, rng: random.Random) -> str:
    """Another value of the same type as ``word`` (a slip or a false statement), case kept."""
    upper = word.isupper()
    low = word.lower()
    if low in ("true", "false"):
      new = "false" if low == "true" else "true"
    elif low.isdigit():
      new = str(max(0, int(low) + rng.choice((-2, -1, 1, 2))))
    else:
      typ, _ = self._lexicon[low]
      pool = {
        "kind": list(KINDS),
        "class": list(CLASSES),
        "color": COLORS,
        "food": FOODS,
        "size": SIZES,
        "region": REGIONS,
        "town": list(self.towns),
        "name": self.names,
        "number": list(NUMBER_WORDS),
      }[typ]
      new = rng.choice([v for v in pool if v != low])
    return new.upper() if upper else new

  def claims(
    self, low: Sequence[str], default_subject: str = "", default_attr: str = ""
  ) -> list[Claim]:
    """Statements made by a lowercased token list (keyword-based parser of the world's language)."""
    out: list[Claim] = []
    prev_subjects = [default_subject] if default_subject else []
    for clause in split_clauses(low):
      subjects, objects, values = [], [], []
      leading = True
      for pos, w in enumerate(clause):
        typ = self._lexicon.get(w, (None, None))[0]
        if typ == "name" or (
          typ == "town" and pos == 0 and len(clause) > 1 and default_attr != "home"
        ):
          (subjects if leading else objects).append(w)
        elif w in (",", "and") and subjects and leading:
          continue
        else:
          if subjects:
            leading = False
          if typ is not None or w.isdigit():
            values.append(w)
      friend_kw = "friend" in clause or "friends" in clause
      if default_attr == "friend" and subjects and default_subject not in subjects and not objects:
        objects, subjects = subjects, [default_subject]
      if not subjects:
        subjects = prev_subjects
      if friend_kw or default_attr == "friend":
        targets = objects or subjects[1:]
        out.extend(Claim(subjects[0], "friend", o) for o in targets if subjects)
      for s in subjects:
        for w in values:
          claim = self._value_claim(s, w, clause, default_attr)
          if claim is not None:
            out.append(claim)
      prev_subjects = subjects[:1] if subjects else prev_subjects
    return out

  def _value_claim(
    self, subject: str, word: str, clause: Sequence[str], default_attr: str
  ) -> Claim | None:
    if word.isdigit() or self._lexicon.get(word, ("",))[0] == "number":
      value = word if word.isdigit() else self._lexicon[word][1]
      if "legs" in clause:
        return Claim(subject, "legs", value)
      if "years" in clause or "old" in clause:
        return Claim(subject, "age", value)
      return Claim(subject, default_attr if default_attr in ("age", "legs") else "number", value)
    typ, value = self._lexicon[word]
    if typ == "town":
      return None if subject in self.towns else Claim(subject, "home", value)
    if typ == "name":
      return None
    return Claim(subject, typ, value)
