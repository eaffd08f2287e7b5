"""The world's written language: tokenization and small text helpers shared by both worlds.

Lowercase words, digit runs and punctuation marks as separate tokens (``"tami is a red fox ."``);
every prompt ends with :data:`ANSWER_CUE`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

ANSWER_CUE = "answer :"
TERMINAL = frozenset({".", "!", "?", ";"})
_TOKEN_RE = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def tokenize(text: str) -> list[str]:
  """Split text into words, digit runs and single punctuation marks (case kept)."""
  return _TOKEN_RE.findall(text)


def normalize(text: str) -> str:
  """Whitespace/punctuation-spacing normal form of a text (case kept)."""
  return " ".join(tokenize(text))


def count_words(tokens: Sequence[str]) -> int:
  """Number of alphanumeric tokens."""
  return sum(1 for t in tokens if t[0].isalnum())


def join_and(items: Sequence[str]) -> str:
  """``a , b and c``."""
  return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]


def split_sentences(text: str) -> list[str]:
  """The sentences of a text whose sentences end with `` .``."""
  return [s.strip() + " ." for s in text.split(" .") if s.strip()]


def split_clauses(low: Sequence[str]) -> list[list[str]]:
  """Token runs between terminal marks (``. ! ? ;``)."""
  clauses, cur = [], []
  for t in low:
    if t in TERMINAL:
      if cur:
        clauses.append(cur)
      cur = []
    else:
      cur.append(t)
  if cur:
    clauses.append(cur)
  return clauses


def count_sentences(low: Sequence[str]) -> int:
  """Number of sentences with a word (list items separated by `` ; `` do not count)."""
  return sum(
    1 for c in split_clauses([t for t in low if t != ";"]) if any(w[0].isalnum() for w in c)
  )


def all_caps(tokens: Sequence[str]) -> bool:
  """No lower-case letter (digits alone count as capitals)."""
  return not any(c.islower() for t in tokens for c in t)


def article(word: str) -> str:
  """``a`` or ``an`` before ``word``."""
  return "an" if word[0] in "aeiou" else "a"


def f1(pred: Sequence[str], gold: Sequence[str]) -> float:
  """F1 of two multisets of tokens."""
  common = sum((Counter(pred) & Counter(gold)).values())
  if common == 0:
    return 0.0
  p, r = common / len(pred), common / len(gold)
  return 2 * p * r / (p + r)


def join_or(items: Sequence[str]) -> str:
  """``a , b or c``."""
  return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " or " + items[-1]
