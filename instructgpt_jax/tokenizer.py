"""SentencePiece tokenizer: trained in-process (no downloads), fixed special ids.

Special ids are the same for every tokenizer the project trains, so the model and
the data layout can rely on them: pad=0, unk=1, bos=2, eos=3.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(
  texts: Iterable[str],
  path: str,
  vocab_size: int,
  *,
  model_type: str = "bpe",
  byte_fallback: bool = True,
  character_coverage: float = 1.0,
  **trainer_kwargs: Any,
) -> Tokenizer:
  """Trains a SentencePiece model on `texts`, writes it to `path`, returns it.

  Deterministic: one training thread (multi-threaded training gives different
  models from run to run) and no sampling of input sentences.
  Text is kept exactly (identity normalisation, whitespace kept), so that
  `decode(encode(s)) == s` also for newlines, runs of spaces and code; with
  `byte_fallback` any character, even one unseen in training, encodes without
  <unk> (costs 256 byte pieces of the vocabulary).
  `trainer_kwargs` are passed through to `SentencePieceTrainer.train`.
  """
  options: dict[str, Any] = dict(
    vocab_size=vocab_size,
    model_type=model_type,
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    byte_fallback=byte_fallback,
    character_coverage=character_coverage,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    # Newline as its own piece: instructions are multi-line.
    user_defined_symbols=["\n"],
    split_digits=True,
    num_threads=1,
    shuffle_input_sentence=False,
    minloglevel=2,
  )
  options.update(trainer_kwargs)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, **options)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return Tokenizer.load(path)


class Tokenizer:
  """Thin wrapper over a SentencePiece model with the project's conventions."""

  def __init__(self, processor: spm.SentencePieceProcessor, path: str = "<memory>"):
    self._sp = processor
    self.path = path

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"Tokenizer model file not found: {path!r} "
        "(train one with instructgpt_jax.tokenizer.train_tokenizer)."
      )
    return cls(spm.SentencePieceProcessor(model_file=path), path)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` over many texts (one C++ call, faster than a Python loop)."""
    return self._sp.encode(list(texts))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`: pad and BOS ids are ignored, decoding stops at the first EOS.

    Stopping at EOS makes sampled sequences (which continue after EOS inside a
    fixed-size buffer) decode to what the model actually said.
    """
    out: list[int] = []
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i == self.eos_id:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(i)
    return self._sp.decode(out)

  def check_vocab(self, model_vocab_size: int) -> None:
    """Raises ValueError unless the model's vocabulary size equals the tokenizer's."""
    if model_vocab_size != self.vocab_size:
      raise ValueError(
        f"Tokenizer {self.path!r} has vocab_size={self.vocab_size} but the "
        f"model has vocab_size={model_vocab_size}; they must match "
        "(set the model's vocab_size from the tokenizer)."
      )
