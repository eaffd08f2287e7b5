"""The built-in task world: a small procedurally generated world that makes InstructGPT runnable on a CPU.

Everything here is pure Python and deterministic from one integer seed.

**The world.** ~96 named animals (``tam``, ``bori``, ...) with a kind (fox, owl, ...), colour, size,
home town, food, age, number of legs (from the kind) and one friend; ~10 towns, each in a region.

**Language.** Lowercase words, digits, punctuation as separate tokens: ``"tami is a red fox ."``.
Responses to ``caps`` instructions are upper case.

**Prompts.** Every prompt ends with the cue :data:`ANSWER_CUE` (``"answer :"``); the model is trained to
generate ``" " + response + EOS`` after it.  Passage tasks start with ``"text : <passage>"`` followed
by the instruction, so near-duplicates that reuse a passage share a long prefix.  Examples::

    what does tami eat ? use one word . answer :                                  -> berries .
    text : pimo is a blue owl . pimo eats seeds . question : where does pimo live ? answer :
                                                                                  -> the text does not say .
    name three animals that live in oakvale . write them as a list . answer :    -> tami ; bori ; kelu .

Categories (the paper's use cases): generation, open_qa, closed_qa, brainstorming, rewriting,
summarization, classification, extraction.  Explicit constraints: ``caps`` ("use capital letters ."),
``max_words`` ("use at most N words ."), ``one_word``, ``list`` (items separated by " ; "),
``n_sentences`` ("write N sentences"), ``one_sentence`` (summaries).

**Pretraining corpus.** Paragraphs of plain statements of the world's facts; it never contains the
cue, a question mark, or an instruction, so a base model learns the world but not to follow orders.

**Prompt pools and files.** :meth:`World.from_seed` builds a training pool (training users) and an
evaluation pool (held-out users, prompt texts disjoint from the training pool); the world keeps a dict
prompt text -> :class:`TaskSpec`, so any prompt of the written files can be scored after rebuilding
the world from the seed (:meth:`World.from_dir` reads the seed and pool sizes from ``world.json``).
:func:`write_world` writes consecutive slices of the training pool: ``demonstrations.jsonl``,
``prompts.jsonl`` (PPO) and a separate ``rm_prompts.jsonl`` (prompts whose policy samples are ranked
by the simulated labelers to make comparisons), plus ``eval_prompts.jsonl`` from the evaluation pool,
``pretrain.jsonl`` and ``world.json``.  Default sizes (:class:`WorldSizes`): 50k pretraining sentences
(~300k words), 1500 demonstrations, 2000 PPO prompts, 600 RM prompts, 300 eval prompts, from pools of
6000/600; ``World.from_seed(seed, scale=0.25)`` scales every count (generation takes about a second).  Prompt texts are unique across all files; users follow a
skewed distribution (a couple submit more than 200 prompts), and ~3 % of passage prompts have a
near-duplicate sibling from the same user that shares the passage.

**Gold score** (:meth:`World.gold_score`, in [0, 1]): ``content * (0.65 + 0.35 * constraint_frac)``,
halved for closed-domain hallucination (closed QA, summarization, extraction, rewriting: any name,
value or word not supported by the prompt), halved for bad termination (a repeated sentence/item,
prompt-like text, a rambling length or a truncated ending), times a mild verbosity factor (>= 0.7).
Content gives partial credit (e.g. a wrong value of the right type gets 0.1; false extra claims cost).

**Demonstrations** are written by simulated contractors from correct answers with varied phrasing;
by default 15 % are wordy (a filler phrase) and 6.5 % contain a slip (a wrong value, or a missed
constraint) — realistic noise, nothing broken on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

ANSWER_CUE = "answer :"
CATEGORIES: tuple[str, ...] = (
  "generation",
  "open_qa",
  "closed_qa",
  "brainstorming",
  "rewriting",
  "summarization",
  "classification",
  "extraction",
)
CLOSED_DOMAIN = frozenset({"closed_qa", "summarization", "extraction", "rewriting"})
CATEGORY_WEIGHTS = {
  "generation": 0.14,
  "open_qa": 0.16,
  "closed_qa": 0.14,
  "brainstorming": 0.11,
  "rewriting": 0.11,
  "summarization": 0.12,
  "classification": 0.10,
  "extraction": 0.12,
}

# ----------------------------------------------------------------------------------------------
# Lexicon
# ----------------------------------------------------------------------------------------------

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
NOT_SAID = "the text does not say ."
ATTRS = ("kind", "color", "size", "home", "food", "age", "legs", "friend")
# Words that belong to instructions, never to answers: a response containing one is rambling on.
PROMPT_MARKERS = frozenset(
  {"answer", "question", "summarize", "rewrite", "write", "list", "find", "use", "name"}
)
WORDY_PREFIXES = (
  "sure ,",
  "ok ,",
  "well ,",
  "let me see ,",
  "i think",
  "here you go :",
  "of course ,",
)
WORDY_SUFFIXES = (
  "i hope this helps .",
  "that is all .",
  "thank you for asking .",
  "have a nice day .",
)
# Words of the templates: never used as names.
_TEMPLATE_WORDS = frozenset(
  """
write sentences about short text that says where it lives and what eats who its friend is how old color
name animals live in eat towns the rewrite this sentence capital letters past tense instead of question
summarize one find all names numbers true or false a big small does not say yesterday ate was born like
every has legs are no animal friends years from likes to part land which town kind use at most words
them as list sure ok well let me see i think here you go course hope helps thank for asking have nice
day lived had were liked more home same side made game gave make take came some none done gone note
""".split()
)

_TOKEN_RE = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")
_TERMINAL = frozenset({".", "!", "?", ";"})


def tokenize(text: str) -> list[str]:
  """Split text into words, digit runs and single punctuation marks (case kept)."""
  return _TOKEN_RE.findall(text)


def normalize(text: str) -> str:
  """Whitespace/punctuation-spacing normal form of a text (case kept)."""
  return " ".join(tokenize(text))


def count_words(tokens: Sequence[str]) -> int:
  """Number of alphanumeric tokens."""
  return sum(1 for t in tokens if t[0].isalnum())


# ----------------------------------------------------------------------------------------------
# World objects
# ----------------------------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Everything the scorer needs to know about one prompt."""

  prompt: str
  category: str
  task: str  # sub-type, e.g. "attr_question", "truefalse", "past_tense"
  user_id: str
  reference: str  # one correct answer (the longest phrasing; sets the verbosity budget)
  variants: tuple[str, ...]  # correct answers in varied phrasing, constraints applied
  subject: str = ""
  attr: str = ""
  answer: str = ""  # expected value; "" for "the text does not say"
  options: tuple[str, ...] = ()  # classification labels
  items: frozenset[str] = frozenset()  # brainstorm: all valid items; extraction: the gold set
  item_type: str = ""  # "name" | "town" | "number"
  k: int = 0  # number of items / sentences / facts requested
  required: tuple[str, ...] = ()  # generation: attributes that must be mentioned
  passage: tuple[Fact, ...] = ()  # closed-domain support
  passage_text: str = ""
  source: str = ""  # rewriting source sentence
  target: str = ""  # rewriting target sentence
  constraints: tuple[tuple[str, int], ...] = ()

  @property
  def constraint_dict(self) -> dict[str, int]:
    """Constraints as a dict name -> parameter."""
    return dict(self.constraints)


