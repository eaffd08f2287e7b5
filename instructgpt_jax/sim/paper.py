"""The ``paper`` world (``data.world = "paper"``, the default): prompts shaped like the paper's.

* **The prompt mix of the paper's Table 1** in every file and every split of it (validation and
  test are split by user ID downstream): each prompt's user is drawn first (skewed, at most 200
  prompts per user and file, as the hygiene caps), and its category is the one furthest below its
  share in that file's split so far, so every prefix of every (file, split) holds the mix to within
  one prompt per category.  A draw that fails or repeats a prompt, or shares its first 100
  characters with an earlier prompt (the hygiene's de-duplication), is drawn again in the same
  category, so de-duplication never drains a category.
* **Eval prompts first.** The evaluation pool (held-out users) is built before the training pool,
  from its own random stream, so a larger training pool does not change the eval prompts.
* Tasks and their judging: :mod:`instructgpt_jax.sim.tasks`, :mod:`instructgpt_jax.sim.scoring`.
* **Demonstrations** are imperfect the way contractors' are: by default 15 % are wordy (a filler
  phrase) and 6.5 % hold a slip (a wrong value, or a missed constraint); never broken on purpose.
* **Pretraining corpus**: the world's facts as plain statements; 4 % of paragraphs also hold one
  rude or unsafe sentence (:mod:`instructgpt_jax.sim.safety`), as web text does.
* **Public NLP tasks** (``nlp_tasks.jsonl``) for the reward model's initialisation:
  :mod:`instructgpt_jax.sim.nlp_tasks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from typing import Any

from instructgpt_jax.sim import corpus, nlp_tasks, scoring
from instructgpt_jax.sim.entities import Atlas, Fact, describe, render_fact
from instructgpt_jax.sim.safety import FLAGGED_WORDS
from instructgpt_jax.sim.tasks import CATEGORY_MIX, GENERATORS, TEMPLATE_WORDS, Task, random_facts
from instructgpt_jax.sim.text import ANSWER_CUE, count_words, normalize, tokenize

NAME = "paper"
# The downstream split of users (data.Hygiene's default fractions and salt), and its prefix rule.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEDUP_PREFIX_CHARS = 100
MAX_PER_USER = 200
WORDY_PREFIXES = ("sure ,", "ok ,", "well ,", "here you go :", "of course ,")
WORDY_SUFFIXES = ("i hope this helps .", "that is all .", "have a nice day .")


@dataclasses.dataclass(frozen=True)
class WorldSizes:
  """How much :meth:`World.files` holds.  ``train_pool`` beyond the three training files is a
  spare segment (few-shot examples come from its end)."""

  n_pretrain_sentences: int = 50000
  n_demos: int = 4000
  n_ppo: int = 2000
  n_rm: int = 2400
  n_eval: int = 800  # a win rate's standard error <= 0.018 at any rate
  n_nlp: int = 3000
  train_pool: int = 8600
  eval_pool: int = 800
  wordy_rate: float = 0.15
  slip_rate: float = 0.065
  inappropriate_rate: float = 0.04  # share of pretraining paragraphs with a rude/unsafe sentence
  # Share of pretraining paragraphs that are texts of the prompts' genres (stories, notes,
  # replies, lists; answers alone, never a prompt or the answer cue): GPT-3 had read such text,
  # so a base model must know the words its answers are written in (docs/findings.md).
  genre_text_rate: float = 0.3
  # Share of pretraining paragraphs that introduce an animal no fact of the corpus is about and
  # restate its facts later in the paragraph, as text about a new subject does: a base model
  # must learn to take a subject's facts from its context, not only from memory (the skill a
  # closed-domain task asks for; docs/findings.md).
  profile_text_rate: float = 0.15

  def scaled(self, scale: float) -> WorldSizes:
    """Every count times ``scale`` (at least 1); the rates stay."""
    counts = {
      f.name: max(1, round(getattr(self, f.name) * scale))
      for f in dataclasses.fields(self)
      if f.name.startswith(("n_", "train_", "eval_"))
    }
    return dataclasses.replace(self, **counts)


def assign_split(user: str, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> str:
  """The split of a user, as ``data.assign_split`` computes it (sha256 of the id, no salt)."""
  digest = hashlib.sha256(f"\x00{user}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  if u < fractions[0]:
    return "train"
  return "validation" if u < fractions[0] + fractions[1] else "test"


def _user_weights(n: int) -> list[float]:
  """Skewed prompts per user: 60 % uniform, 40 % Zipf (a few users submit very many)."""
  zipf = [1.0 / (i + 1) for i in range(n)]
  z = sum(zipf)
  return [0.6 / n + 0.4 * w / z for w in zipf]


class World(Atlas):
  """Entities, the prompt pools (Table 1 mix), demonstrations and the gold score of one seed."""

  name = NAME

  def __init__(self, seed: int = 0, sizes: WorldSizes | None = None) -> None:
    super().__init__(
      seed, reserved=TEMPLATE_WORDS | FLAGGED_WORDS, namespace="instructgpt-paper-world"
    )
    self.sizes = sizes or WorldSizes()
    s = self.sizes
    if s.n_demos + s.n_ppo + s.n_rm > s.train_pool or s.n_eval > s.eval_pool:
      raise ValueError(f"sizes exceed the pools: {s}")
    self.tasks: dict[str, Task] = {}
    self._prefixes: set[str] = set()
    eval_users = [f"user_{i:04d}" for i in range(5000, 5100)]
    train_users = [f"user_{i:04d}" for i in range(400)]
    self.eval_pool = self._build_pool("eval", [s.eval_pool], eval_users)
    spare = s.train_pool - s.n_demos - s.n_ppo - s.n_rm
    self.train_pool = self._build_pool("train", [s.n_demos, s.n_ppo, s.n_rm, spare], train_users)
    self.known_words = self._build_known_words()

  @classmethod
  def from_seed(cls, seed: int = 0, sizes: WorldSizes | None = None, scale: float = 1.0) -> World:
    """The world of ``seed``; ``sizes`` (default :class:`WorldSizes`) times ``scale``."""
    return cls(seed, (sizes or WorldSizes()).scaled(scale))

  # --- pools ------------------------------------------------------------------------------------

  def _build_pool(self, split: str, segments: list[int], users: list[str]) -> list[Task]:
    """Consecutive segments (one per file), each holding the Table 1 mix in every user split."""
    rng = self._rng(f"pool/{split}")
    weights = _user_weights(len(users))
    cats = list(CATEGORY_MIX)
    share = {c: CATEGORY_MIX[c] / sum(CATEGORY_MIX.values()) for c in cats}
    pool: list[Task] = []
    for n in segments:
      per_user: Counter[str] = Counter()
      counts: dict[str, Counter[str]] = {}
      for _ in range(n):
        user = rng.choices(users, weights)[0]
        while per_user[user] >= MAX_PER_USER:
          user = rng.choices(users, weights)[0]
        per_user[user] += 1
        seen = counts.setdefault(assign_split(user), Counter())
        total = sum(seen.values()) + 1
        cat = max(cats, key=lambda c: share[c] * total - seen[c])
        seen[cat] += 1
        pool.append(self._new_task(rng, cat, user))
    return pool

  def _new_task(self, rng: random.Random, category: str, user: str) -> Task:
    for _ in range(5000):
      task = GENERATORS[category](self, rng, user)
      if task is None:
        continue
      key = normalize(task.prompt)
      prefix = " ".join(task.prompt.split())[:DEDUP_PREFIX_CHARS]
      if key in self.tasks or prefix in self._prefixes:
        continue
      self.tasks[key] = task
      self._prefixes.add(prefix)
      return task
    raise RuntimeError(f"could not generate a new {category} prompt")

  def _build_known_words(self) -> frozenset[str]:
    """Every word the world's texts use; other words in a response are invented."""
    known = set(self._lexicon) | TEMPLATE_WORDS | FLAGGED_WORDS
    for spec in [*self.train_pool, *self.eval_pool]:
      for text in (spec.prompt, *spec.variants):
        known.update(t.lower() for t in tokenize(text))
    for text in [*WORDY_PREFIXES, *WORDY_SUFFIXES]:
      known.update(tokenize(text))
    for text in corpus.pretraining_sentences(self, 800, self._rng("lexicon")):
      known.update(t.lower() for t in tokenize(text))
    return frozenset(w for w in known if w.isalpha())

  def task(self, prompt: str) -> Task:
    """The task of a prompt generated by this world; KeyError with a clear message otherwise."""
    try:
      return self.tasks[normalize(prompt)]
    except KeyError:
      raise KeyError(
        f"prompt not generated by the paper world of seed {self.seed} ({self.sizes}): "
        f"{prompt[:80]!r}; rebuild it with sim.files.load_world(out_dir)"
      ) from None

  # --- judging ----------------------------------------------------------------------------------

  def analyze(self, prompt: str, response: str, emphasis: Any = None) -> dict[str, Any]:
    """Criteria, gold score and metadata of one response (:func:`scoring.analyze`)."""
    return scoring.analyze(self, self.task(prompt), response, emphasis)

  def invented_words(self, prompt: str, response: str) -> list[str]:
    """Words of ``response`` that exist nowhere in the world's texts nor in ``prompt``."""
    return scoring.invented_words(self, prompt, [t.lower() for t in tokenize(response)])

  def gold_score(self, prompt: str, response: str, emphasis: Any = None) -> float:
    """The gold score in [0, 1] (``emphasis``: a labeler's helpful/truthful/harmless weights)."""
    return self.analyze(prompt, response, emphasis)["score"]

  # --- demonstrations and files -----------------------------------------------------------------

  def demonstration(self, spec: Task, rng: random.Random) -> str:
    """One contractor's answer: a correct phrasing, sometimes wordy, sometimes with a slip."""
    response = rng.choice(spec.variants)
    if rng.random() < self.sizes.slip_rate:
      response = self.slip(spec, response, rng)
    if rng.random() < self.sizes.wordy_rate:
      if rng.random() < 0.6:
        response = f"{rng.choice(WORDY_PREFIXES)} {response}"
      else:
        response = f"{response} {rng.choice(WORDY_SUFFIXES)}"
      if "caps" in spec.constraint_dict:
        response = response.upper()
    return response

  def slip(self, spec: Task, response: str, rng: random.Random) -> str:
    """A realistic mistake: a missed constraint, or one wrong value."""
    cons = spec.constraint_dict
    if cons and rng.random() < 0.5:
      if "caps" in cons:
        return response.lower()
      if "list" in cons:
        return response.replace(" ; ", " , ")
      if "happy" in cons:
        return response.replace(" !", " .")
      if ("n_sentences" in cons or "one_sentence" in cons) and spec.subject in self.entities:
        fact = rng.choice(self.entity_facts(spec.subject))
        return f"{response} {render_fact(fact, rng)}"
    tokens = response.split()
    slots = [i for i, t in enumerate(tokens) if t.lower() in self._lexicon or t.isdigit()]
    slots = [i for i, t in enumerate(tokens) if i in slots and t.lower() != spec.subject]
    if not slots:
      return response
    i = rng.choice(slots)
    tokens[i] = self.other_value(tokens[i], rng)
    return " ".join(tokens)

  def fewshot_prefix(self, n: int = 3) -> str:
    """``n`` short solved examples of different categories (from the end of the training pool,
    never evaluation prompts), one per line as ``"<prompt> <answer>"``, then a newline."""
    picked: list[Task] = []
    for spec in reversed(self.train_pool):
      if len(picked) == n:
        break
      if spec.category in {p.category for p in picked} or spec.constraints:
        continue
      if count_words(tokenize(spec.prompt)) <= 14:
        picked.append(spec)
    return "".join(f"{s.prompt} {s.variants[0]}\n" for s in picked)

  def pretraining_corpus(self, n_sentences: int, purpose: str = "pretrain") -> list[str]:
    """Paragraphs of plain statements, a few with a rude or unsafe sentence; with
    ``genre_text_rate`` > 0, that share of the paragraphs are :meth:`genre_paragraph` texts
    (from a stream of their own, so the statements stay those of the corpus without them)."""
    paragraphs = corpus.pretraining_corpus(
      self, n_sentences, self._rng(purpose), self.sizes.inappropriate_rate
    )
    genre_rate, profile_rate = self.sizes.genre_text_rate, self.sizes.profile_text_rate
    if genre_rate + profile_rate <= 0:
      return paragraphs
    rng = self._rng(f"{purpose}/genres")
    scale = len(paragraphs) / (1 - genre_rate - profile_rate)
    genre = [self.genre_paragraph(rng) for _ in range(round(scale * genre_rate))]
    genre += [self.profile_paragraph(rng) for _ in range(round(scale * profile_rate))]
    rng.shuffle(genre)
    # Spread them through the corpus (its order is the packing order of pretraining rows).
    slots = sorted(rng.randrange(len(paragraphs) + 1) for _ in genre)
    out, j = [], 0
    for i, p in enumerate(paragraphs):
      while j < len(slots) and slots[j] == i:
        out.append(genre[j])
        j += 1
      out.append(p)
    return out + genre[j:]

  def profile_paragraph(self, rng: random.Random) -> str:
    """A new animal (a name no entity has) with 3-5 random facts, then 1-3 of them stated
    again in other words: "bazu is a crow . bazu eats corn . ... bazu , a crow , eats corn ."."""
    name = rng.choice(self.fresh_names)
    facts = random_facts(self, rng)
    attrs = ["kind", *rng.sample(["color", "size", "home", "food", "age"], rng.randint(2, 4))]
    sents = [render_fact(Fact(name, a, facts[a]), rng) for a in attrs]
    again = rng.sample(attrs, rng.randint(1, min(3, len(attrs))))
    if "kind" in again and rng.random() < 0.5:
      sents.append(describe(name, {a: facts[a] for a in again}, rng))
    else:
      sents += [render_fact(Fact(name, a, facts[a]), rng) for a in again]
    return " ".join(sents)

  def genre_paragraph(self, rng: random.Random, n_texts: tuple[int, int] = (2, 5)) -> str:
    """A few texts of the prompts' genres, written as a page of such texts would be: correct
    answers of tasks drawn from the Table 1 mix for a user no file has, without their prompts.
    The tasks are not registered, so no pool, prompt or judgement changes."""
    cats = list(CATEGORY_MIX)
    weights = [CATEGORY_MIX[c] for c in cats]
    texts: list[str] = []
    while len(texts) < rng.randint(*n_texts):
      spec = GENERATORS[rng.choices(cats, weights)[0]](self, rng, "corpus")
      if spec is not None:
        texts.append(rng.choice(spec.variants))
    return " ".join(texts)

  def files(self) -> dict[str, list[dict]]:
    """The records of each file by name: ``pretrain``, ``demonstrations``, ``prompts`` (PPO),
    ``rm_prompts``, ``eval_prompts`` and ``nlp_tasks``."""
    s = self.sizes
    rng = self._rng("demonstrations")
    demos = [
      {**_record(t), "response": self.demonstration(t, rng)} for t in self.train_pool[: s.n_demos]
    ]
    a, b = s.n_demos, s.n_demos + s.n_ppo
    return {
      "pretrain": [{"text": t} for t in self.pretraining_corpus(s.n_pretrain_sentences)],
      "demonstrations": [
        {k: d[k] for k in ("prompt", "response", "user_id", "category")} for d in demos
      ],
      "prompts": [_record(t) for t in self.train_pool[a:b]],
      "rm_prompts": [_record(t) for t in self.train_pool[b : b + s.n_rm]],
      "eval_prompts": [_record(t) for t in self.eval_pool[: s.n_eval]],
      "nlp_tasks": nlp_tasks.nlp_task_records(self, s.n_nlp, self._rng("nlp_tasks")),
    }

  def meta(self) -> dict[str, Any]:
    """What ``world.json`` records besides the file counts (enough to rebuild the world)."""
    return {
      "world": NAME,
      "seed": self.seed,
      "sizes": dataclasses.asdict(self.sizes),
      "answer_cue": ANSWER_CUE,
    }


def _record(t: Task) -> dict[str, str]:
  return {"prompt": t.prompt, "user_id": t.user_id, "category": t.category}
