"""The ``paper`` world's prompts: the categories of the paper's Table 1 and one generator each.

Every generator returns a :class:`Task` (or None when a draw does not fit; the pool draws again in
the same category).  A prompt either gives what the answer needs (notes, a passage, a message) or
leaves the choice free; what the answer is judged on is recorded in the task (see
:mod:`instructgpt_jax.sim.scoring`)::

    write two sentences about tami from these notes : fox ; red ; eats fish . answer :
                                          -> tami is a red fox . tami eats fish .
    name three foods for a party . write them as a list . answer :      -> corn ; honey ; nuts .
    tami says : i lost my red hat in oakvale . can you help me ? reply to tami . answer :
                    -> i am sorry , tami . i will help you look for your red hat in oakvale .

Explicit constraints (``Task.constraints``): ``n_sentences``, ``one_sentence``, ``count`` (exactly
k items), ``max_words``, ``one_word``, ``caps``, ``list`` (items separated by " ; "), ``happy``
(a tone: at least one "!"), ``avoid`` (a word not to use).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from instructgpt_jax.sim.entities import (
  ATTRS,
  CLASSES,
  COLORS,
  FOODS,
  KINDS,
  NUMBER_WORDS_INV,
  PAST_TENSE,
  Atlas,
  Fact,
  describe,
  render_fact,
)
from instructgpt_jax.sim.safety import RUDE_OPENERS
from instructgpt_jax.sim.text import ANSWER_CUE, article, count_words, join_and, join_or, tokenize

# The paper's Table 1 (API prompt use cases), in per cent.
CATEGORY_MIX: dict[str, float] = {
  "generation": 45.6,
  "open_qa": 12.4,
  "brainstorming": 11.2,
  "chat": 8.4,
  "rewrite": 6.6,
  "summarization": 4.2,
  "classification": 3.5,
  "other": 3.5,
  "closed_qa": 2.6,
  "extraction": 1.9,
}
CATEGORIES = tuple(CATEGORY_MIX)
ITEMS = ("hat", "bag", "ball", "book", "key", "cup", "kite", "coat")
ACTIVITIES = ("swim", "run", "sing", "dance", "read", "play", "sleep", "cook", "paint", "dig")
HAPPY_WORDS = ("love", "glad", "happy", "enjoy")
SAD_WORDS = ("miss", "sad", "cry", "lost")
NOT_SAID = "the text does not say ."
# Words of the instructions, never of answers: an answer holding one is rambling on.
PROMPT_MARKERS = frozenset(
  {"answer", "question", "summarize", "rewrite", "write", "reply", "says", "notes", "use"}
)
_QUESTIONS: dict[str, tuple[str, ...]] = {
  "kind": ("what kind of animal is {s} ?", "what animal is {s} ?"),
  "color": ("what color is {s} ?",),
  "size": ("how big is {s} ?",),
  "home": ("where does {s} live ?", "in which town does {s} live ?"),
  "food": ("what does {s} eat ?", "what food does {s} like ?"),
  "age": ("how old is {s} ?",),
  "legs": ("how many legs does {s} have ?",),
  "friend": ("who is the friend of {s} ?", "who is {s} friends with ?"),
}
_SHORT: dict[str, tuple[str, ...]] = {
  "kind": ("{a} {v} .", "{v} ."),
  "home": ("in {v} .", "{v} ."),
  "age": ("{v} years old .", "{v} ."),
  "legs": ("{v} legs .", "{v} ."),
}
_CONSTRAINT_TEXT = {
  "caps": "use capital letters .",
  "max_words": "use at most {p} words .",
  "one_word": "use one word .",
  "list": "write them as a list .",
  "happy": "make it sound happy .",
  "avoid": "do not use the word {p} .",
}
# Every word of the templates: never a name, and not an invented word in an answer.
TEMPLATE_WORDS = frozenset(
  """
