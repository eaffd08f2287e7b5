"""The "paper" world: the Table 1 mix in every pool, the gold score per category on hand-written
answers, inappropriate text, the public NLP tasks, demonstrations and labelers."""

import collections
import json

import numpy as np
import pytest

from instructgpt_jax import data as data_lib
from instructgpt_jax.sim import paper
from instructgpt_jax.sim.files import load_world, make_world, write_world
from instructgpt_jax.sim.labelers import METADATA, make_labeler_pools
from instructgpt_jax.sim.safety import is_inappropriate
from instructgpt_jax.sim.scoring import WEIGHTS
from instructgpt_jax.sim.tasks import CATEGORIES, CATEGORY_MIX, PROMPT_MARKERS
from instructgpt_jax.sim.text import ANSWER_CUE, tokenize
from tests import helpers

POOLS = ("demonstrations", "prompts", "rm_prompts", "eval_prompts")


@pytest.fixture(scope="module")
def world() -> paper.World:
  return paper.World.from_seed(1234)


@pytest.fixture(scope="module")
def files(world, tmp_path_factory) -> dict[str, str]:
  return write_world(str(tmp_path_factory.mktemp("paper")), world)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def first(world, category, task=None, constrained=None, where=lambda t: True):
  for t in world.train_pool:
    if (
      t.category == category
      and (task is None or t.task == task)
      and (constrained is None or bool(t.constraints) == constrained)
      and where(t)
    ):
      return t
  raise AssertionError(f"no {category}/{task} task")


# --- the mix -------------------------------------------------------------------------------------


def test_default_config_selects_the_paper_world():
  assert helpers.config("ppo").data.world == "paper"
  with pytest.raises(ValueError, match="Unknown world"):
    make_world("nope", 0)


def test_table1_mix_in_every_pool_and_split(files):
  assert sum(CATEGORY_MIX.values()) == pytest.approx(99.9)  # as printed in the paper (rounded)
  for name in POOLS:
    records = read_jsonl(files[name])
    # The world already obeys the hygiene: nothing is dropped downstream to skew the mix.
    splits, counts = data_lib.apply_hygiene(records, "prompts", data_lib.Hygiene())
    assert counts["dropped_duplicate_prefix"] == counts["dropped_user_cap"] == 0, name
    for group, rows in {"all": records, **splits}.items():
      if len(rows) < 100:  # the eval file's validation users are few; its whole file is checked
        continue
      share = collections.Counter(r["category"] for r in rows)
      for category, percent in CATEGORY_MIX.items():
        got = 100.0 * share[category] / len(rows)
        assert abs(got - percent) <= 1.5, (name, group, category, got)


def test_split_rule_is_the_data_pipelines():
  for i in range(300):
    user = f"user_{i:04d}"
    assert paper.assign_split(user) == data_lib.assign_split(user, (0.8, 0.1, 0.1))


def test_larger_training_pool_keeps_the_eval_prompts():
  small = paper.WorldSizes(
    n_pretrain_sentences=10, n_demos=100, n_ppo=100, n_rm=100, n_eval=200, n_nlp=10, train_pool=400
  )
  large = paper.WorldSizes(
    n_pretrain_sentences=10, n_demos=300, n_ppo=500, n_rm=300, n_eval=200, n_nlp=10, train_pool=1200
  )
  a, b = paper.World(3, small), paper.World(3, large)
  assert [t.prompt for t in a.eval_pool] == [t.prompt for t in b.eval_pool]
  assert not {t.prompt for t in b.train_pool} & {t.prompt for t in b.eval_pool}
  assert not {t.user_id for t in b.train_pool} & {t.user_id for t in b.eval_pool}


def test_prompts_and_answers_fit_the_context(world):
  for t in world.train_pool + world.eval_pool:
    assert t.prompt.endswith(" " + ANSWER_CUE)
    assert len(tokenize(t.prompt)) <= 40
    assert all(len(tokenize(v)) <= 21 for v in t.variants)


# --- gold score ----------------------------------------------------------------------------------


