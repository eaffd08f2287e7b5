"""A Hugging Face checkpoint's tokenizer and chat template, behind `tokenizer.Tokenizer`'s interface.

`HfTokenizer.load(directory)` reads `tokenizer.json` with the `tokenizers` library (no
transformers, no downloads) and the special tokens from `tokenizer_config.json`, then
`generation_config.json`, then `config.json`. Its ids replace the fixed ones of the project's own
sentencepiece model (pad=0, unk=1, bos=2, eos=3) everywhere the pipeline reads `tok.pad_id`,
`tok.eos_id` and `tok.bos_id` (padding, sampling's EOS, the missing-EOS penalty).

Special tokens, in the pipeline's layout ([BOS] prompt | response EOS):
  eos: tokenizer_config's eos_token (a chat model's end of turn, e.g. <|im_end|>, <|eot_id|>),
       else generation_config's (first) eos_token_id, else config.json's.
  bos: tokenizer_config's bos_token, else config.json's bos_token_id, else None: then prompts
       start without one (Qwen has no BOS).
  pad: pad_token, else unk_token, else a borrowed id other than EOS (GPT-2 has no pad token).
       Padding is masked everywhere, and `decode` strips pads only at the two ends where the
       layout puts them, so a borrowed id that also occurs inside text decodes correctly.

Chat templates are rendered with jinja2 the way transformers renders them (sandboxed,
trim_blocks, lstrip_blocks, `raise_exception`, `tojson`), except that `bos_token` renders as
the empty string: the pipeline adds the BOS id itself, and the text would add it a second time.

The other way, `write_sentencepiece_as_hf(model_file, directory)` writes the project's own
sentencepiece BPE model as tokenizer.json + tokenizer_config.json (special tokens and a chat
template of the world's prompt format), so that an exported model loads with transformers'
`AutoTokenizer` alone (transformers 5 cannot read a bare tokenizer.model).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from instructgpt_jax import tokenizer as tokenizer_lib

Message = Mapping[str, Any]


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _token_text(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, Mapping):
    return value.get("content")
  return value if isinstance(value, str) else None


def _first_id(value: Any) -> int | None:
  if isinstance(value, list):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def _chat_template(directory: str, tok_cfg: Mapping[str, Any]) -> str | None:
  """The default chat template: chat_template.jinja (transformers >= 4.50) or tokenizer_config's
  chat_template (a string, or a list of named templates of which "default" is taken)."""
  jinja = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(jinja):
    with open(jinja) as f:
      return f.read()
  template = tok_cfg.get("chat_template")
  if isinstance(template, list):
    named = {t["name"]: t["template"] for t in template}
    return named.get("default")
  return template


class HfTokenizer:
  """`tokenizers.Tokenizer` with the interface of `tokenizer.Tokenizer` and a chat template."""

  def __init__(
    self,
    tokenizer: Any,
    *,
    eos_id: int,
    bos_id: int | None,
    pad_id: int,
    unk_id: int | None = None,
    chat_template: str | None = None,
    eos_token: str = "",
    path: str = "<memory>",
  ):
    if pad_id == eos_id:
      raise ValueError(
        f"The pad id must differ from the EOS id ({eos_id}): sampling writes pads after EOS."
      )
    self._tk = tokenizer
    self._eos, self._bos, self._pad, self._unk = eos_id, bos_id, pad_id, unk_id
    self.chat_template = chat_template
    self.eos_token = eos_token
    self.path = path

  @classmethod
  def load(cls, directory: str, pad_token: str | None = None) -> HfTokenizer:
    """Reads `directory`/tokenizer.json and its special tokens; `pad_token` overrides the pad."""
    from tokenizers import Tokenizer as RustTokenizer  # pylint: disable=import-outside-toplevel

    file = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(file):
      raise FileNotFoundError(
        f"{file} not found: only fast tokenizers (tokenizer.json) are read; convert a "
        "SentencePiece-only checkpoint with transformers' AutoTokenizer(...).save_pretrained."
      )
    tk = RustTokenizer.from_file(file)
    tok_cfg = _read_json(os.path.join(directory, "tokenizer_config.json"))
    gen_cfg = _read_json(os.path.join(directory, "generation_config.json"))
    model_cfg = _read_json(os.path.join(directory, "config.json"))

    def id_of(field: str, text: str | None) -> int | None:
      if text is None:
        return None
      token_id = tk.token_to_id(text)
      if token_id is None:
        raise ValueError(
          f"{directory}/tokenizer_config.json {field}={text!r} is not in tokenizer.json."
        )
      return token_id

    eos = id_of("eos_token", _token_text(tok_cfg.get("eos_token")))
    if eos is None:
      eos = _first_id(gen_cfg.get("eos_token_id", model_cfg.get("eos_token_id")))
    if eos is None:
      raise ValueError(
        f"{directory} names no EOS token (tokenizer_config.json eos_token, generation_config.json "
        "or config.json eos_token_id): the pipeline needs one to end responses."
      )
    bos = id_of("bos_token", _token_text(tok_cfg.get("bos_token")))
    if bos is None and "bos_token" not in tok_cfg:
      bos = _first_id(gen_cfg.get("bos_token_id", model_cfg.get("bos_token_id")))
    unk = id_of("unk_token", _token_text(tok_cfg.get("unk_token")))
    pad = id_of("pad_token", pad_token or _token_text(tok_cfg.get("pad_token")))
    if pad is None:
      pad = _first_id(gen_cfg.get("pad_token_id", model_cfg.get("pad_token_id")))
    if pad is None or pad == eos:
      # Borrow an ordinary id: padding is masked, and decode strips only edge pads.
      pad = unk if unk is not None and unk != eos else (0 if eos != 0 else 1)
      logging.warning(
        "%s has no pad token distinct from EOS; padding with id %d (%r).",
        directory,
        pad,
        tk.id_to_token(pad),
      )
    return cls(
      tk,
      eos_id=eos,
      bos_id=bos,
      pad_id=pad,
      unk_id=unk,
      chat_template=_chat_template(directory, tok_cfg),
      eos_token=tk.id_to_token(eos) or "",
      path=directory,
    )

  @property
  def vocab_size(self) -> int:
    return self._tk.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def unk_id(self) -> int | None:
    return self._unk

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS (special tokens written in the text are parsed)."""
    return self._tk.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`: leading pads and BOS skipped, stops at the first EOS, trailing pads cut."""
    seq = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    start = 0
    while start < len(seq) and seq[start] in (self._pad, self._bos):
      start += 1
    out: list[int] = []
    for i in seq[start:]:
      if i == self._eos:
        break
      out.append(i)
    while out and out[-1] == self._pad:
      out.pop()
    return self._tk.decode(out, skip_special_tokens=False)

  def check_vocab(self, model_vocab_size: int) -> None:
    """Raises ValueError if the tokenizer has ids the model's embedding lacks. Checkpoints often
    pad the embedding past the tokenizer (Qwen2.5: 151936 rows, 151665 tokens), so fewer is fine.
    """
    if self.vocab_size > model_vocab_size:
      raise ValueError(
        f"Tokenizer {self.path!r} has {self.vocab_size} tokens but the model's vocab_size is "
        f"{model_vocab_size}; the tokenizer must belong to the model."
      )

  def render_chat(
    self, messages: Sequence[Message], add_generation_prompt: bool = False, **kwargs: Any
  ) -> str:
    """`messages` ([{"role", "content"}, ...]) as text through the checkpoint's chat template."""
    if not self.chat_template:
      raise ValueError(f"{self.path} has no chat template (tokenizer_config.json chat_template).")
    return render_chat_template(
      self.chat_template,
      messages,
      add_generation_prompt=add_generation_prompt,
      eos_token=self.eos_token,
      **kwargs,
    )


def render_chat_template(
  template: str,
  messages: Sequence[Message],
  *,
  add_generation_prompt: bool = False,
  bos_token: str = "",
  eos_token: str = "",
  **kwargs: Any,
) -> str:
  """Renders a Hugging Face chat template with jinja2 as transformers does."""
  import jinja2  # pylint: disable=import-outside-toplevel
  import jinja2.ext  # pylint: disable=import-outside-toplevel
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=import-outside-toplevel

  def raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

  def strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)

  env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
  )
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(template).render(
    messages=[dict(m) for m in messages],
    add_generation_prompt=add_generation_prompt,
    bos_token=bos_token,
    eos_token=eos_token,
    **kwargs,
  )


# --------------------------------------------------------------------------------------
# The project's sentencepiece model as tokenizer.json (for transformers' AutoTokenizer)
# --------------------------------------------------------------------------------------

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPM_BPE = 2
_METASPACE = "\u2581"  # "▁", which sentencepiece writes for a space.

# The world's prompt format (data.encode_sft): BOS, the prompt's text (ending in "answer :"), then
# the response, tokenized on its own, so its first piece carries the space ("▁word"); then EOS.
# The assistant's turn therefore opens with nothing: the model writes the space itself.
WORLD_CHAT_TEMPLATE = (
  "{{ bos_token }}{% for message in messages %}"
  "{% if message['role'] == 'user' %}{{ message['content'] }}"
  "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
  "{% else %}{{ raise_exception('The built-in world has only user and assistant turns, not ' + "
  "message['role'] + '.') }}{% endif %}{% endfor %}"
)


def _spm_proto(model_file: str) -> Any:
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel

  proto = sentencepiece_model_pb2.ModelProto()
  with open(model_file, "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def tokenizer_from_sentencepiece(model_file: str) -> Any:
  """A `tokenizers.Tokenizer` that encodes and decodes every text as the sentencepiece BPE model
  at `model_file` does, for models trained as `tokenizer.train_tokenizer` trains them (identity
  normalisation, whitespace kept, byte fallback, single-character user-defined pieces).

  How sentencepiece's BPE encodes (bpe_model.cc): a "▁" is put before the text and for every
  space, the text is split into characters (a user-defined piece stays one symbol), then the
  adjacent pair whose concatenation is the highest-scoring normal piece is merged, again and
  again; a character outside the vocabulary becomes its UTF-8 bytes <0xNN>. A BPE model of
  `tokenizers` merges by rank instead, so every split of every normal piece into two normal
  pieces is a merge, ranked by the score of the piece it makes. Without a pre-tokenizer the
  whole text is one word, as in sentencepiece (whitespace-only pieces such as "▁▁" can form).
  Raises ValueError for a model this mapping does not reproduce (unigram, other normalisers,
  multi-character user-defined pieces).
  """
  from tokenizers import (  # pylint: disable=import-outside-toplevel
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    processors,
  )

  proto = _spm_proto(model_file)
  norm, trainer = proto.normalizer_spec, proto.trainer_spec

  def refuse(field: str, value: Any, why: str) -> None:
    raise ValueError(f"{model_file}: {field}={value!r} cannot be written as tokenizer.json: {why}.")

  if trainer.model_type != _SPM_BPE:
    refuse("trainer_spec.model_type", trainer.model_type, "only BPE models are converted")
  if norm.name != "identity" or norm.precompiled_charsmap:
    refuse("normalizer_spec.name", norm.name, "only identity normalisation is converted")
  for field, want in (
    ("add_dummy_prefix", True),
    ("escape_whitespaces", True),
    ("remove_extra_whitespaces", False),
  ):
    if getattr(norm, field) != want:
      refuse(f"normalizer_spec.{field}", getattr(norm, field), f"the converter assumes {want}")
  if trainer.treat_whitespace_as_suffix:
    refuse("trainer_spec.treat_whitespace_as_suffix", True, "the space must start a piece")
  if not trainer.byte_fallback:
    refuse("trainer_spec.byte_fallback", False, "unknown characters must become bytes")
  pieces = list(proto.pieces)
  for p in pieces:
    # A user-defined piece of one character is an ordinary vocabulary entry that no merge
    # touches (sentencepiece never merges it either); a longer one would need splitting first.
    if p.type == _USER_DEFINED and len(p.piece) != 1:
      refuse("user-defined piece", p.piece, "only single characters are converted")
    if p.type == _UNUSED:
      refuse("unused piece", p.piece, "sentencepiece re-splits unused pieces")
  vocab = {p.piece: i for i, p in enumerate(pieces)}
  normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
  ranked = sorted(
    (-score, i, piece[:k], piece[k:])
    for piece, (score, i) in normal.items()
    for k in range(1, len(piece))
    if piece[:k] in normal and piece[k:] in normal
  )
  unk = next(p.piece for p in pieces if p.type == _UNKNOWN)
  tk = Tokenizer(
    models.BPE(
      vocab=vocab,
      merges=[(a, b) for _, _, a, b in ranked],
      unk_token=unk,
      byte_fallback=True,
      fuse_unk=False,
    )
  )
  # Prepend acts on the whole text (a special token written in it would start a new one).
  tk.normalizer = normalizers.Sequence(
    [normalizers.Prepend(_METASPACE), normalizers.Replace(" ", _METASPACE)]
  )
  # Decoding drops the one space that the dummy prefix put before the first piece.
  tk.decoder = decoders.Sequence(
    [
      decoders.Replace(_METASPACE, " "),
      decoders.ByteFallback(),
      decoders.Fuse(),
      decoders.Strip(" ", 1, 0),
    ]
  )
  specials = [p.piece for p in pieces if p.type in (_CONTROL, _UNKNOWN)]
  tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  bos, eos = pieces[trainer.bos_id].piece, pieces[trainer.eos_id].piece
  # tokenizer(prompt) = BOS + prompt, as the policy saw it; tokenizer(prompt, response) =
  # BOS + prompt + response + EOS, the sequence the reward model scores.
  tk.post_processor = processors.TemplateProcessing(
    single=f"{bos} $A",
    pair=f"{bos} $A $B {eos}",
    special_tokens=[(bos, trainer.bos_id), (eos, trainer.eos_id)],
  )
  return tk


def write_sentencepiece_as_hf(
  model_file: str,
  directory: str,
  *,
  model_max_length: int,
  chat_template: str = WORLD_CHAT_TEMPLATE,
) -> list[str]:
  """Writes tokenizer.json (`tokenizer_from_sentencepiece`) and tokenizer_config.json (special
  tokens, `chat_template`) for the sentencepiece model at `model_file`; returns the file names.

  The special tokens are the project's fixed ids (tokenizer.py): pad 0, unk 1, bos 2, eos 3.
  """
  proto = _spm_proto(model_file)
  trainer, pieces = proto.trainer_spec, proto.pieces
  special = {
    name + "_token": pieces[i].piece
    for name, i in (
      ("pad", trainer.pad_id),
      ("unk", trainer.unk_id),
      ("bos", trainer.bos_id),
      ("eos", trainer.eos_id),
    )
    if i >= 0
  }
  if trainer.pad_id != tokenizer_lib.PAD_ID or trainer.eos_id != tokenizer_lib.EOS_ID:
    raise ValueError(
      f"{model_file} has pad id {trainer.pad_id} and eos id {trainer.eos_id}, not the project's "
      f"{tokenizer_lib.PAD_ID} and {tokenizer_lib.EOS_ID}: it is not one tokenizer.py trained."
    )
  os.makedirs(directory, exist_ok=True)
  tokenizer_from_sentencepiece(model_file).save(os.path.join(directory, "tokenizer.json"))
  config = dict(
    tokenizer_class="PreTrainedTokenizerFast",
    model_max_length=model_max_length,
    # Decoding must give back the text exactly (no " ." -> "." clean-up: the world writes " .").
    clean_up_tokenization_spaces=False,
    # No token_type_ids: GPT-2 would add their embeddings (transformers 4 returns them by default).
    model_input_names=["input_ids", "attention_mask"],
    chat_template=chat_template,
    **special,
  )
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
  return ["tokenizer.json", "tokenizer_config.json"]