write sentences sentence about from these notes eats lives in short story note to thank you for the
dear invite come party will your i am sorry help look can me reply says lost my hungry like what should
eat could some hello having name things do foods animals that live new names put words order z plus
is are was it a an and or of true false message happy sad this text summarize one find all numbers
question does not say rewrite capital letters past tense instead use at most them as list make sound
do word how many legs have old years where which town kind color big who friend friends with food
what animal answer very much see soon yes no ok sure here go of course hope helps nice day that all
""".split()
) | frozenset(ITEMS + ACTIVITIES + HAPPY_WORDS + SAD_WORDS)
MAX_PROMPT_WORDS, MAX_PROMPT_TOKENS, MAX_ANSWER_TOKENS = 30, 40, 21
# Capitals cost ~3x the sentencepiece pieces: only short answers are asked for in capitals.
MAX_CAPS_WORDS = 8


@dataclasses.dataclass(frozen=True)
class Task:
  """One prompt and what its answer is judged on."""

  prompt: str
  category: str
  task: str  # sub-type, e.g. "notes", "story", "lost_item"
  user_id: str
  reference: str  # the longest correct answer (sets the length budget)
  variants: tuple[str, ...]  # correct answers, constraints applied
  closed: bool = False  # the answer must stay within what the prompt gives
  subject: str = ""  # the animal the answer is about ("" when free)
  needs: tuple[tuple[str, ...], ...] = ()  # word groups the answer must mention (one of each)
  given: tuple[Fact, ...] = ()  # facts the prompt gives (notes, passage)
  attr: str = ""  # asked attribute (QA)
  answer: str = ""  # expected value or label; "" in closed QA: the text does not say
  options: tuple[str, ...] = ()  # labels to choose from
  items: frozenset[str] = frozenset()  # valid items (brainstorm, extraction, sort)
  item_type: str = ""  # "name" | "new_name" | "town" | "food" | "activity" | "number"
  k: int = 0  # items, facts or sentences asked for
  source: str = ""  # rewrite: the sentence to rewrite
  target: str = ""  # rewrite: the rewritten sentence
  constraints: tuple[tuple[str, int | str], ...] = ()

  @property
  def constraint_dict(self) -> dict[str, int | str]:
    """Constraints as a dict name -> parameter."""
    return dict(self.constraints)


def _apply(
  variants: Sequence[str], constraints: Sequence[tuple[str, int | str]]
) -> tuple[str, ...]:
  """The phrasings that satisfy the constraints (upper case for caps, "!" for happy)."""
  cons = dict(constraints)
  out = []
  for v in variants:
    n = count_words(tokenize(v))
    if ("max_words" in cons and n > int(cons["max_words"])) or ("one_word" in cons and n != 1):
      continue
    if "avoid" in cons and str(cons["avoid"]) in v.split():
      continue
    if "happy" in cons:
      v = v[: -len(" .")] + " !" if v.endswith(" .") else v
    out.append(v.upper() if "caps" in cons else v)
  return tuple(dict.fromkeys(out))


def make_task(
  user: str,
  category: str,
  task: str,
  parts: Sequence[str],
  variants: Sequence[str],
  constraints: Sequence[tuple[str, int | str]] = (),
  **fields,
) -> Task | None:
  """A task from prompt parts and correct answers; None when no answer survives the constraints
  or the prompt or an answer is too long for the model's context."""
  kept = _apply(variants, constraints)
  said = " ".join(parts)
  phrases = [
    _CONSTRAINT_TEXT[n].format(p=p)
    for n, p in constraints
    if n in _CONSTRAINT_TEXT and not (n == "caps" and "capital letters" in said)
  ]
  prompt = " ".join(p for p in [*parts, *phrases] if p) + " " + ANSWER_CUE
  toks = tokenize(prompt)
  if not kept or count_words(toks) > MAX_PROMPT_WORDS or len(toks) > MAX_PROMPT_TOKENS:
    return None
  if any(len(tokenize(v)) > MAX_ANSWER_TOKENS for v in kept):
    return None
  if "caps" in dict(constraints) and any(count_words(tokenize(v)) > MAX_CAPS_WORDS for v in kept):
    return None
  reference = max(kept, key=lambda v: (count_words(tokenize(v)), v))
  return Task(
    prompt, category, task, user, reference, kept, constraints=tuple(constraints), **fields
  )


def _sentences_of(name: str, facts: dict[str, str], n: int, rng: random.Random) -> str:
  """``n`` sentences stating every fact of ``facts`` (kind first) about ``name``."""
  others = [a for a in facts if a != "kind"]
  rng.shuffle(others)
  single = others[: n - 1]
  first = {"kind": facts["kind"], **{a: facts[a] for a in others[n - 1 :]}}
  return " ".join(
    [describe(name, first, rng), *(render_fact(Fact(name, a, facts[a])) for a in single)]
  )


def _tone(rng: random.Random, p_caps: float = 0.08, p_happy: float = 0.12) -> list:
  r = rng.random()
  return [("caps", 1)] if r < p_caps else [("happy", 1)] if r < p_caps + p_happy else []


