"""Preference-model pretraining (not in the paper; Askell et al. 2021, "A General Language
Assistant as a Laboratory for Alignment", Sec. 4): ranking pairs built from plain text alone.

Each paragraph of the pretraining file's train split becomes one comparison: its first sentence
is the prompt, the next sentences the response, ranked above two corrupted copies of that
response, one with a word replaced by another word of the corpus (a wrong fact, or broken
grammar) and one with a word's inner letters shuffled (a word that does not exist). The reward
model learns these rankings for `rm.pmp.steps` steps before it sees a human comparison. Nothing
here reads a prompt file, a user or a label: the pairs hold only text the base model was
pretrained on.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from instructgpt_jax import data as data_lib
from instructgpt_jax.workspace import Workspace

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words eligible for a corruption: letters only, long enough to carry content.
_MIN_WORD = 3
# Ranks of (original, word swapped, word garbled): the original wins both pairs.
RANKING = (0, 1, 1)


def _content_positions(words: Sequence[str], min_len: int) -> list[int]:
  return [i for i, w in enumerate(words) if w.isalpha() and len(w) >= min_len]


def swap_word(
  words: Sequence[str], vocabulary: Sequence[str], rng: random.Random
) -> list[str] | None:
  """`words` with one content word replaced by another word of `vocabulary`; None when there
  is no content word or no other word to put in its place."""
  positions = _content_positions(words, _MIN_WORD)
  if not positions or len(vocabulary) < 2:
    return None
  i = rng.choice(positions)
  new = words[i]
  while new == words[i]:
    new = rng.choice(vocabulary)
  return [*words[:i], new, *words[i + 1 :]]


def garble_word(words: Sequence[str], rng: random.Random) -> list[str] | None:
  """`words` with one word of 4+ letters rewritten by shuffling its inner letters (first and
  last kept); None when no word has two different inner letters to shuffle."""
  positions = [i for i in _content_positions(words, 4) if len(set(words[i][1:-1])) > 1]
  if not positions:
    return None
  i = rng.choice(positions)
  word, inner = words[i], list(words[i][1:-1])
  while word == words[i]:
    rng.shuffle(inner)
    word = words[i][0] + "".join(inner) + words[i][-1]
  return [*words[:i], word, *words[i + 1 :]]


def corrupted_comparisons(
  texts: Sequence[str], rng: random.Random, max_response_sentences: int = 3
) -> list[dict[str, Any]]:
  """Comparisons from paragraphs: {"prompt", "responses": [original, swapped, garbled],
  "ranking": RANKING} for each paragraph of two or more sentences whose response (the next
  `max_response_sentences` sentences) can be corrupted both ways. The replacement words are
  the corpus's own (its distinct alphabetic words of 3+ letters)."""
  vocabulary = sorted({w for t in texts for w in t.split() if w.isalpha() and len(w) >= _MIN_WORD})
  out = []
  for text in texts:
    sentences = _SENTENCE_END.split(text.strip())
    if len(sentences) < 2:
      continue
    words = " ".join(sentences[1 : 1 + max_response_sentences]).split()
    swapped, garbled = swap_word(words, vocabulary, rng), garble_word(words, rng)
    if swapped is None or garbled is None:
      continue
    out.append(
      {
        "prompt": sentences[0],
        "responses": [" ".join(words), " ".join(swapped), " ".join(garbled)],
        "ranking": list(RANKING),
      }
    )
  return out


def comparison_arrays(ws: Workspace, seed: int) -> dict[str, Any]:
  """The pretraining file's train paragraphs as corrupted comparisons, laid out like the
  human ones (`data.encode_comparisons`): tokens/mask [N, K_max, seq], ranks [N, K_max]."""
  texts = [r["text"] for r in ws.records("pretraining", "train")]
  comparisons = corrupted_comparisons(texts, random.Random(seed))
  d = ws.config.data
  return data_lib.encode_comparisons(
    ws.tokenizer(),
    [c["prompt"] for c in comparisons],
    [c["responses"] for c in comparisons],
    [c["ranking"] for c in comparisons],
    d.prompt_len,
    d.response_len,
    K_max=len(RANKING),
  )