@dataclasses.dataclass(frozen=True)
class WorldSizes:
  """How much :func:`write_world` writes.  Pools are what :meth:`World.from_seed` generates."""

  n_pretrain_sentences: int = 50000
  n_demos: int = 1500
  n_ppo: int = 2000
  n_rm: int = 2400
  n_eval: int = 300
  train_pool: int = 8000
  eval_pool: int = 600
  wordy_rate: float = 0.15
  slip_rate: float = 0.065

  def scaled(self, scale: float) -> WorldSizes:
    """Every count times ``scale`` (at least 1); the noise rates stay."""
    counts = {
      f.name: max(1, round(getattr(self, f.name) * scale))
      for f in dataclasses.fields(self)
      if f.name.startswith(("n_", "train_", "eval_"))
    }
    return dataclasses.replace(self, **counts)


@dataclasses.dataclass
class Claim:
  """A statement parsed from a response."""

  subject: str
  attr: str
  value: str


# ----------------------------------------------------------------------------------------------
# Rendering facts as sentences
# ----------------------------------------------------------------------------------------------

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
  return template.format(s=fact.subject, v=fact.value, a=_article(fact.value))


def _describe(subject: str, facts: dict[str, str], rng: random.Random) -> str:
  """One sentence combining several facts about one animal (kind must be among them)."""
  adjs = " ".join(facts[a] for a in ("size", "color") if a in facts)
  noun = f"{adjs} {facts['kind']}" if adjs else facts["kind"]
  head = f"{subject} is {_article(noun)} {noun}"
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


# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------


