"""The ``knowledge`` world (``data.world = "knowledge"``): most prompts graded on recalling facts.

This is the project's first world, kept as it was (the same seed writes the same files).  Its
finding: at our model size the reward model cannot judge recalled facts, so RLHF adds little;
RLHF does not add knowledge that the reward model lacks.

**Prompt pools and files.** :meth:`World.from_seed` builds a training pool (training users) and an
evaluation pool (held-out users, prompt texts disjoint from the training pool); the world keeps a
dict prompt text -> :class:`TaskSpec`, so any prompt of the written files can be scored after
rebuilding the world from the seed (``sim.files.load_world`` reads the seed and pool sizes from
``world.json``).  :meth:`World.files` gives consecutive slices of the training pool:
``demonstrations``, ``prompts`` (PPO) and a separate ``rm_prompts`` (prompts whose policy samples
are ranked by the simulated labelers to make comparisons), plus ``eval_prompts`` from the
evaluation pool and ``pretrain``.  Default sizes (:class:`WorldSizes`): 50k pretraining sentences
(~300k words), 1500 demonstrations, 2000 PPO prompts, 2400 RM prompts, 300 eval prompts, from
pools of 8000/600; ``World.from_seed(seed, scale=0.25)`` scales every count (generation takes
about a second).  Prompt texts are unique across all files; users follow a skewed distribution (a
couple submit more than 200 prompts), and ~3 % of passage prompts have a near-duplicate sibling
from the same user that shares the passage.

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
import random
from collections.abc import Callable, Iterable, Sequence

from instructgpt_jax.sim import corpus
from instructgpt_jax.sim.entities import COLORS, Atlas, Claim, Fact, render_fact
from instructgpt_jax.sim.knowledge_tasks import (
  CATEGORY_WEIGHTS,
  CLOSED_DOMAIN,
  GENERATORS,
  PROMPT_MARKERS,
  TEMPLATE_WORDS,
  WORDY_PREFIXES,
  WORDY_SUFFIXES,
  TaskSpec,
  uncapped_variants,
)
from instructgpt_jax.sim.text import (
  ANSWER_CUE,
  TERMINAL,
  all_caps,
  count_sentences,
  count_words,
  f1,
  normalize,
  split_clauses,
  split_sentences,
  tokenize,
)

NAME = "knowledge"


@dataclasses.dataclass(frozen=True)
class WorldSizes:
  """How much :meth:`World.files` holds.  Pools are what :meth:`World.from_seed` generates."""

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


class World(Atlas):
  """Entities, towns, the prompt pools and the gold scorer, all from one seed."""

  def __init__(
    self, seed: int = 0, sizes: WorldSizes | None = None, n_entities: int = 96, n_towns: int = 10
  ) -> None:
    super().__init__(seed, n_entities, n_towns, reserved=TEMPLATE_WORDS)
    self.sizes = sizes or WorldSizes()
    self.tasks: dict[str, TaskSpec] = {}
    self.train_pool = self._build_pool("train", self.sizes.train_pool, _user_ids(0, 400))
    self.eval_pool = self._build_pool("eval", self.sizes.eval_pool, _user_ids(5000, 60))
    self._known_words = self._build_known_words()

  name = NAME

  # --- construction ---------------------------------------------------------------------

  @classmethod
  def from_seed(cls, seed: int = 0, sizes: WorldSizes | None = None, scale: float = 1.0) -> World:
    """The world of ``seed``; ``sizes`` (default :class:`WorldSizes`) times ``scale`` set how much
    :meth:`World.files` holds and how large the prompt pools are.  The entities do not change
    with the sizes, and a smaller training pool is a prefix of a larger one."""
    return cls(seed, (sizes or WorldSizes()).scaled(scale) if scale != 1.0 else sizes)

  def files(self) -> dict[str, list[dict]]:
    """The records of each file, by name: ``pretrain``, ``demonstrations``, ``prompts`` (PPO),
    ``rm_prompts`` and ``eval_prompts`` (consecutive, disjoint slices of the training pool; eval
    prompts from the evaluation pool of held-out users)."""
    sizes = self.sizes
    need = sizes.n_demos + sizes.n_ppo + sizes.n_rm
    if need > sizes.train_pool or sizes.n_eval > sizes.eval_pool:
      raise ValueError(
        f"sizes exceed the pools: {need} > {sizes.train_pool} or {sizes.n_eval} > {sizes.eval_pool}"
      )
    a, b = sizes.n_demos, sizes.n_demos + sizes.n_ppo
    return {
      "pretrain": [{"text": t} for t in self.pretraining_corpus(sizes.n_pretrain_sentences)],
      "demonstrations": make_demonstrations(self, sizes.n_demos),
      "prompts": prompt_records(self.train_pool[a:b]),
      "rm_prompts": prompt_records(self.train_pool[b : b + sizes.n_rm]),
      "eval_prompts": prompt_records(self.eval_pool[: sizes.n_eval]),
    }

  def fewshot_prefix(self, n: int = 3) -> str:
    """See :func:`fewshot_prefix`."""
    return fewshot_prefix(self, n)

  def meta(self) -> dict:
    """What ``world.json`` records besides the file counts (enough to rebuild the world)."""
    return {"seed": self.seed, "sizes": dataclasses.asdict(self.sizes), "answer_cue": ANSWER_CUE}

  def _build_known_words(self) -> frozenset[str]:
    """Every word the world's texts use; other words in a response are invented."""
    known = set(self._lexicon) | TEMPLATE_WORDS
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
      specs = GENERATORS[cat](self, rng, user)
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
    return corpus.pretraining_sentences(self, n, self._rng(purpose))

  def pretraining_corpus(self, n_sentences: int, purpose: str = "pretrain") -> list[str]:
    """Paragraphs of plain statements (no instructions, no questions, no answer cue)."""
    return corpus.pretraining_corpus(self, n_sentences, self._rng(purpose))

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
        longest = max(uncapped_variants(self, spec), key=lambda v: len(v.split()))
        return longest.upper() if "caps" in cons else longest
      if "n_sentences" in cons or "one_sentence" in cons:
        return f"{response} {render_fact(rng.choice(self.entity_facts(spec.subject)), rng)}"
    if spec.task == "unanswerable":  # answers from memory instead of from the text
      value = self.true_value(spec.subject, spec.attr) or self.other_value(
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
    tokens[i] = self.other_value(tokens[i], rng)
    return " ".join(tokens)

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
    clauses = [" ".join(c) for c in split_clauses(low) if c]
    if len(clauses) != len(set(clauses)):
      return False
    grams = [tuple(low[i : i + 5]) for i in range(len(low) - 4)]
    if len(grams) != len(set(grams)):
      return False
    if any(w in PROMPT_MARKERS for w in low) or ("text" in low and ":" in low):
      return False
    if n_words > 2 * count_words(tokenize(spec.reference)) + 8:
      return False
    return tokens[-1] in TERMINAL or n_words <= 3

  def _constraints(self, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]) -> float | None:
    cons = spec.constraint_dict
    if not cons:
      return None
    words = [t for t in tokens if t[0].isalnum()]
    oks = []
    for name, param in cons.items():
      if name == "caps":
        oks.append(all_caps(tokens))
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
        oks.append(count_sentences(low) == param)
      elif name == "one_sentence":
        oks.append(count_sentences(low) == 1)
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
  overlap = f1(list(dict.fromkeys(items)), sorted(spec.items))
  return max(0.0, overlap - 0.25 * (len(items) - len(set(items))))


def content_summarization(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Coverage of the passage's facts (k needed); copying the passage is not a summary."""
  claims = world.claims(low, spec.subject)
  support = {(f.subject, f.attr, f.value) for f in spec.passage}
  covered = {(c.subject, c.attr, c.value) for c in claims} & support
  content = min(len(covered), spec.k) / spec.k
  said = " ".join(low)
  copied = sum(1 for sent in split_sentences(spec.passage_text) if normalize(sent) in said)
  return content * (0.5 if copied >= 2 else 1.0)


def content_rewriting(
  world: World, spec: TaskSpec, tokens: Sequence[str], low: Sequence[str]
) -> float:
  """Token F1 to the target, and whether the requested change itself was made."""
  words = [w for w in low if w[0].isalnum()]
  target = [w for w in tokenize(spec.target.lower()) if w[0].isalnum()]
  overlap = f1(words, target)
  if spec.task == "caps":
    done = all_caps(tokens)
  else:
    src = [w for w in tokenize(spec.source.lower()) if w[0].isalnum()]
    removed = set(src) - set(target)
    added = set(target) - set(src)
    done = not (removed & set(words)) and added <= set(words)
  return 0.5 * overlap + (0.5 * overlap if done else 0.0)


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