def test_weights_add_up_to_one():
  assert sum(WEIGHTS.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("category", CATEGORIES)
def test_reference_scores_one_and_echo_or_empty_lose(world, category):
  for t in [t for t in world.train_pool if t.category == category][:40]:
    for v in t.variants:
      assert world.gold_score(t.prompt, v) == pytest.approx(1.0), (t.prompt, v)
    assert world.gold_score(t.prompt, "") == 0.0
    assert world.gold_score(t.prompt, t.prompt) < 0.8, t.prompt


def test_following_with_a_wrong_fact_beats_ignoring_the_instruction(world):
  qa = first(world, "open_qa", constrained=False, where=lambda t: t.attr == "food")
  wrong_food = next(f for f in ("fish", "corn", "honey") if f != qa.answer)
  right = world.analyze(qa.prompt, f"{qa.subject} eats {qa.answer} .")
  wrong = world.analyze(qa.prompt, f"{qa.subject} eats {wrong_food} .")
  ignore = world.analyze(qa.prompt, "i like the sun .")
  assert right["score"] == 1.0 and wrong["truthful"] == 0.0 and ignore["fails_instruction"]
  assert right["score"] > wrong["score"] > ignore["score"]
  assert wrong["score"] == pytest.approx(0.8)

  story = first(
    world, "generation", "story", where=lambda t: t.constraints == (("n_sentences", 2),)
  )
  ent = world.entities[story.subject]
  other_color = next(c for c in ("red", "blue", "green") if c != ent.color)
  follows = f"{ent.name} is a {other_color} {ent.kind} . {ent.name} lives in {ent.home} ."
  off_topic = f"{world.names[0]} is a {world.entities[world.names[0]].kind} ."
  assert world.gold_score(story.prompt, follows) > world.gold_score(story.prompt, off_topic)
  assert 0.7 < world.gold_score(story.prompt, follows) < 1.0


def test_a_hallucinated_name_loses(world):
  notes = first(world, "generation", "notes", where=lambda t: len(t.constraints) == 1)
  outsider = next(n for n in world.names if n not in notes.prompt.split())
  padded = notes.reference[:-2] + f" and {outsider} is its friend ."
  result = world.analyze(notes.prompt, padded)
  assert result["hallucinated"] is True and result["score"] <= 0.8
  ext = first(world, "extraction", "name", constrained=False)
  listed = world.analyze(ext.prompt, ext.reference[:-2] + f" and {outsider} .")
  assert listed["hallucinated"] is True
  assert listed["score"] < world.gold_score(ext.prompt, ext.reference) - 0.2
  chat = first(world, "chat", "lost", constrained=False)
  other_town = next(t for t in world.towns if t not in chat.prompt.split())
  moved = chat.reference.replace(chat.reference.split()[-2], other_town)
  assert world.analyze(chat.prompt, moved)["hallucinated"] is True
  unanswerable = first(world, "closed_qa", "unanswerable")
  from_memory = world.analyze(unanswerable.prompt, "it is 5 years old .")
  assert from_memory["hallucinated"] is True and from_memory["score"] < 0.7


def test_an_inappropriate_sentence_loses(world):
  for category in ("generation", "chat", "open_qa"):
    t = first(world, category, constrained=False)
    rude = t.reference + f" shut up , {world.names[1]} ."
    result = world.analyze(t.prompt, rude)
    assert result["inappropriate"] is True and result["harmless"] == 0.0
    assert result["score"] <= world.gold_score(t.prompt, t.reference) - WEIGHTS["harmless"]
  assert is_inappropriate("tami is a STUPID fox .") and is_inappropriate("feed poison to bori .")
  assert not is_inappropriate("tami is a red fox . i hope this helps .")


def test_a_broken_explicit_constraint_loses(world):
  caps = first(world, "open_qa", where=lambda t: ("caps", 1) in t.constraints)
  lower = world.analyze(caps.prompt, caps.reference.lower())
  assert lower["constraint_ok"] is False and lower["score"] < 1.0
  assert lower["score"] == pytest.approx(1.0 - WEIGHTS["constraint"])
  listed = first(world, "brainstorming", where=lambda t: ("list", 1) in t.constraints)
  assert world.gold_score(listed.prompt, listed.reference.replace(" ; ", " , ")) < 1.0
  counted = first(
    world, "generation", "notes", where=lambda t: t.constraint_dict.get("n_sentences") == 1
  )
  extra = counted.reference + f" {counted.subject} is happy ."
  assert world.analyze(counted.prompt, extra)["constraint_ok"] is False
  avoid = first(world, "brainstorming", where=lambda t: "avoid" in t.constraint_dict)
  word = str(avoid.constraint_dict["avoid"])
  broke = avoid.reference.replace(avoid.reference.split()[0], word, 1)
  assert world.analyze(avoid.prompt, broke)["constraint_ok"] is False
  three = first(
    world, "brainstorming", "food", where=lambda t: t.k == 3 and len(t.constraints) == 1
  )
  assert world.analyze(three.prompt, "fish and corn .")["constraint_ok"] is False


def test_rambling_and_repetition_lose(world):
  for category in CATEGORIES:
    t = first(world, category)
    twice = world.analyze(t.prompt, t.reference + " " + t.reference)
    assert twice["terminated"] is False and twice["score"] < 1.0, category
  assert not PROMPT_MARKERS & set(tokenize(" ".join(t.reference for t in world.train_pool[:500])))


# --- files: corpus, demonstrations, NLP tasks -----------------------------------------------------


def test_files_parse_and_rebuild(files):
  again = load_world(files["world"].rsplit("/", 1)[0])
  assert isinstance(again, paper.World)
  for name in POOLS:
    for r in read_jsonl(files[name])[:40]:
      again.task(r["prompt"])
  demos = read_jsonl(files["demonstrations"])
  assert all(set(r) == {"prompt", "response", "user_id", "category"} for r in demos)


def test_corpus_holds_a_few_inappropriate_sentences_and_no_instructions(files):
  texts = [r["text"] for r in read_jsonl(files["pretrain"])]
  rate = np.mean([is_inappropriate(t) for t in texts])
  assert 0.02 < rate < 0.06
  joined = " ".join(texts)
  assert "?" not in joined and ANSWER_CUE not in joined


def test_demonstrations_are_good_but_imperfect_and_never_rude(world, files):
  demos = read_jsonl(files["demonstrations"])
  scores = np.array([world.gold_score(r["prompt"], r["response"]) for r in demos])
  assert 0.9 < scores.mean() < 0.995
  assert (scores < 0.999).mean() > 0.05
  assert not any(is_inappropriate(r["response"]) for r in demos)


def test_nlp_tasks_never_use_eval_prompts_users_or_labelers(world, files):
  nlp = read_jsonl(files["nlp_tasks"])
  evals = read_jsonl(files["eval_prompts"])
  assert len(nlp) == world.sizes.n_nlp
  assert all(set(r) == {"prompt", "response", "user_id", "category"} for r in nlp)
  assert not {r["prompt"] for r in nlp} & {r["prompt"] for r in evals}
  assert not {r["user_id"] for r in nlp} & {r["user_id"] for r in evals}
  eval_prefixes = {r["prompt"][:100] for r in evals}
  assert not any(r["prompt"][:100] in eval_prefixes for r in nlp)
  assert all(r["user_id"].startswith("nlp_") for r in nlp)
  pool_prompts = {t.prompt for t in world.train_pool + world.eval_pool}
  assert not {r["prompt"] for r in nlp} & pool_prompts
  assert {r["category"] for r in nlp} == {"nlp_boolq", "nlp_nli", "nlp_qa"}
  assert {r["response"] for r in nlp if r["category"] != "nlp_qa"} == {"yes .", "no ."}


# --- labelers ------------------------------------------------------------------------------------


def test_labelers_have_their_own_priorities_and_give_metadata(world):
  train, heldout = make_labeler_pools(1234, world=world)
  assert all(lab.emphasis is not None for lab in train + heldout)
  assert len({lab.emphasis for lab in train + heldout}) == len(train) + len(heldout)
  knowledge = make_world("knowledge", 1234, 0.05)
  assert all(lab.emphasis is None for lab in make_labeler_pools(1234, world=knowledge)[0])
  t = first(world, "chat", constrained=False)
  rng = np.random.default_rng(0)
  judged = heldout[0].judge(t.prompt, t.reference + " shut up .", rng)
  assert 1 <= judged["likert"] <= 7 and set(METADATA) <= set(judged)
  assert judged["inappropriate"] is True
  good = [heldout[0].judge(t.prompt, t.reference, rng)["likert"] for _ in range(50)]
  bad = [heldout[0].judge(t.prompt, "i like the sun .", rng)["likert"] for _ in range(50)]
  assert np.mean(good) > np.mean(bad)


def test_invented_words_are_words_found_nowhere_in_the_world_or_the_prompt(world):
  spec = first(world, "generation", "notes")
  name = spec.subject
  assert world.invented_words(spec.prompt, f"{name} is a red fox .") == []
  # Fragments and misspellings are invented; a word of the prompt (even an unknown one) is not.
  assert world.invented_words(spec.prompt, "cr lupawi dad .") == ["cr", "lupawi", "dad"]
  assert world.invented_words("zqxv says : i lost my hat . answer :", "zqxv , zqxw !") == ["zqxw"]
  assert world.analyze(spec.prompt, "n wiecee .")["nonword"] is True
  assert world.analyze(spec.prompt, f"{name} eats fish .")["nonword"] is False
  assert world.analyze(spec.prompt, "")["nonword"] is False  # Empty: nothing invented.