# --- generation (45.6 %) ------------------------------------------------------------------------


def gen_generation(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """Notes to prose (closed), a short text about a known animal, a text about an invented animal,
  or a note to an animal; with sentence counts, word limits, a tone or capitals."""
  r = rng.random()
  if r < 0.35:  # notes -> sentences; the notes are all the answer may say
    fresh = rng.random() < 0.5
    name = rng.choice(w.fresh_names if fresh else w.names)
    true = {f.attr: f.value for f in w.entity_facts(name)} if not fresh else random_facts(w, rng)
    attrs = ["kind", *rng.sample(["color", "size", "home", "food", "age"], rng.randint(1, 3))]
    facts = {a: true[a] for a in attrs}
    n = rng.randint(1, min(3, len(attrs)))
    notes = " ; ".join(_note(a, facts[a]) for a in attrs)
    what = "one sentence" if n == 1 else f"{NUMBER_WORDS_INV[n]} sentences"
    cons = [("n_sentences", n), *_tone(rng)]
    variants = [_sentences_of(name, facts, n, rng) for _ in range(6)]
    return make_task(
      user,
      "generation",
      "notes",
      [f"write {what} about {name} from these notes : {notes} ."],
      variants,
      cons,
      closed=True,
      subject=name,
      needs=((name,), *((v,) for v in facts.values())),
      given=tuple(Fact(name, a, facts[a]) for a in attrs),
      k=n,
    )
  if r < 0.65:  # a text about a known animal: any true facts will do
    name = rng.choice(w.names)
    true = {f.attr: f.value for f in w.entity_facts(name)}
    n = rng.randint(2, 3)
    cons: list = [("n_sentences", n)] if rng.random() < 0.6 else []
    if not cons and rng.random() < 0.5:
      cons.append(("max_words", rng.randint(10, 13)))
    cons += _tone(rng)
    if rng.random() < 0.12:
      cons.append(("avoid", true["food"]))
    parts = [
      f"write {NUMBER_WORDS_INV[n]} sentences about {name} ."
      if cons and cons[0][0] == "n_sentences"
      else rng.choice((f"write a short story about {name} .", f"write a short text about {name} ."))
    ]
    variants = []
    for _ in range(8):
      attrs = rng.sample(["color", "size", "home", "food", "age", "friend"], n)
      facts = {"kind": true["kind"], **{a: true[a] for a in attrs}}
      if dict(cons).get("max_words"):
        variants.append(describe(name, {"kind": true["kind"], attrs[0]: true[attrs[0]]}, rng))
      else:
        variants.append(_sentences_of(name, facts, n, rng))
    return make_task(
      user, "generation", "story", parts, variants, cons, subject=name, needs=((name,),), k=n
    )
  if r < 0.85:  # an invented animal of a given colour and kind
    kind, color = rng.choice(sorted(KINDS)), rng.choice(COLORS)
    n = rng.randint(2, 3)
    cons = [("n_sentences", n), *_tone(rng)]
    variants = []
    for _ in range(6):
      name = rng.choice(w.fresh_names)
      facts = {"kind": kind, "color": color, **_pick(random_facts(w, rng), n, rng)}
      variants.append(_sentences_of(name, facts, n, rng))
    return make_task(
      user,
      "generation",
      "invent",
      [f"write {NUMBER_WORDS_INV[n]} sentences about a {color} {kind} ."],
      variants,
      cons,
      needs=((kind,), (color,)),
      k=n,
    )
  name = rng.choice(w.names)  # a note to an animal
  food, town = rng.choice(FOODS), rng.choice(list(w.towns))
  op = rng.choice(("thank", "invite"))
  if op == "thank":
    parts = [f"write a note to {name} to thank {name} for the {food} ."]
    variants = [f"dear {name} , thank you for the {food} .", f"thank you for the {food} , {name} ."]
    needs: tuple = ((name,), ("thank",), (food,))
  else:
    parts = [f"write a note to invite {name} to a party in {town} ."]
    variants = [
      f"dear {name} , please come to my party in {town} .",
      f"dear {name} , i invite you to a party in {town} .",
    ]
    needs = ((name,), ("party",), (town,))
  return make_task(
    user, "generation", "note", parts, variants, _tone(rng), closed=True, subject=name, needs=needs
  )


def _note(attr: str, value: str) -> str:
  return {"home": f"lives in {value}", "food": f"eats {value}", "age": f"{value} years old"}.get(
    attr, value
  )


def random_facts(w: Atlas, rng: random.Random) -> dict[str, str]:
  """Facts of an invented animal: a random kind, colour, size, home, food and age."""
  kind = rng.choice(sorted(KINDS))
  return {
    "kind": kind,
    "color": rng.choice(COLORS),
    "size": rng.choice(("small", "big")),
    "home": rng.choice(list(w.towns)),
    "food": rng.choice(FOODS),
    "age": str(rng.randint(1, 15)),
  }


def _pick(facts: dict[str, str], n: int, rng: random.Random) -> dict[str, str]:
  attrs = rng.sample(["home", "food", "age"], max(1, n - 1))
  return {a: facts[a] for a in attrs}


# --- open QA (12.4 %) -----------------------------------------------------------------------------


def gen_open_qa(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """A question about the world's facts, answered from knowledge (the paper's open QA)."""
  name, attr = rng.choice(w.names), rng.choice(ATTRS)
  value = w.true_value(name, attr) or ""
  variants = [render_fact(Fact(name, attr, value))]
  variants += [t.format(v=value, a=article(value)) for t in _SHORT.get(attr, ("{v} .",))]
  r = rng.random()
  cons = [("caps", 1)] if r < 0.12 else [("one_word", 1)] if r < 0.27 else []
  if 0.27 <= r < 0.4:
    cons = [("max_words", rng.randint(2, 3))]
  question = rng.choice(_QUESTIONS[attr]).format(s=name)
  return make_task(
    user, "open_qa", "question", [question], variants, cons, subject=name, attr=attr, answer=value
  )


# --- brainstorming (11.2 %) ------------------------------------------------------------------------


def gen_brainstorming(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """k foods for a party, k things to do, k names for a new animal (free choices), or k animals
  with a property (recalled)."""
  k = rng.randint(2, 4)
  r = rng.random()
  if r < 0.3:
    valid, ask, typ = FOODS, f"foods for a party in {rng.choice(list(w.towns))}", "food"
  elif r < 0.55:
    valid, ask, typ = (
      ACTIVITIES,
      f"things {rng.choice(w.names)} could do on a rainy day",
      "activity",
    )
  elif r < 0.75:
    kind = rng.choice(sorted(KINDS))
    valid, ask, typ = w.fresh_names[:200], f"names for a new {kind}", "new_name"
  else:
    town = rng.choice(list(w.towns))
    valid = [e.name for e in w.entities.values() if e.home == town]
    ask, typ = f"animals that live in {town}", "name"
  if len(valid) < k + 1:
    return None
  cons: list = [("count", k)]
  if rng.random() < 0.3:
    cons.append(("list", 1))
  if typ in ("food", "activity") and rng.random() < 0.2:
    cons.append(("avoid", rng.choice(valid)))
  cons += _tone(rng, p_happy=0.0)
  avoid = dict(cons).get("avoid")
  pool = [v for v in valid if v != avoid]
  variants = []
  for _ in range(6):
    picks = rng.sample(pool, k)
    variants.append(" ; ".join(picks) + " ." if ("list", 1) in cons else join_and(picks) + " .")
  return make_task(
    user,
    "brainstorming",
    typ,
    [f"name {NUMBER_WORDS_INV[k]} {ask} ."],
    variants,
    cons,
    items=frozenset(valid),
    item_type=typ,
    k=k,
  )


# --- chat (8.4 %) ---------------------------------------------------------------------------------


def gen_chat(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """A message from an animal, to be answered as a helpful, polite assistant; some messages are
  rude themselves."""
  name = rng.choice(w.names)
  color, item, town, food = (
    rng.choice(COLORS),
    rng.choice(ITEMS),
    rng.choice(list(w.towns)),
    rng.choice(FOODS),
  )
  op = rng.choice(("lost", "party", "hungry"))
  if op == "lost":
    msg = f"i lost my {color} {item} in {town} . can you help me ?"
    variants = [
      f"i am sorry , {name} . i will help you look for your {color} {item} in {town} .",
      f"hello {name} . i will help you find your {color} {item} .",
    ]
    needs: tuple = ((name,), (item,))
    given = (Fact(name, "item", f"{color} {item}"), Fact(name, "home", town))
  elif op == "party":
    msg = f"i am having a party in {town} . will you come ?"
    variants = [
      f"thank you , {name} . i will come to your party in {town} .",
      f"yes , {name} . i will come to your party .",
    ]
    needs = ((name,), ("come", "yes"), ("party",))
    given = (Fact(name, "home", town),)
  else:
    msg = f"i am hungry and i like {food} . what should i eat ?"
    variants = [
      f"hello {name} . you could eat some {food} .",
      f"you could eat some {food} , {name} .",
    ]
    needs = ((name,), (food,))
    given = (Fact(name, "food", food),)
  if rng.random() < 0.15:
    msg = f"{rng.choice(RUDE_OPENERS)} {msg}"
  cons: list = []
  if rng.random() < 0.3:
    cons = [("one_sentence", 1)]
    variants = [v.replace(" . ", " , ", 1) for v in variants]
  cons += _tone(rng, p_caps=0.05)
  return make_task(
    user,
    "chat",
    op,
    [f"{name} says : {msg} reply to {name} ."],
    variants,
    cons,
    closed=True,
    subject=name,
    needs=needs,
    given=given,
  )


# --- rewrite (6.6 %) ------------------------------------------------------------------------------


def gen_rewrite(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """Rewrite a sentence in capital letters, in the past tense, or about another animal."""
  name = rng.choice(w.names)
  facts = {f.attr: f.value for f in w.entity_facts(name)}
  a1 = rng.choice(["kind", "home", "food", "age", "legs", "friend"])
  source = render_fact(Fact(name, a1, facts[a1]))
  op = rng.choice(("caps", "past", "swap"))
  cons: list = []
  if op == "caps":
    target, instruction, cons = source, "rewrite this sentence in capital letters :", [("caps", 1)]
  elif op == "past":
    target = " ".join(PAST_TENSE.get(t, t) for t in source.split())
    instruction = "rewrite this sentence in the past tense :"
  else:
    other = rng.choice([n for n in w.names if n not in (name, facts["friend"])])
    target = " ".join(other if t == name else t for t in source.split())
    instruction = f"rewrite this sentence about {other} instead of {name} :"
  return make_task(
    user,
    "rewrite",
    op,
    [instruction, source],
    [target],
    cons,
    closed=True,
    subject=name,
    source=source,
    target=target,
  )


# --- summarization (4.2 %), closed QA (2.6 %), extraction (1.9 %) ---------------------------------


def _passage(w: Atlas, rng: random.Random, n: int) -> tuple[str, list[Fact]]:
  fresh = rng.random() < 0.5
  name = rng.choice(w.fresh_names if fresh else w.names)
  true = random_facts(w, rng) if fresh else {f.attr: f.value for f in w.entity_facts(name)}
  attrs = ["kind", *rng.sample(["color", "size", "home", "food", "age"], n - 1)]
  return name, [Fact(name, a, true[a]) for a in attrs]


def gen_summarization(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """Summarize a 3-4 sentence passage in one sentence (sometimes in N words)."""
  name, facts = _passage(w, rng, rng.randint(3, 4))
  text = " ".join(render_fact(f, rng) for f in facts)
  present = {f.attr: f.value for f in facts}
  variants = []
  for _ in range(6):
    others = rng.sample([a for a in present if a != "kind"], 2)
    variants.append(
      describe(name, {"kind": present["kind"], **{a: present[a] for a in others}}, rng)
    )
  cons: list = [("one_sentence", 1)]
  if rng.random() < 0.3:
    cons.append(("max_words", min(count_words(tokenize(v)) for v in variants) + rng.randint(0, 2)))
  return make_task(
    user,
    "summarization",
    "one_sentence",
    ["text :", text, "summarize the text in one sentence ."],
    variants,
    cons,
    closed=True,
    subject=name,
    given=tuple(facts),
    k=3,
  )


def gen_closed_qa(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """A question about a short passage; sometimes the passage lacks the answer."""
  name, facts = _passage(w, rng, 3)
  text = " ".join(render_fact(f, rng) for f in facts)
  present = {f.attr: f.value for f in facts}
  if rng.random() < 0.2:
    attr = rng.choice([a for a in ("color", "home", "food", "age", "size") if a not in present])
    value, variants = "", [NOT_SAID, "it does not say ."]
  else:
    attr = rng.choice(list(present))
    value = present[attr]
    variants = [render_fact(Fact(name, attr, value)), f"{value} ."]
  question = rng.choice(_QUESTIONS[attr]).format(s=name)
  return make_task(
    user,
    "closed_qa",
    "question" if value else "unanswerable",
    ["text :", text, "question :", question],
    variants,
    closed=True,
    subject=name,
    given=tuple(facts),
    attr=attr,
    answer=value,
  )


def gen_extraction(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """List the names or towns that a short passage mentions."""
  names = rng.sample(w.names, rng.randint(2, 3))
  facts = [
    Fact(n, "home" if i % 2 else "food", w.entities[n].value("home" if i % 2 else "food"))
    for i, n in enumerate(names)
  ]
  if rng.random() < 0.5:
    typ, gold = "name", names
  else:
    facts = [Fact(n, "home", w.entities[n].home) for n in names]
    typ, gold = "town", list(dict.fromkeys(f.value for f in facts))
  text = " ".join(render_fact(f, rng) for f in facts)
  cons = [("list", 1)] if rng.random() < 0.3 else []
  variants = [" ; ".join(gold) + " ." if cons else join_and(gold) + " ."]
  what = "names of animals" if typ == "name" else "towns"
  return make_task(
    user,
    "extraction",
    typ,
    ["text :", text, f"find all the {what} in the text ."],
    variants,
    cons,
    closed=True,
    given=tuple(facts),
    items=frozenset(gold),
    item_type=typ,
    k=len(gold),
  )


# --- classification (3.5 %), other (3.5 %) --------------------------------------------------------


def gen_classification(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """True or false (recalled), the class of an animal (recalled), or the mood of a message."""
  name = rng.choice(w.names)
  r = rng.random()
  if r < 0.4:
    attr = rng.choice(("kind", "color", "home", "food", "age", "friend"))
    value = w.true_value(name, attr) or ""
    truth = rng.random() < 0.5
    shown = value if truth else w.other_value(value, rng)
    label = "true" if truth else "false"
    parts = ["true or false :", render_fact(Fact(name, attr, shown), rng)]
    return make_task(
      user,
      "classification",
      "truefalse",
      parts,
      [f"{label} .", f"that is {label} ."],
      subject=name,
      attr=attr,
      answer=label,
      options=("true", "false"),
    )
  if r < 0.7:
    true_cls = KINDS[w.entities[name].kind][0]
    options = [true_cls, *rng.sample([c for c in CLASSES if c != true_cls], 1)]
    rng.shuffle(options)
    question = f"is {name} " + join_or([f"a {o}" for o in options]) + " ?"
    return make_task(
      user,
      "classification",
      "class",
      [question],
      [f"{name} is a {true_cls} .", f"a {true_cls} ."],
      subject=name,
      attr="class",
      answer=true_cls,
      options=tuple(options),
    )
  happy = rng.random() < 0.5
  msg = (
    f"i {rng.choice(HAPPY_WORDS[:2])} my new {rng.choice(ITEMS)} ."
    if happy
    else f"i {rng.choice(SAD_WORDS[:1] + SAD_WORDS[3:])} my {rng.choice(ITEMS)} ."
  )
  label = "happy" if happy else "sad"
  return make_task(
    user,
    "classification",
    "mood",
    [f"{name} says : {msg} is this message happy or sad ?"],
    [f"{label} .", f"it is {label} ."],
    closed=True,
    subject=name,
    answer=label,
    options=("happy", "sad"),
  )


def gen_other(w: Atlas, rng: random.Random, user: str) -> Task | None:
  """Put names in alphabetical order, or add two small numbers."""
  if rng.random() < 0.5:
    names = rng.sample(w.names, rng.randint(3, 4))
    ordered = sorted(names)
    if names == ordered:
      return None
    return make_task(
      user,
      "other",
      "sort",
      [f"put these names in order from a to z : {' , '.join(names)} ."],
      [" , ".join(ordered) + " .", " ; ".join(ordered) + " ."],
      closed=True,
      items=frozenset(names),
      item_type="name",
      k=len(names),
      target=" ".join(ordered),
    )
  a, b = rng.randint(1, 12), rng.randint(1, 8)
  return make_task(
    user,
    "other",
    "plus",
    [f"what is {a} plus {b} ?"],
    [f"{a + b} .", f"{a} plus {b} is {a + b} ."],
    answer=str(a + b),
    item_type="number",
  )


GENERATORS: dict[str, Callable[[Atlas, random.Random, str], Task | None]] = {
  "generation": gen_generation,
  "open_qa": gen_open_qa,
  "brainstorming": gen_brainstorming,
  "chat": gen_chat,
  "rewrite": gen_rewrite,
  "summarization": gen_summarization,
  "classification": gen_classification,
  "other": gen_other,
  "closed_qa": gen_closed_qa,
  "extraction": gen_extraction,
}