class World:
  """Entities, towns, the prompt pools and the gold scorer, all from one seed."""

  def __init__(
    self, seed: int = 0, sizes: WorldSizes | None = None, n_entities: int = 96, n_towns: int = 10
  ) -> None:
    self.seed = seed
    self.sizes = sizes or WorldSizes()
    self._build_entities(n_entities, n_towns)
    self._lexicon = self._build_lexicon()
    self.tasks: dict[str, TaskSpec] = {}
    self.train_pool = self._build_pool("train", self.sizes.train_pool, _user_ids(0, 400))
    self.eval_pool = self._build_pool("eval", self.sizes.eval_pool, _user_ids(5000, 60))
    self._known_words = self._build_known_words()

  # --- construction ---------------------------------------------------------------------

  @classmethod
  def from_seed(cls, seed: int = 0, sizes: WorldSizes | None = None, scale: float = 1.0) -> World:
    """The world of ``seed``; ``sizes`` (default :class:`WorldSizes`) times ``scale`` set how much
    :func:`write_world` writes and how large the prompt pools are.  The entities do not change
    with the sizes, and a smaller training pool is a prefix of a larger one."""
    return cls(seed, (sizes or WorldSizes()).scaled(scale) if scale != 1.0 else sizes)

  @classmethod
  def from_dir(cls, out_dir: str) -> World:
    """Rebuild the world that :func:`write_world` wrote into ``out_dir`` (reads world.json)."""
    with open(os.path.join(out_dir, "world.json")) as f:
      meta = json.load(f)
    return cls(int(meta["seed"]), WorldSizes(**meta["sizes"]))

  def _rng(self, purpose: str) -> random.Random:
    return random.Random(f"instructgpt-world/{self.seed}/{purpose}")

  def _build_entities(self, n_entities: int, n_towns: int) -> None:
    rng = self._rng("entities")
    prefixes = rng.sample(TOWN_PREFIXES, n_towns)
    self.towns: dict[str, str] = {
      p + rng.choice(TOWN_SUFFIXES): REGIONS[i % len(REGIONS)] for i, p in enumerate(prefixes)
    }
    town_names = list(self.towns)
    names = _make_names(rng, n_entities + 400, reserved=set(self._reserved_words()))
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
    yield from _TEMPLATE_WORDS

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

  def _build_known_words(self) -> frozenset[str]:
    """Every word the world's texts use; other words in a response are invented."""
    known = set(self._lexicon) | _TEMPLATE_WORDS
    for spec in [*self.train_pool, *self.eval_pool]:
      for text in (spec.prompt, *spec.variants):
        known.update(t.lower() for t in tokenize(text))
    for text in [*WORDY_PREFIXES, *WORDY_SUFFIXES, *self.pretraining_sentences(800, "lexicon")]:
      known.update(tokenize(text))
    return frozenset(w for w in known if w.isalpha())

  # --- lookup and truth --------------------------------------------------------------------

  def task(self, prompt: str) -> TaskSpec:
    """The task spec of a prompt generated by this world; KeyError with a clear message otherwise."""
    key = normalize(prompt)
    try:
      return self.tasks[key]
    except KeyError:
      raise KeyError(
        f"prompt not generated by the world of seed {self.seed} (pools {self.sizes.train_pool}/"
        f"{self.sizes.eval_pool}): {prompt[:80]!r}; rebuild it with World.from_dir(out_dir)"
      ) from None

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

  # --- prompt pools ------------------------------------------------------------------------

  def _build_pool(self, split: str, n: int, users: list[str]) -> list[TaskSpec]:
    rng = self._rng(f"pool/{split}")
    weights = _user_weights(len(users))
    cats = list(CATEGORY_WEIGHTS)
    cat_w = [CATEGORY_WEIGHTS[c] for c in cats]
    pool: list[TaskSpec] = []
    attempts = 0
    while len(pool) < n:
      attempts += 1
      if attempts > 50 * n:
        raise RuntimeError(f"could not generate {n} distinct {split} prompts")
      user = rng.choices(users, weights)[0]
      cat = rng.choices(cats, cat_w)[0]
      specs = _GENERATORS[cat](self, rng, user)
      if not specs or any(normalize(s.prompt) in self.tasks for s in specs):
        continue
      if len({normalize(s.prompt) for s in specs}) != len(specs):
        continue
      for spec in specs[: n - len(pool)]:
        self.tasks[normalize(spec.prompt)] = spec
        pool.append(spec)
    return pool

  # --- pretraining corpus ------------------------------------------------------------------

  def pretraining_sentences(self, n: int, purpose: str = "pretrain") -> list[str]:
    """``n`` plain sentences about the world (grouped into paragraphs by :meth:`pretraining_corpus`)."""
    return [s for p in self.pretraining_corpus(n, purpose) for s in _split_sentences(p)][:n]

  def pretraining_corpus(self, n_sentences: int, purpose: str = "pretrain") -> list[str]:
    """Paragraphs of plain statements (no instructions, no questions, no answer cue)."""
    rng = self._rng(purpose)
    makers: list[tuple[Callable[[random.Random], list[str]], float]] = [
      (self._entity_paragraph, 0.70),
      (self._town_paragraph, 0.12),
      (self._kind_paragraph, 0.08),
      (self._group_paragraph, 0.10),
    ]
    fns, ws = zip(*makers)
    paragraphs, count = [], 0
    while count < n_sentences:
      sents = rng.choices(fns, ws)[0](rng)
      if rng.random() < 0.04:
        i = rng.randrange(len(sents))
        sents[i] = sents[i].upper()
      paragraphs.append(" ".join(sents))
      count += len(sents)
    return paragraphs

  def _entity_paragraph(self, rng: random.Random) -> list[str]:
    ent = self.entities[rng.choice(self.names)]
    facts = self.entity_facts(ent.name)
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

  def _town_paragraph(self, rng: random.Random) -> list[str]:
    town = rng.choice(list(self.towns))
    residents = [e.name for e in self.entities.values() if e.home == town]
    rng.shuffle(residents)
    k = min(len(residents), rng.randint(2, 4))
    sents = [
      render_fact(Fact(town, "region", self.towns[town]), rng),
      f"{_join_and(residents[:k])} live in {town} .",
    ]
    if rng.random() < 0.5:
      sents.append(f"{len(residents)} animals live in {town} .")
    return sents

  def _kind_paragraph(self, rng: random.Random) -> list[str]:
    kind = rng.choice(sorted(KINDS))
    cls_, legs, plural = KINDS[kind]
    sents = [f"{_article(kind)} {kind} is a {cls_} .", f"{_article(kind)} {kind} has {legs} legs ."]
    members = [e.name for e in self.entities.values() if e.kind == kind]
    if len(members) >= 2:
      rng.shuffle(members)
      sents.append(f"{_join_and(members[:3])} are {plural} .")
    return sents

  def _group_paragraph(self, rng: random.Random) -> list[str]:
    attr = rng.choice(("color", "food", "size"))
    value = rng.choice({"color": COLORS, "food": FOODS, "size": SIZES}[attr])
    members = [e.name for e in self.entities.values() if e.value(attr) == value]
    rng.shuffle(members)
    if len(members) < 2:
      return [f"no animal is {value} ."] if attr != "food" else [f"no animal eats {value} ."]
    group = _join_and(members[: rng.randint(2, 3)])
    verb = {"color": f"are {value}", "food": f"eat {value}", "size": f"are {value}"}[attr]
    return [f"{group} {verb} ."]

  # --- demonstrations ---------------------------------------------------------------------

  def demonstration(self, spec: TaskSpec, rng: random.Random) -> str:
    """One contractor's answer: a correct phrasing, sometimes wordy, sometimes with a slip."""
    response = rng.choice(spec.variants)
    if rng.random() < self.sizes.slip_rate:
      response = self._slip(spec, response, rng)
    if rng.random() < self.sizes.wordy_rate:
      if rng.random() < 0.6:
        response = f"{rng.choice(WORDY_PREFIXES)} {response}"
      else:
        response = f"{response} {rng.choice(WORDY_SUFFIXES)}"
      if "caps" in spec.constraint_dict:
        response = response.upper()
    return response

  def _slip(self, spec: TaskSpec, response: str, rng: random.Random) -> str:
    """A realistic mistake: a missed constraint, or one wrong/added/dropped value."""
    cons = spec.constraint_dict
    if cons and rng.random() < 0.5:
      if "caps" in cons:
        return response.lower()
      if "list" in cons:
        return response.replace(" ; ", " , ")
      if "one_word" in cons or "max_words" in cons:
        longest = max(_uncapped_variants(self, spec), key=lambda v: len(v.split()))
        return longest.upper() if "caps" in cons else longest
      if "n_sentences" in cons or "one_sentence" in cons:
        return f"{response} {render_fact(rng.choice(self.entity_facts(spec.subject)), rng)}"
    if spec.task == "unanswerable":  # answers from memory instead of from the text
      value = self.true_value(spec.subject, spec.attr) or self._other_value(
        rng.choice(COLORS) if spec.attr == "color" else "5" if spec.attr == "age" else "fish", rng
      )
      return render_fact(Fact(spec.subject, spec.attr, value), rng)
    tokens = response.split()
    slots = [
      i
      for i, t in enumerate(tokens)
      if t.lower() in self._lexicon or t.isdigit() or t.lower() in ("true", "false")
    ]
    if not slots:
      return response
    i = rng.choice(slots)
    tokens[i] = self._other_value(tokens[i], rng)
    return " ".join(tokens)

  def _other_value(self, word: str, rng: random.Random) -> str:
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

  # --- scoring ----------------------------------------------------------------------------

  def analyze(self, prompt: str, response: str) -> dict:
    """Diagnostics of one response: content, constraints, hallucination, termination, score."""
    spec = self.task(prompt)
    tokens = tokenize(response)
    low = [t.lower() for t in tokens]
    n_words = count_words(tokens)
    result = {"category": spec.category, "n_words": n_words}
    if n_words == 0:
      result.update(
        correct=False,
        content=0.0,
        constraint_ok=False if spec.constraints else None,
        constraint_frac=0.0 if spec.constraints else None,
        hallucinated=False if spec.category in CLOSED_DOMAIN else None,
        terminated=False,
        verbosity=1.0,
        score=0.0,
      )
      return result
    content = _CONTENT[spec.category](self, spec, tokens, low)
    cons = self._constraints(spec, tokens, low)
    halluc = self._hallucinated(spec, low) if spec.category in CLOSED_DOMAIN else None
    terminated = self._terminated(spec, tokens, low, n_words)
    ref_words = count_words(tokenize(spec.reference))
    excess = n_words - (ref_words + 2)
    verbosity = max(0.7, 1.0 - 0.03 * excess) if excess > 0 else 1.0
    score = content * (0.65 + 0.35 * cons if cons is not None else 1.0)
    score *= (0.5 if halluc else 1.0) * (1.0 if terminated else 0.5) * verbosity
    result.update(
      correct=content >= 0.95,
      content=content,
      constraint_ok=None if cons is None else cons >= 1.0,
      constraint_frac=cons,
      hallucinated=halluc,
      terminated=terminated,
      verbosity=verbosity,
      score=float(min(1.0, max(0.0, score))),
    )
    return result

  def gold_score(self, prompt: str, response: str) -> float:
    """The gold score of a response in [0, 1] (see the module docstring)."""
    return self.analyze(prompt, response)["score"]

  def claims(
    self, low: Sequence[str], default_subject: str = "", default_attr: str = ""
  ) -> list[Claim]:
    """Statements made by a lowercased token list (keyword-based parser of the world's language)."""
    out: list[Claim] = []
    prev_subjects = [default_subject] if default_subject else []
    for clause in _split_clauses(low):
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

  def _content_words(self, low: Sequence[str]) -> list[str]:
    """Names, towns, values, numbers and unknown words of a response (what can be invented)."""
    out = []
    for w in low:
      if w.isdigit() or (w.isalpha() and (w in self._lexicon or w not in self._known_words)):
        if w not in ("true", "false"):
          out.append(w)
    return out

  def _hallucinated(self, spec: TaskSpec, low: Sequence[str]) -> bool:
    allowed = {t.lower() for t in tokenize(spec.prompt)}
    for w in self._content_words(low):
      if w not in allowed and self._lexicon.get(w, ("",))[0] not in ("class",):
        return True
    if spec.category in ("closed_qa", "summarization"):
      support = {(f.subject, f.attr, f.value) for f in spec.passage}
      default = spec.subject
      for c in self.claims(low, default, spec.attr):
        if c.attr in ("class", "number", "region"):
          continue
        if (c.subject, c.attr, c.value) not in support and (
          c.value,
          c.attr,
          c.subject,
        ) not in support:
          return True
    return False

  def _terminated(
    self, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str], n_words: int
  ) -> bool:
    clauses = [" ".join(c) for c in _split_clauses(low) if c]
    if len(clauses) != len(set(clauses)):
      return False
    grams = [tuple(low[i : i + 5]) for i in range(len(low) - 4)]
    if len(grams) != len(set(grams)):
      return False
    if any(w in PROMPT_MARKERS for w in low) or ("text" in low and ":" in low):
      return False
    if n_words > 2 * count_words(tokenize(spec.reference)) + 8:
      return False
    return tokens[-1] in _TERMINAL or n_words <= 3

  def _constraints(self, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]) -> float | None:
    cons = spec.constraint_dict
    if not cons:
      return None
    words = [t for t in tokens if t[0].isalnum()]
    oks = []
    for name, param in cons.items():
      if name == "caps":
        oks.append(_all_caps(tokens))
      elif name == "max_words":
        oks.append(len(words) <= param)
      elif name == "one_word":
        oks.append(len(words) == 1)
      elif name == "list":
        n_items = len(self._items(spec, low))
        oks.append(
          n_items >= 1
          and "," not in low
          and "and" not in low
          and (n_items == 1 or low.count(";") >= n_items - 1)
        )
      elif name == "n_sentences":
        oks.append(_n_sentences(low) == param)
      elif name == "one_sentence":
        oks.append(_n_sentences(low) == 1)
    return sum(oks) / len(oks)

  def _items(self, spec: TaskSpec, low: Sequence[str]) -> list[str]:
    """Items named in a response, of the spec's item type (unknown words count as invented names)."""
    out = []
    for w in low:
      typ = self._lexicon.get(w, ("",))[0]
      if spec.item_type == "number" and (w.isdigit() or typ == "number"):
        out.append(w if w.isdigit() else self._lexicon[w][1])
      elif spec.item_type == "town" and typ == "town":
        out.append(w)
      elif spec.item_type == "name" and (
        typ == "name" or (w.isalpha() and w not in self._known_words)
      ):
        out.append(w)
    return out


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _user_ids(start: int, n: int) -> list[str]:
  return [f"user_{i:04d}" for i in range(start, start + n)]


