"""Tokenizer: in-process training, special ids, round trips, errors."""

import random

import numpy as np
import pytest

from instructgpt_jax.tokenizer import Tokenizer, train_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog list three colors summarize answer".split()


def corpus(n: int = 300) -> list[str]:
  rng = random.Random(0)
  return [
    " ".join(rng.choice(WORDS) for _ in range(10)) + ("\nQ: 42  items" if i % 3 == 0 else "")
    for i in range(n)
  ]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
  return train_tokenizer(corpus(), str(tmp_path_factory.mktemp("tok") / "t.model"), vocab_size=400)


def test_special_ids_are_distinct_and_fixed(tok):
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert tok.vocab_size == 400


@pytest.mark.parametrize(
  "text", ["the lazy dog", "Hello  World\n\tline two 123", "unseen chars é ✓ 日本"]
)
def test_round_trip_is_exact(tok, text):
  ids = tok.encode(text)
  assert tok.bos_id not in ids and tok.eos_id not in ids  # encode adds no specials
  assert tok.unk_id not in ids  # byte fallback covers unseen characters
  assert tok.decode(ids) == text


def test_decode_ignores_pad_and_bos_and_stops_at_eos(tok):
  ids = tok.encode("the fox")
  padded = [
    tok.pad_id,
    tok.pad_id,
    tok.bos_id,
    *ids,
    tok.eos_id,
    *tok.encode("garbage"),
    tok.pad_id,
  ]
  assert tok.decode(padded) == "the fox"
  assert tok.decode(np.array(padded, dtype=np.int32)) == "the fox"


def test_training_is_deterministic(tmp_path):
  a = train_tokenizer(corpus(), str(tmp_path / "a.model"), vocab_size=400)
  b = train_tokenizer(corpus(), str(tmp_path / "b.model"), vocab_size=400)
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert a.encode("a quick summary") == b.encode("a quick summary")


def test_load_round_trip(tok):
  again = Tokenizer.load(tok.path)
  assert again.encode("three colors") == tok.encode("three colors")


def test_missing_file_names_the_path(tmp_path):
  path = str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    Tokenizer.load(path)


def test_check_vocab(tok):
  tok.check_vocab(400)
  with pytest.raises(ValueError, match=r"400.*512"):
    tok.check_vocab(512)
