"""Preference-model pretraining's pairs: one corruption each, the corpus's own words."""

import random

from instructgpt_jax import preference_pretraining as pmp

WORDS = "moro is a gray lizard and lives in millwick".split()
VOCABULARY = ["gray", "blue", "lizard", "cat", "millwick", "ashford", "lives", "and"]


def _changed(a, b):
  return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


def test_swap_replaces_one_content_word_with_another_corpus_word():
  for seed in range(20):
    out = pmp.swap_word(WORDS, VOCABULARY, random.Random(seed))
    (i,) = _changed(WORDS, out)
    assert len(out) == len(WORDS) and len(WORDS[i]) >= 3 and WORDS[i].isalpha()
    assert out[i] in VOCABULARY and out[i] != WORDS[i]


def test_garble_shuffles_the_inner_letters_of_one_word():
  for seed in range(20):
    out = pmp.garble_word(WORDS, random.Random(seed))
    (i,) = _changed(WORDS, out)
    assert out[i][0] == WORDS[i][0] and out[i][-1] == WORDS[i][-1]
    assert sorted(out[i]) == sorted(WORDS[i]) and out[i] != WORDS[i]


def test_nothing_to_corrupt_gives_none():
  assert pmp.swap_word(["a", "is", "."], VOCABULARY, random.Random(0)) is None
  assert pmp.swap_word(WORDS, ["gray"], random.Random(0)) is None
  assert pmp.garble_word(["a", "cat", "saw", "eel", "."], random.Random(0)) is None


def test_comparisons_rank_the_paragraph_above_its_corrupted_copies():
  texts = [
    "pepon is big . pepon is friends with saso . the food of pepon is apples .",
    "difi , puko and musi are blue .",  # One sentence: no response, skipped.
    "moro is a lizard . moro is eight years old . moro lives in millwick . moro is gray .",
  ]
  out = pmp.corrupted_comparisons(texts, random.Random(0), max_response_sentences=2)
  assert [c["prompt"] for c in out] == ["pepon is big .", "moro is a lizard ."]
  first, second = out
  assert first["responses"][0] == "pepon is friends with saso . the food of pepon is apples ."
  assert second["responses"][0] == "moro is eight years old . moro lives in millwick ."
  corpus_words = {w for t in texts for w in t.split()}
  for c in out:
    assert c["ranking"] == [0, 1, 1]
    original, swapped, garbled = (r.split() for r in c["responses"])
    (i,) = _changed(original, swapped)
    assert swapped[i] in corpus_words
    (j,) = _changed(original, garbled)
    assert garbled[j] not in corpus_words