def _user_weights(n: int) -> list[float]:
  """Skewed prompts-per-user: 60 % uniform, 40 % Zipf, so the top users exceed 200 prompts."""
  zipf = [1.0 / (i + 1) for i in range(n)]
  z = sum(zipf)
  return [0.6 / n + 0.4 * w / z for w in zipf]


def _make_names(rng: random.Random, n: int, reserved: set[str]) -> list[str]:
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


def _join_and(items: Sequence[str]) -> str:
  return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]


def _split_sentences(text: str) -> list[str]:
  return [s.strip() + " ." for s in text.split(" .") if s.strip()]


def _split_clauses(low: Sequence[str]) -> list[list[str]]:
  clauses, cur = [], []
  for t in low:
    if t in _TERMINAL:
      if cur:
        clauses.append(cur)
      cur = []
    else:
      cur.append(t)
  if cur:
    clauses.append(cur)
  return clauses


def _n_sentences(low: Sequence[str]) -> int:
  return sum(
    1 for c in _split_clauses([t for t in low if t != ";"]) if any(w[0].isalnum() for w in c)
  )


def _all_caps(tokens: Sequence[str]) -> bool:
  """No lower-case letter (digits alone count as capitals)."""
  return not any(c.islower() for t in tokens for c in t)


def _article(word: str) -> str:
  return "an" if word[0] in VOWELS else "a"


def _f1(pred: Sequence[str], gold: Sequence[str]) -> float:
  common = sum((Counter(pred) & Counter(gold)).values())
  if common == 0:
    return 0.0
  p, r = common / len(pred), common / len(gold)
  return 2 * p * r / (p + r)


# ----------------------------------------------------------------------------------------------
# Task generators: each returns a list of specs (a passage task sometimes adds a near-duplicate)
# ----------------------------------------------------------------------------------------------

_QUESTIONS: dict[str, tuple[str, ...]] = {
  "kind": ("what kind of animal is {s} ?", "what animal is {s} ?"),
  "color": ("what color is {s} ?",),
  "size": ("how big is {s} ?",),
  "home": ("where does {s} live ?", "in which town does {s} live ?"),
  "food": ("what does {s} eat ?", "what food does {s} like ?"),
  "age": ("how old is {s} ?",),
  "legs": ("how many legs does {s} have ?",),
  "friend": ("who is the friend of {s} ?", "who is {s} friends with ?"),
  "region": ("in which part of the land is {s} ?",),
}
_SHORT_ANSWERS: dict[str, tuple[str, ...]] = {
  "kind": ("{a} {v} .", "{v} ."),
  "color": ("{v} .",),
  "size": ("{v} .",),
  "home": ("{v} .", "in {v} ."),
  "food": ("{v} .",),
  "age": ("{v} years old .", "{v} ."),
  "legs": ("{v} legs .", "{v} ."),
  "friend": ("{v} .",),
  "region": ("the {v} .", "{v} ."),
}
_CONSTRAINT_TEXT = {
  "caps": "use capital letters .",
  "max_words": "use at most {p} words .",
  "one_word": "use one word .",
  "list": "write them as a list .",
}


def _prompt(parts: Iterable[str]) -> str:
  return " ".join(p for p in parts if p) + " " + ANSWER_CUE


def _constraint_phrases(constraints: Sequence[tuple[str, int]]) -> list[str]:
  return [_CONSTRAINT_TEXT[n].format(p=p) for n, p in constraints if n in _CONSTRAINT_TEXT]


