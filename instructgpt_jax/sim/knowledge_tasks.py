"""The ``knowledge`` world's prompts: task specs and one generator per category.

Categories (the paper's use cases, most prompts graded on recalling the world's facts):
generation, open_qa, closed_qa, brainstorming, rewriting, summarization, classification,
extraction.  Explicit constraints: ``caps`` ("use capital letters ."), ``max_words`` ("use at most
N words ."), ``one_word``, ``list`` (items separated by " ; "), ``n_sentences`` ("write N
sentences"), ``one_sentence`` (summaries).  Passage tasks start with ``"text : <passage>"``
followed by the instruction, so near-duplicates that reuse a passage share a long prefix::

    what does tami eat ? use one word . answer :                              -> berries .
    text : pimo is a blue owl . pimo eats seeds . question : where does pimo live ? answer :
                                                                              -> the text does not say .
    name three animals that live in oakvale . write them as a list . answer : -> tami ; bori ; kelu .
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Sequence

from instructgpt_jax.sim.entities import (
  ATTRS,
  CLASSES,
  COLORS,
  FOODS,
  KINDS,
  NUMBER_WORDS_INV,
  PAST_TENSE,
  REGIONS,
  SIZES,
  Atlas,
  Fact,
  describe,
  render_fact,
)
from instructgpt_jax.sim.text import (
  ANSWER_CUE,
  article,
  count_words,
  join_and,
  join_or,
  tokenize,
)

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


NOT_SAID = "the text does not say ."
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
TEMPLATE_WORDS = frozenset(
  """
write sentences about short text that says where it lives and what eats who its friend is how old color
name animals live in eat towns the rewrite this sentence capital letters past tense instead of question
summarize one find all names numbers true or false a big small does not say yesterday ate was born like
every has legs are no animal friends years from likes to part land which town kind use at most words
them as list sure ok well let me see i think here you go course hope helps thank for asking have nice
day lived had were liked more home same side made game gave make take came some none done gone note
""".split()
)


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


def uncapped_variants(world: Atlas, spec: TaskSpec) -> list[str]:
  """The spec's correct answers before length constraints (for the 'missed length' slip)."""
  if spec.category in ("open_qa", "closed_qa") and spec.answer:
    return _qa_variants(spec.subject, spec.attr, spec.answer)
  return list(spec.variants)


def _qa_variants(subject: str, attr: str, value: str) -> list[str]:
  full = render_fact(Fact(subject, attr, value))
  return [full, *(t.format(v=value, a=article(value)) for t in _SHORT_ANSWERS[attr]), f"{value} ."]


def _make_spec(
  world: Atlas,
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


def gen_open_qa(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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


def gen_classification(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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
      fact = Fact(name, attr, world.other_value(fact.value, rng))
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
    question = f"is {name} " + join_or([f"a {o}" for o in options]) + " ?"
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


def _nonempty(spec: TaskSpec | None) -> list[TaskSpec]:
  return [spec] if spec else []


def gen_generation(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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
    return " ".join([describe(name, first, rng), *rest])
  chosen = list(required) or others[: k - 1]
  if "max_words" in cons:
    return describe(name, {"kind": facts["kind"], **{a: facts[a] for a in chosen}}, rng)
  first = {"kind": facts["kind"]}
  if rng.random() < 0.5 and "color" not in chosen:
    first["color"] = facts["color"]
  rest = [render_fact(Fact(name, a, facts[a]), rng) for a in chosen]
  return " ".join([describe(name, first, rng), *rest])


def gen_brainstorming(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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
    variants.append(" ; ".join(picks) + " ." if constraints else join_and(picks) + " .")
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


def gen_rewriting(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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


def _passage_facts(world: Atlas, rng: random.Random, name: str, n: int, fresh: bool) -> list[Fact]:
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


def gen_closed_qa(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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
  world: Atlas, rng: random.Random, user: str, name: str, facts: Sequence[Fact], text: str
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


def gen_summarization(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
  """Summarize a 3-4 sentence passage about a known animal in one sentence (sometimes in N words)."""
  name = rng.choice(world.names)
  facts = _passage_facts(world, rng, name, rng.randint(3, 4), fresh=False)
  text = _passage_text(facts, rng)
  specs = [_summary_spec(world, rng, user, name, facts, text)]
  if rng.random() < 0.03:
    specs.append(_summary_spec(world, rng, user, name, facts, text))
  return [s for s in specs if s]


def _summary_spec(
  world: Atlas, rng: random.Random, user: str, name: str, facts: Sequence[Fact], text: str
) -> TaskSpec | None:
  present = {f.attr: f.value for f in facts}
  need = min(3, len(facts))
  variants = []
  for _ in range(6):
    others = rng.sample([a for a in present if a != "kind"], need - 1)
    variants.append(
      describe(name, {"kind": present["kind"], **{a: present[a] for a in others}}, rng)
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


def gen_extraction(world: Atlas, rng: random.Random, user: str) -> list[TaskSpec]:
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
  world: Atlas, rng: random.Random, user: str, facts: Sequence[Fact], text: str
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
  variants = [" ; ".join(gold) + " ." if constraints else join_and(gold) + " ."]
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


GENERATORS: dict[str, Callable[[Atlas, random.Random, str], list[TaskSpec]]] = {
  "generation": gen_generation,
  "open_qa": gen_open_qa,
  "closed_qa": gen_closed_qa,
  "brainstorming": gen_brainstorming,
  "rewriting": gen_rewriting,
  "summarization": gen_summarization,
  "classification": gen_classification,
  "extraction": gen_extraction,
}