def _apply_constraints(
  variants: Sequence[str], constraints: Sequence[tuple[str, int]]
) -> tuple[str, ...] | None:
  """Keep the phrasings that satisfy the constraints (upper-case them for caps); None if none do."""
  cons = dict(constraints)
  out = []
  for v in variants:
    n = count_words(tokenize(v))
    if "max_words" in cons and n > cons["max_words"]:
      continue
    if "one_word" in cons and n != 1:
      continue
    out.append(v.upper() if "caps" in cons else v)
  return tuple(dict.fromkeys(out)) or None


def _uncapped_variants(world: World, spec: TaskSpec) -> list[str]:
  """The spec's correct answers before length constraints (for the 'missed length' slip)."""
  if spec.category in ("open_qa", "closed_qa") and spec.answer:
    return _qa_variants(spec.subject, spec.attr, spec.answer)
  return list(spec.variants)


def _qa_variants(subject: str, attr: str, value: str) -> list[str]:
  full = render_fact(Fact(subject, attr, value))
  return [full, *(t.format(v=value, a=_article(value)) for t in _SHORT_ANSWERS[attr]), f"{value} ."]


def _make_spec(
  world: World,
  user: str,
  category: str,
  task: str,
  prompt_parts: Sequence[str],
  variants: Sequence[str],
  constraints: Sequence[tuple[str, int]] = (),
  **fields,
) -> TaskSpec | None:
  kept = _apply_constraints(variants, constraints)
  if kept is None:
    return None
  prompt = _prompt([*prompt_parts, *_constraint_phrases(constraints)])
  if count_words(tokenize(prompt)) > 30 or len(tokenize(prompt)) > 42:
    return None
  reference = max(kept, key=lambda v: (count_words(tokenize(v)), v))
  return TaskSpec(
    prompt=prompt,
    category=category,
    task=task,
    user_id=user,
    reference=reference,
    variants=kept,
    constraints=tuple(constraints),
    **fields,
  )


def _short_constraint(rng: random.Random, allow_caps: bool = True) -> list[tuple[str, int]]:
  r = rng.random()
  if r < 0.15 and allow_caps:
    return [("caps", 1)]
  if r < 0.30:
    return [("one_word", 1)]
  if r < 0.45:
    return [("max_words", rng.randint(2, 3))]
  return []


def gen_open_qa(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """Questions about the world's facts, answered from knowledge."""
  if rng.random() < 0.08:
    subject, attr = rng.choice(list(world.towns)), "region"
  else:
    subject, attr = rng.choice(world.names), rng.choice(ATTRS)
  value = world.true_value(subject, attr)
  question = rng.choice(_QUESTIONS[attr]).format(s=subject)
  spec = _make_spec(
    world,
    user,
    "open_qa",
    "attr_question",
    [question],
    _qa_variants(subject, attr, value),
    _short_constraint(rng),
    subject=subject,
    attr=attr,
    answer=value,
  )
  return [spec] if spec else []


def gen_classification(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """True/false judgements of statements, and choosing a class or a size among given options."""
  name = rng.choice(world.names)
  ent = world.entities[name]
  cons = _short_constraint(rng)
  cons = [c for c in cons if c[0] != "max_words"]
  r = rng.random()
  if r < 0.45:
    attr = rng.choice(("kind", "color", "home", "food", "age", "legs", "friend"))
    fact = Fact(name, attr, ent.value(attr))
    truth = rng.random() < 0.5
    if not truth:
      fact = Fact(name, attr, world._other_value(fact.value, rng))
      if fact.value == ent.value(attr):
        return []
    label = "true" if truth else "false"
    return _nonempty(
      _make_spec(
        world,
        user,
        "classification",
        "truefalse",
        ["true or false :", render_fact(fact, rng)],
        [f"{label} .", f"that is {label} ."],
        cons,
        subject=name,
        attr=attr,
        answer=label,
        options=("true", "false"),
      )
    )
  if r < 0.75:
    true_cls = KINDS[ent.kind][0]
    others = rng.sample([c for c in CLASSES if c != true_cls], rng.randint(1, 2))
    options = [true_cls, *others]
    rng.shuffle(options)
    question = f"is {name} " + _join_or([f"a {o}" for o in options]) + " ?"
    variants = [f"{name} is a {true_cls} .", f"a {true_cls} .", f"{true_cls} ."]
    return _nonempty(
      _make_spec(
        world,
        user,
        "classification",
        "class",
        [question],
        variants,
        cons,
        subject=name,
        attr="class",
        answer=true_cls,
        options=tuple(options),
      )
    )
  options = list(SIZES) if rng.random() < 0.5 else list(reversed(SIZES))
  question = f"is {name} {options[0]} or {options[1]} ?"
  variants = [f"{name} is {ent.size} .", f"{ent.size} ."]
  return _nonempty(
    _make_spec(
      world,
      user,
      "classification",
      "size",
      [question],
      variants,
      cons,
      subject=name,
      attr="size",
      answer=ent.size,
      options=tuple(options),
    )
  )


def _join_or(items: Sequence[str]) -> str:
  return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " or " + items[-1]


def _nonempty(spec: TaskSpec | None) -> list[TaskSpec]:
  return [spec] if spec else []


def gen_generation(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """Short texts about an animal, sometimes with a sentence count, a word limit or required facts."""
  name = rng.choice(world.names)
  facts = {f.attr: f.value for f in world.entity_facts(name)}
  r = rng.random()
  constraints: list[tuple[str, int]] = []
  required: tuple[str, ...] = ()
  if r < 0.35:
    k = rng.randint(2, 3)
    parts, constraints, task = (
      [f"write {NUMBER_WORDS_INV[k]} sentences about {name} ."],
      [("n_sentences", k)],
      "n_sentences",
    )
  elif r < 0.65:
    k, parts, task = 3, [f"write a short text about {name} ."], "short_text"
    if rng.random() < 0.4:
      constraints = [("max_words", rng.randint(10, 13))]
  else:
    required = tuple(sorted(rng.sample(("home", "food", "friend", "age", "color"), 2)))
    k = 2
    what = {
      "home": "where it lives",
      "food": "what it eats",
      "friend": "who its friend is",
      "age": "how old it is",
      "color": "its color",
    }
    parts = [
      f"write a short text about {name} that says {what[required[0]]} and {what[required[1]]} ."
    ]
    task = "required_facts"
  variants = [_generation_text(name, facts, k, required, constraints, rng) for _ in range(6)]
  return _nonempty(
    _make_spec(
      world,
      user,
      "generation",
      task,
      parts,
      variants,
      constraints,
      subject=name,
      k=k,
      required=required,
    )
  )


NUMBER_WORDS_INV = {i: w for w, i in NUMBER_WORDS.items()}


def _generation_text(
  name: str,
  facts: dict[str, str],
  k: int,
  required: tuple[str, ...],
  constraints: Sequence[tuple[str, int]],
  rng: random.Random,
) -> str:
  """A correct short text about an animal: one describing sentence plus single-fact sentences."""
  cons = dict(constraints)
  others = [a for a in ("color", "size", "home", "food", "age", "friend") if a not in required]
  rng.shuffle(others)
  if "n_sentences" in cons:
    first = {"kind": facts["kind"]}
    if rng.random() < 0.5:
      extra = others.pop()
      first[extra] = facts[extra]
    rest = [render_fact(Fact(name, a, facts[a]), rng) for a in others[: cons["n_sentences"] - 1]]
    return " ".join([_describe(name, first, rng), *rest])
  chosen = list(required) or others[: k - 1]
  if "max_words" in cons:
    return _describe(name, {"kind": facts["kind"], **{a: facts[a] for a in chosen}}, rng)
  first = {"kind": facts["kind"]}
  if rng.random() < 0.5 and "color" not in chosen:
    first["color"] = facts["color"]
  rest = [render_fact(Fact(name, a, facts[a]), rng) for a in chosen]
  return " ".join([_describe(name, first, rng), *rest])


def gen_brainstorming(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """Name k animals (or towns) with a property; the list format is sometimes required."""
  k = rng.randint(2, 4)
  r = rng.random()
  ents = list(world.entities.values())
  if r < 0.25:
    town = rng.choice(list(world.towns))
    valid, ask, item_type = (
      [e.name for e in ents if e.home == town],
      f"animals that live in {town}",
      "name",
    )
  elif r < 0.45:
    color = rng.choice(COLORS)
    valid, ask, item_type = [e.name for e in ents if e.color == color], f"{color} animals", "name"
  elif r < 0.65:
    food = rng.choice(FOODS)
    valid, ask, item_type = (
      [e.name for e in ents if e.food == food],
      f"animals that eat {food}",
      "name",
    )
  elif r < 0.8:
    kind = rng.choice(sorted(KINDS))
    valid, ask, item_type = [e.name for e in ents if e.kind == kind], KINDS[kind][2], "name"
  elif r < 0.93:
    cls_ = rng.choice(sorted(CLASSES))
    valid, ask, item_type = (
      [e.name for e in ents if KINDS[e.kind][0] == cls_],
      CLASSES[cls_],
      "name",
    )
  else:
    region = rng.choice(REGIONS)
    valid, ask, item_type = (
      [t for t, r_ in world.towns.items() if r_ == region],
      f"towns in the {region}",
      "town",
    )
    k = min(k, 2)
  if len(valid) < k:
    return []
  constraints = [("list", 1)] if rng.random() < 0.3 else []
  variants = []
  for _ in range(6):
    picks = rng.sample(valid, k)
    variants.append(" ; ".join(picks) + " ." if constraints else _join_and(picks) + " .")
  return _nonempty(
    _make_spec(
      world,
      user,
      "brainstorming",
      "name_k",
      [f"name {NUMBER_WORDS_INV[k]} {ask} ."],
      variants,
      constraints,
      items=frozenset(valid),
      item_type=item_type,
      k=k,
    )
  )


def gen_rewriting(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """Rewrite a sentence in capital letters, in the past tense, or about another animal."""
  name = rng.choice(world.names)
  facts = {f.attr: f.value for f in world.entity_facts(name)}
  a1, a2 = rng.sample(["kind", "home", "food", "age", "legs", "friend"], 2)
  s1 = render_fact(Fact(name, a1, facts[a1]))[:-2]
  if rng.random() < 0.5 and a2 in ("home", "food", "legs"):
    verb = {"home": "lives in", "food": "eats", "legs": "has"}[a2]
    s1 += f" and {verb} {facts[a2]}" + (" legs" if a2 == "legs" else "")
  source = s1 + " ."
  op = rng.choice(("caps", "past", "swap"))
  constraints: list[tuple[str, int]] = []
  if op == "caps":
    if count_words(tokenize(source)) > 6:
      return []
    target, instruction, constraints = (
      source,
      "rewrite this sentence in capital letters :",
      [("caps", 1)],
    )
  elif op == "past":
    target = " ".join(PAST_TENSE.get(w, w) for w in source.split())
    instruction = "rewrite this sentence in the past tense :"
  else:
    other = rng.choice([n for n in world.names if n != name and n not in source.split()])
    target = " ".join(other if w == name else w for w in source.split())
    instruction = f"rewrite this sentence about {other} instead of {name} :"
  return _nonempty(
    _make_spec(
      world,
      user,
      "rewriting",
      op,
      [instruction, source],
      [target],
      constraints,
      subject=name,
      source=source,
      target=target,
    )
  )


def _passage_facts(world: World, rng: random.Random, name: str, n: int, fresh: bool) -> list[Fact]:
  """Kind plus n-1 other facts about a world animal (true ones) or a fresh animal (random ones)."""
  if not fresh:
    facts = world.entity_facts(name)
  else:
    kind = rng.choice(sorted(KINDS))
    values = {
      "kind": kind,
      "color": rng.choice(COLORS),
      "size": rng.choice(SIZES),
      "home": rng.choice(list(world.towns)),
      "food": rng.choice(FOODS),
      "age": str(rng.randint(1, 15)),
      "legs": str(KINDS[kind][1]),
      "friend": rng.choice(world.fresh_names),
    }
    if values["friend"] == name:
      return []
    facts = [Fact(name, a, values[a]) for a in ATTRS]
  others = [f for f in facts if f.attr not in ("kind", "legs")]
  return [facts[0], *rng.sample(others, n - 1)]


def _passage_text(facts: Sequence[Fact], rng: random.Random) -> str:
  return " ".join(render_fact(f, rng) for f in facts)


def gen_closed_qa(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """A question about a short passage (a fresh or a known animal); sometimes the passage lacks the answer."""
  fresh = rng.random() < 0.5
  name = rng.choice(world.fresh_names if fresh else world.names)
  facts = _passage_facts(world, rng, name, 3, fresh)
  if not facts:
    return []
  text = _passage_text(facts, rng)
  specs = [_closed_qa_spec(world, rng, user, name, facts, text)]
  if rng.random() < 0.03:
    specs.append(_closed_qa_spec(world, rng, user, name, facts, text))
  return [s for s in specs if s]


def _closed_qa_spec(
  world: World, rng: random.Random, user: str, name: str, facts: Sequence[Fact], text: str
) -> TaskSpec | None:
  present = {f.attr: f.value for f in facts}
  if rng.random() < 0.2:
    attr = rng.choice(
      [a for a in ("color", "home", "food", "age", "friend", "size") if a not in present]
    )
    value, variants = "", [NOT_SAID, "it does not say ."]
  else:
    attr = rng.choice(list(present))
    value = present[attr]
    variants = _qa_variants(name, attr, value)
  cons = (
    [c for c in _short_constraint(rng, allow_caps=False) if value] if rng.random() < 0.4 else []
  )
  question = rng.choice(_QUESTIONS[attr]).format(s=name)
  return _make_spec(
    world,
    user,
    "closed_qa",
    "passage_question" if value else "unanswerable",
    ["text :", text, "question :", question],
    variants,
    cons,
    subject=name,
    attr=attr,
    answer=value,
    passage=tuple(facts),
    passage_text=text,
  )


def gen_summarization(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """Summarize a 3-4 sentence passage about a known animal in one sentence (sometimes in N words)."""
  name = rng.choice(world.names)
  facts = _passage_facts(world, rng, name, rng.randint(3, 4), fresh=False)
  text = _passage_text(facts, rng)
  specs = [_summary_spec(world, rng, user, name, facts, text)]
  if rng.random() < 0.03:
    specs.append(_summary_spec(world, rng, user, name, facts, text))
  return [s for s in specs if s]


def _summary_spec(
  world: World, rng: random.Random, user: str, name: str, facts: Sequence[Fact], text: str
) -> TaskSpec | None:
  present = {f.attr: f.value for f in facts}
  need = min(3, len(facts))
  variants = []
  for _ in range(6):
    others = rng.sample([a for a in present if a != "kind"], need - 1)
    variants.append(
      _describe(name, {"kind": present["kind"], **{a: present[a] for a in others}}, rng)
    )
  constraints = [("one_sentence", 1)]
  if rng.random() < 0.35:
    constraints.append(
      ("max_words", min(count_words(tokenize(v)) for v in variants) + rng.randint(0, 2))
    )
  return _make_spec(
    world,
    user,
    "summarization",
    "one_sentence",
    ["text :", text, "summarize the text in one sentence ."],
    variants,
    constraints,
    subject=name,
    k=need,
    passage=tuple(facts),
    passage_text=text,
  )


def gen_extraction(world: World, rng: random.Random, user: str) -> list[TaskSpec]:
  """List the names, towns or numbers that a short passage mentions."""
  names = rng.sample(world.names, rng.randint(2, 3))
  facts = [
    Fact(n, a, world.entities[n].value(a))
    for n in names
    for a in [rng.choice(("kind", "color", "home", "food", "age", "legs", "friend"))]
  ]
  text = _passage_text(facts, rng)
  specs = [_extraction_spec(world, rng, user, facts, text)]
  if rng.random() < 0.03:
    specs.append(_extraction_spec(world, rng, user, facts, text))
  return [s for s in specs if s]


def _extraction_spec(
  world: World, rng: random.Random, user: str, facts: Sequence[Fact], text: str
) -> TaskSpec | None:
  low = tokenize(text)
  by_type = {
    "name": [w for w in low if world._lexicon.get(w, ("",))[0] == "name"],
    "town": [w for w in low if w in world.towns],
    "number": [w for w in low if w.isdigit()],
  }
  item_type = rng.choice([t for t, v in by_type.items() if v])
  gold = list(dict.fromkeys(by_type[item_type]))
  what = {"name": "names", "town": "towns", "number": "numbers"}[item_type]
  constraints = [("list", 1)] if rng.random() < 0.3 else []
  variants = [" ; ".join(gold) + " ." if constraints else _join_and(gold) + " ."]
  if not constraints:
    variants.append(" , ".join(gold) + " .")
  return _make_spec(
    world,
    user,
    "extraction",
    item_type,
    ["text :", text, f"find all the {what} in the text ."],
    variants,
    constraints,
    items=frozenset(gold),
    item_type=item_type,
    k=len(gold),
    passage=tuple(facts),
    passage_text=text,
  )


_GENERATORS: dict[str, Callable[[World, random.Random, str], list[TaskSpec]]] = {
  "generation": gen_generation,
  "open_qa": gen_open_qa,
  "closed_qa": gen_closed_qa,
  "brainstorming": gen_brainstorming,
  "rewriting": gen_rewriting,
  "summarization": gen_summarization,
  "classification": gen_classification,
  "extraction": gen_extraction,
}

# ----------------------------------------------------------------------------------------------
# Content scoring per category (each returns a value in [0, 1])
# ----------------------------------------------------------------------------------------------


def _fact_penalty(
  world: World, claims: Sequence[Claim], asked: tuple[str, str] | None = None, free_extra: int = 1
) -> float:
  """0.3 per false claim; 0.1 per true claim beyond ``free_extra`` that was not asked for."""
  false = extra = 0
  seen = set()
  for c in claims:
    key = (c.subject, c.attr, c.value)
    if key in seen or (asked and (c.subject, c.attr) == asked):
      continue
    seen.add(key)
    ok = world.check(c)
    if ok is False:
      false += 1
    elif ok:
      extra += 1
  return 0.3 * false + 0.1 * max(0, extra - free_extra)


def _asked_content(spec: TaskSpec, claims: Sequence[Claim]) -> float:
  """1 for the right value of the asked attribute alone, 0.4 with a competing value, 0.1 for a wrong
  value of the right type, 0 when the attribute is not addressed."""
  asked = [c for c in claims if c.subject == spec.subject and c.attr == spec.attr]
  hit = any(c.value == spec.answer for c in asked)
  wrong = any(c.value != spec.answer for c in asked)
  return 1.0 if hit and not wrong else 0.4 if hit else 0.1 if asked else 0.0


def content_open_qa(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Right value for the asked attribute; penalties for false or piled-up extra claims."""
  claims = world.claims(low, spec.subject, spec.attr)
  return max(
    0.0, _asked_content(spec, claims) - _fact_penalty(world, claims, (spec.subject, spec.attr))
  )


def content_closed_qa(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Right value from the passage, or 'the text does not say' when the passage lacks it."""
  claims = world.claims(low, spec.subject, spec.attr)
  if not spec.answer:
    says_not = "not" in low and "say" in low
    addressed = any(c.subject == spec.subject and c.attr == spec.attr for c in claims)
    return 1.0 if says_not and not addressed else 0.3 if says_not else 0.0
  support = {(f.subject, f.attr): f.value for f in spec.passage}
  contradicted = sum(
    1
    for c in claims
    if (c.subject, c.attr) != (spec.subject, spec.attr)
    and support.get((c.subject, c.attr), c.value) != c.value
  )
  return max(0.0, _asked_content(spec, claims) - 0.3 * contradicted)


def content_classification(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """The right label, no competing label, no false statements."""
  labels = [world._lexicon.get(w, ("", w))[1] if spec.task == "class" else w for w in low]
  present = {o for o in spec.options if o in labels}
  if spec.answer in present:
    content = 1.0 if len(present) == 1 else 0.2
  else:
    content = 0.1 if present else 0.0
  if spec.task != "truefalse":
    claims = world.claims(low, spec.subject, spec.attr)
    false = sum(1 for c in claims if c.attr != spec.attr and world.check(c) is False)
    content -= 0.3 * false
  return max(0.0, content)


def content_generation(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Enough distinct true facts about the animal (and the required ones); false claims cost."""
  claims = world.claims(low, spec.subject)
  true_attrs = {c.attr for c in claims if c.subject == spec.subject and world.check(c)}
  false = {(c.subject, c.attr, c.value) for c in claims if world.check(c) is False}
  if spec.required:
    got = sum(1 for a in spec.required if a in true_attrs) / len(spec.required)
    content = 0.7 * got + 0.3 * min(1.0, len(true_attrs) / 2)
  else:
    content = min(len(true_attrs), spec.k) / spec.k
  return max(0.0, content - 0.3 * len(false))


def content_brainstorming(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """k distinct valid items; invalid or repeated items cost, more than k items a little."""
  items = world._items(spec, low)
  valid = {i for i in items if i in spec.items}
  invalid = sum(1 for i in items if i not in spec.items)
  dupes = len(items) - len(set(items))
  content = min(len(valid), spec.k) / spec.k - 0.25 * (invalid + dupes)
  if len(set(items)) > spec.k:
    content *= 0.85
  return max(0.0, content)


def content_extraction(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """F1 of the extracted set against the passage's items; duplicates cost."""
  items = world._items(spec, low)
  if not items:
    return 0.0
  f1 = _f1(list(dict.fromkeys(items)), sorted(spec.items))
  return max(0.0, f1 - 0.25 * (len(items) - len(set(items))))


def content_summarization(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Coverage of the passage's facts (k needed); copying the passage is not a summary."""
  claims = world.claims(low, spec.subject)
  support = {(f.subject, f.attr, f.value) for f in spec.passage}
  covered = {(c.subject, c.attr, c.value) for c in claims} & support
  content = min(len(covered), spec.k) / spec.k
  said = " ".join(low)
  copied = sum(1 for sent in _split_sentences(spec.passage_text) if normalize(sent) in said)
  return content * (0.5 if copied >= 2 else 1.0)


def content_rewriting(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Token F1 to the target, and whether the requested change itself was made."""
  words = [w for w in low if w[0].isalnum()]
  target = [w for w in tokenize(spec.target.lower()) if w[0].isalnum()]
  f1 = _f1(words, target)
  if spec.task == "caps":
    done = _all_caps(tokens)
  else:
    src = [w for w in tokenize(spec.source.lower()) if w[0].isalnum()]
    removed = set(src) - set(target)
    added = set(target) - set(src)
    done = not (removed & set(words)) and added <= set(words)
  return 0.5 * f1 + (0.5 * f1 if done else 0.0)


_CONTENT: dict[str, Callable[[World, TaskSpec, Sequence[str], Sequence[str]], float]] = {
  "open_qa": content_open_qa,
  "closed_qa": content_closed_qa,
  "classification": content_classification,
  "generation": content_generation,
  "brainstorming": content_brainstorming,
  "extraction": content_extraction,
  "summarization": content_summarization,
  "rewriting": content_rewriting,
}

# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def gold_score(world: World, prompt: str, response: str) -> float:
  """The gold score of ``response`` to ``prompt`` in [0, 1] (same as :meth:`World.gold_score`)."""
  return world.gold_score(prompt, response)


def analyze(world: World, prompt: str, response: str) -> dict:
  """Diagnostics: ``correct``, ``constraint_ok`` (None without constraints), ``hallucinated``
  (None outside closed-domain tasks), ``terminated``, plus ``content``, ``score`` and friends."""
  return world.analyze(prompt, response)


def make_demonstrations(world: World, n: int, offset: int = 0) -> list[dict]:
  """Contractor demonstrations for training-pool prompts ``offset .. offset + n``."""
  rng = world._rng("demonstrations")
  return [
    {
      "prompt": s.prompt,
      "response": world.demonstration(s, rng),
      "user_id": s.user_id,
      "category": s.category,
    }
    for s in world.train_pool[offset : offset + n]
  ]


def prompt_records(specs: Iterable[TaskSpec]) -> list[dict]:
  """``{"prompt", "user_id", "category"}`` records."""
  return [{"prompt": s.prompt, "user_id": s.user_id, "category": s.category} for s in specs]


def fewshot_prefix(world: World, n: int = 3) -> str:
  """``n`` short solved examples (from the end of the training pool, never evaluation prompts), one
  per line as ``"<prompt> <answer>"``, followed by a newline; prepend it to an evaluation prompt."""
  picked: list[TaskSpec] = []
  seen_cats: set[str] = set()
  for spec in reversed(world.train_pool):
    if len(picked) == n:
      break
    if spec.category in seen_cats or count_words(tokenize(spec.prompt)) > 14 or spec.constraints:
      continue
    seen_cats.add(spec.category)
    picked.append(spec)
  return "".join(f"{s.prompt} {s.variants[0]}\n" for s in picked)


def write_world(
  out_dir: str, world: World | int = 0, sizes: WorldSizes | None = None
) -> dict[str, str]:
  """Write pretrain/demonstrations/prompts/rm_prompts/eval_prompts JSONL and world.json; return the
  paths by name ("pretrain", "demonstrations", "prompts", "rm_prompts", "eval_prompts", "world").

  ``world`` is a :class:`World` (its sizes apply) or a seed (with ``sizes``).  Demonstrations, PPO
  prompts and RM prompts are consecutive, disjoint slices of the training pool (training users);
  eval prompts come from the evaluation pool (held-out users)."""
  if not isinstance(world, World):
    world = World.from_seed(int(world), sizes)
  sizes = world.sizes
  need = sizes.n_demos + sizes.n_ppo + sizes.n_rm
  if need > sizes.train_pool or sizes.n_eval > sizes.eval_pool:
    raise ValueError(
      f"sizes exceed the pools: {need} > {sizes.train_pool} or {sizes.n_eval} > {sizes.eval_pool}"
    )
  os.makedirs(out_dir, exist_ok=True)
  a, b = sizes.n_demos, sizes.n_demos + sizes.n_ppo
  files = {
    "pretrain": [{"text": t} for t in world.pretraining_corpus(sizes.n_pretrain_sentences)],
    "demonstrations": make_demonstrations(world, sizes.n_demos),
    "prompts": prompt_records(world.train_pool[a:b]),
    "rm_prompts": prompt_records(world.train_pool[b : b + sizes.n_rm]),
    "eval_prompts": prompt_records(world.eval_pool[: sizes.n_eval]),
  }
  paths = {}
  for name, records in files.items():
    paths[name] = os.path.join(out_dir, f"{name}.jsonl")
    with open(paths[name], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  paths["world"] = os.path.join(out_dir, "world.json")
  with open(paths["world"], "w") as f:
    json.dump(
      {
        "seed": world.seed,
        "sizes": dataclasses.asdict(sizes),
        "answer_cue": ANSWER_CUE,
        "counts": {k: len(v) for k, v in files.items()},
      },
      f,
      indent=1,
    )
  return paths
