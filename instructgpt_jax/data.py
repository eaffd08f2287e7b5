"""Data layer: JSONL formats, dataset hygiene, tfds builders, fixed-shape arrays, batching.

Flow:  user JSONL  --read_jsonl + apply_hygiene-->  tfds builder (array_record files,
splits train/validation/test)  --load_split / data_sources (no TensorFlow)-->  raw
strings  --encode_* / pack_lm + Tokenizer-->  numpy arrays  --make_batches (grain)-->
checkpointable iterator of batches.

Raw strings are stored, not token ids, so changing the tokenizer never requires
re-preparing data.

Sequence layout used everywhere in the project (P = prompt length, R = response length):

    tokens: [pad ... pad BOS p1 .. pm | r1 .. rn EOS pad ... pad]     length P + R
             '--- prompt, LEFT-padded to P ---'  '-- response, RIGHT-padded to R --'
    mask:   1 on real tokens (BOS and EOS included), 0 on padding.

Left-padding the prompt puts the last prompt token at index P-1 for every row, so
generation starts at index P and the first response token is always predicted from
index P-1. The model derives positions as cumsum(mask) - 1.

tfds without TensorFlow (verified with tensorflow-datasets 4.9.10, TF absent):
`GeneratorBasedBuilder(..., file_format="array_record").download_and_prepare()`
writes array_record shards and `builder.as_data_source()` / `tfds.data_source()`
reads them; 'tensorflow' never enters `sys.modules`. Three caveats found:
  * a split that yields no examples fails to finalise ("No examples were
    yielded"), so empty splits are left out (and read back as empty lists);
  * `dataset_info_from_configs` needs a package directory with metadata files,
    so `_info` builds `tfds.core.DatasetInfo` directly;
  * a builder defined inside a package fails in `download_and_prepare` on
    `import importlib_resources` (tfds declares it only for Python < 3.9), so the
    builders set `code_path = None`.
Prepare on one process (or per-host local data_dirs) in multi-host runs: tfds
writes to a temporary directory and renames it, but two writers still race.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from instructgpt_jax import hf_tokenizer, multihost, preferences, sharding
from instructgpt_jax.formats import MAX_RESPONSES, MIN_RESPONSES, DataError
from instructgpt_jax.tokenizer import Tokenizer

KINDS = ("demonstrations", "comparisons", "prompts", "pretraining")
SPLITS = ("train", "validation", "test")


class ChatTemplate(NamedTuple):
  """A checkpoint's chat template (jinja2 source) and EOS text, for message-list records."""

  template: str
  eos_token: str = ""


def _renderer(chat: ChatTemplate | None):
  """(messages, add_generation_prompt) -> text: the chat template, else a plain transcript."""
  if chat is None or not chat.template:
    return preferences.transcript
  return lambda messages, gen: hf_tokenizer.render_chat_template(
    chat.template, messages, add_generation_prompt=gen, eos_token=chat.eos_token
  )


# --------------------------------------------------------------------------------------
# JSONL reading and validation
# --------------------------------------------------------------------------------------


def _require_text(obj: dict, key: str, *, allow_empty: bool = False) -> str:
  if key not in obj:
    raise DataError(f"missing field {key!r}")
  value = obj[key]
  if not isinstance(value, str):
    raise DataError(f"field {key!r} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise DataError(f"field {key!r} is empty")
  return value


def _require_user_id(obj: dict) -> str:
  # Integer ids are common in exported data; they mean the same as their string.
  value = obj.get("user_id")
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  return _require_text(obj, "user_id")


def _optional_text(obj: dict, key: str, default: str = "") -> str:
  return default if obj.get(key) is None else _require_text(obj, key, allow_empty=True)


def _require_responses(obj: dict) -> tuple[list[str], list[int]]:
  responses, ranking = obj.get("responses"), obj.get("ranking")
  for key, value in (("responses", responses), ("ranking", ranking)):
    if value is None:
      raise DataError(f"missing field {key!r}")
    if not isinstance(value, list):
      raise DataError(f"field {key!r} must be a list, got {type(value).__name__}")
  if not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
    raise DataError(
      f"'responses' has {len(responses)} entries; expected {MIN_RESPONSES}..{MAX_RESPONSES}"
    )
  if len(ranking) != len(responses):
    raise DataError(f"'ranking' has {len(ranking)} entries but 'responses' has {len(responses)}")
  for i, response in enumerate(responses):
    if not isinstance(response, str):
      raise DataError(f"responses[{i}] must be a string, got {type(response).__name__}")
    if not response.strip():
      raise DataError(f"responses[{i}] is empty")
  for i, rank in enumerate(ranking):
    if not isinstance(rank, int) or isinstance(rank, bool):
      raise DataError(f"ranking[{i}] must be an integer, got {rank!r}")
    if not 0 <= rank < len(responses):
      raise DataError(f"ranking[{i}]={rank} is outside 0..{len(responses) - 1}")
  return responses, ranking


def _optional_sources(obj: dict, n: int) -> list[str]:
  """The optional "sources" of a comparison: which policy produced each response (e.g.
  "sft:1.0"), one string per response; [] when absent."""
  sources = obj.get("sources")
  if sources is None:
    return []
  if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
    raise DataError("field 'sources' must be a list of strings (one per response)")
  if len(sources) != n:
    raise DataError(f"'sources' has {len(sources)} entries but 'responses' has {n}")
  return sources


def validate_record(obj: Any, kind: str, chat: ChatTemplate | None = None) -> dict[str, Any]:
  """Checks one parsed JSON object of format `kind`; returns it normalised.

  Required: prompt/response/responses/ranking/text and user_id (splits depend on
  it). Optional: category (default ""); for comparisons, sources (default []: which
  policy produced each response). Unknown keys are ignored.
  Also read (preferences.py): comparisons as pairwise chosen/rejected, HH transcripts or rated
  completions; demonstrations as {"messages": [...]}; prompts as message lists, rendered
  through `chat` (else as a plain transcript).
  Raises DataError (without file/line; `read_jsonl` adds them).
  """
  if not isinstance(obj, dict):
    raise DataError(f"expected a JSON object, got {type(obj).__name__}")
  if kind == "pretraining":
    return {"text": _require_text(obj, "text")}
  if kind == "comparisons" and "ranking" not in obj and preferences.is_public_comparison(obj):
    return {**preferences.to_comparison(obj, _renderer(chat)), "sources": []}
  if kind == "demonstrations" and ("messages" in obj or isinstance(obj.get("prompt"), list)):
    return preferences.to_demonstration(obj, _renderer(chat))
  if kind == "prompts" and isinstance(obj.get("prompt"), list):
    prompt = preferences.prompt_text(obj["prompt"], _renderer(chat))
    user = obj.get("user_id")
    return {
      "prompt": prompt,
      "user_id": preferences.derived_user_id(prompt) if user is None else _require_user_id(obj),
      "category": _optional_text(obj, "category"),
    }
  record: dict[str, Any] = {"prompt": _require_text(obj, "prompt")}
  if kind == "demonstrations":
    record["response"] = _require_text(obj, "response")
  elif kind == "comparisons":
    record["responses"], record["ranking"] = _require_responses(obj)
    record["sources"] = _optional_sources(obj, len(record["responses"]))
  elif kind != "prompts":
    raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
  record["user_id"] = _require_user_id(obj)
  if kind != "comparisons":
    record["category"] = _optional_text(obj, "category")
  return record


def _as_paths(paths: str | Sequence[str]) -> tuple[str, ...]:
  return (paths,) if isinstance(paths, str) else tuple(paths)


def check_file(path: str, key: str, kind: str) -> None:
  """A data file named by config `key` before any work: it exists, is a readable file, and
  holds usable rows of format `kind` (every line is validated); else a DataError that names
  the key, the path and the cause. Rows without signal are told in one warning."""
  if not os.path.exists(path):
    raise DataError(f"{key}={path} does not exist.")
  if os.path.isdir(path):
    raise DataError(f"{key}={path} is a directory; give the path of a JSONL file.")
  try:
    with open(path, "rb") as f:
      empty = not f.read(1)
      f.seek(0)
      blank = all(not line.strip() or line.strip() == _BOM for line in f)
  except OSError as e:
    raise DataError(f"{key}={path} cannot be read ({e.strerror}).") from None
  if empty:
    raise DataError(f"{key}={path} is an empty file; it needs one JSON object per line.")
  if blank:
    raise DataError(f"{key}={path} holds only blank lines; it needs one JSON object per line.")
  if not read_jsonl(path, kind, warn=True):
    raise DataError(
      f"{key}={path}: no usable {kind}: every comparison carries no signal (see the warning above)."
    )


_BOM = "\ufeff".encode()  # Files saved on Windows often start with one.


def _parse_line(raw: bytes, path: str, line_no: int) -> Any:
  """One JSONL line as a Python object (None for a blank line); errors name file and line."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}:{line_no}: not UTF-8 ({e})") from None
  if line_no == 1:
    line = line.removeprefix("\ufeff")
  if not line.strip():
    return None
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{line_no}: invalid JSON ({e})") from None
  except RecursionError:
    raise DataError(f"{path}:{line_no}: JSON nested too deeply to read") from None


def read_jsonl(
  paths: str | Sequence[str], kind: str, chat: ChatTemplate | None = None, warn: bool = False
) -> list[dict[str, Any]]:
  """Reads and validates JSONL file(s) of format `kind`; blank lines and a leading BOM are
  skipped. Comparisons lose what carries no signal (`drop_signalless`), told in one warning
  per file when `warn`.

  Raises DataError "<file>:<line>: <cause>" on the first bad line.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
  records = []
  for path in _as_paths(paths):
    if os.path.isdir(path):
      raise DataError(f"{path} is a directory; give the path of a JSONL file.")
    of_file = []
    with open(path, "rb") as f:  # Bytes, so a bad encoding can name its line too.
      for line_no, raw in enumerate(f, start=1):
        obj = _parse_line(raw, path, line_no)
        if obj is None:
          continue
        try:
          of_file.append(validate_record(obj, kind, chat))
        except DataError as e:
          raise DataError(f"{path}:{line_no}: {e} (format: {kind})") from None
    if kind == "comparisons":
      of_file, counts = drop_signalless(of_file)
      if warn and any(counts.values()):
        logging.warning("%s: %s", path, describe_signalless(counts))
    records += of_file
  return records


def drop_signalless(records: Sequence[dict]) -> tuple[list[dict], dict[str, int]]:
  """Comparisons without what carries no signal: a second copy of a response text within a
  comparison (the pair would compare a text with itself; the first copy keeps its rank, so
  a pairwise row whose chosen equals its rejected is left with one response), then the
  comparisons left with fewer than two different ranks (every response tied).

  Returns (records, counts): same_text (comparisons whose responses were all one text), tied
  (comparisons whose responses all share one rank), copies (responses dropped from the
  comparisons kept).
  """
  out, counts = [], {"copies": 0, "same_text": 0, "tied": 0}
  for r in records:
    seen: set[str] = set()
    keep = [i for i, text in enumerate(r["responses"]) if not (text in seen or seen.add(text))]
    if len(keep) < 2:
      counts["same_text"] += 1
      continue
    if len({r["ranking"][i] for i in keep}) < 2:
      counts["tied"] += 1
      continue
    if len(keep) < len(r["responses"]):
      counts["copies"] += len(r["responses"]) - len(keep)
      r = dict(r, responses=[r["responses"][i] for i in keep])
      r["ranking"] = [r["ranking"][i] for i in keep]
      if r.get("sources"):
        r["sources"] = [r["sources"][i] for i in keep]
    out.append(r)
  return out, counts


def describe_signalless(counts: Mapping[str, int]) -> str:
  """One line for `drop_signalless`'s counts."""
  parts = []
  if counts["same_text"]:
    parts.append(
      f"{counts['same_text']:,} comparisons dropped: every response is the same text "
      "(e.g. chosen equals rejected)"
    )
  if counts["tied"]:
    parts.append(f"{counts['tied']:,} comparisons dropped: every response has the same rank")
  if counts["copies"]:
    parts.append(
      f"{counts['copies']:,} responses dropped: the same text as another of their comparison"
    )
  return "; ".join(parts) + " (no signal for the reward model)"


# --------------------------------------------------------------------------------------
# Dataset hygiene (the paper's: prefix de-duplication, per-user cap, split by user)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hygiene:
  """Hygiene settings; part of the prepared dataset's identity (config name).

  dedup_prefix_len: prompts whose first `dedup_prefix_len` chars/words (whitespace
    normalised) agree are duplicates; the first one is kept. Prompts shorter than
    that are duplicates only if equal. None disables de-duplication.
  max_per_user: keep at most this many records per user_id (first ones). None: no cap.
  split_fractions: (train, validation, test) fractions of USERS (user-keyed kinds).
  text_split_fractions: (train, validation, test) fractions of pretraining lines.
  split_salt: changes the user -> split assignment while keeping it deterministic.
  """

  dedup_prefix_len: int | None = 100
  dedup_prefix_unit: str = "chars"  # "chars" | "words"
  max_per_user: int | None = 200
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  text_split_fractions: tuple[float, float, float] = (0.98, 0.01, 0.01)
  split_salt: str = ""

  def __post_init__(self):
    if self.dedup_prefix_unit not in ("chars", "words"):
      raise ValueError(
        f"dedup_prefix_unit must be 'chars' or 'words', got {self.dedup_prefix_unit!r}"
      )
    for name in ("split_fractions", "text_split_fractions"):
      fractions = tuple(float(x) for x in getattr(self, name))
      if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"{name} must be 3 non-negative numbers summing to 1, got {fractions}")
      object.__setattr__(self, name, fractions)  # lists from configs -> tuples


def prefix_key(prompt: str, prefix_len: int, unit: str = "chars") -> str:
  """The part of `prompt` that decides whether it duplicates another prompt."""
  words = prompt.split()
  if unit == "words":
    return " ".join(words[:prefix_len])
  return " ".join(words)[:prefix_len]


def dedup_by_prefix(
  records: Sequence[dict], prefix_len: int | None, unit: str = "chars"
) -> tuple[list[dict], int]:
  """Drops records whose prompt shares its first `prefix_len` chars/words with an
  earlier record's prompt. Returns (kept records in order, number dropped)."""
  if prefix_len is None:
    return list(records), 0
  seen: set[str] = set()
  kept = []
  for record in records:
    key = prefix_key(record["prompt"], prefix_len, unit)
    if key not in seen:
      seen.add(key)
      kept.append(record)
  return kept, len(records) - len(kept)


def cap_per_user(records: Sequence[dict], max_per_user: int | None) -> tuple[list[dict], int]:
  """Keeps the first `max_per_user` records of every user_id. Returns (kept, n_dropped)."""
  if max_per_user is None:
    return list(records), 0
  counts: dict[str, int] = {}
  kept = []
  for record in records:
    n = counts.get(record["user_id"], 0)
    if n < max_per_user:
      kept.append(record)
    counts[record["user_id"]] = n + 1
  return kept, len(records) - len(kept)


def assign_split(key: str, fractions: Sequence[float], salt: str = "") -> str:
  """Deterministic split ("train"/"validation"/"test") of a user id or other key.

  A stable hash (sha256, not Python's salted `hash`) so the same user lands in the
  same split in every file and every run: a user's demonstrations, comparisons and
  prompts are all held out together.
  """
  digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
  if u < fractions[0]:
    return "train"
  return "validation" if u < fractions[0] + fractions[1] else "test"


def split_by_user(
  records: Sequence[dict], fractions: Sequence[float], salt: str = ""
) -> dict[str, list[dict]]:
  """Splits records by hash of user_id; a user's records never span two splits."""
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  for record in records:
    splits[assign_split(record["user_id"], fractions, salt)].append(record)
  return splits


def apply_hygiene(
  records: Sequence[dict], kind: str, hygiene: Hygiene = Hygiene()
) -> tuple[dict[str, list[dict]], dict[str, int]]:
  """De-duplicates by prompt prefix, caps per user, splits by user (in this order).

  Pretraining text has no prompts or users: it is only split, by a hash of its
  index. Every record gets an "index" (its position in `records`) so file order can
  be restored after tfds shuffles the stored examples.
  Returns ({split: records}, counts) with counts: read, dropped_duplicate_prefix,
  dropped_user_cap, and one entry per split.
  """
  records = [dict(r, index=i) for i, r in enumerate(records)]
  counts = {"read": len(records), "dropped_duplicate_prefix": 0, "dropped_user_cap": 0}
  if kind == "pretraining":
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in records:
      splits[
        assign_split(str(r["index"]), hygiene.text_split_fractions, hygiene.split_salt)
      ].append(r)
  else:
    records, counts["dropped_duplicate_prefix"] = dedup_by_prefix(
      records, hygiene.dedup_prefix_len, hygiene.dedup_prefix_unit
    )
    records, counts["dropped_user_cap"] = cap_per_user(records, hygiene.max_per_user)
    splits = split_by_user(records, hygiene.split_fractions, hygiene.split_salt)
  counts.update({s: len(splits[s]) for s in SPLITS})
  logging.info("Hygiene for %s: %s", kind, counts)
  return splits, counts


# --------------------------------------------------------------------------------------
# tfds builders (array_record, read without TensorFlow)
# --------------------------------------------------------------------------------------


def _features(kind: str) -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  spec: dict[str, Any] = {"index": np.int64}
  if kind == "pretraining":
    spec["text"] = text()
  else:
    spec.update(prompt=text(), user_id=text())
  if kind == "demonstrations":
    spec["response"] = text()
  if kind == "comparisons":
    spec["responses"] = tfds.features.Sequence(text())
    spec["ranking"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    spec["sources"] = tfds.features.Sequence(text())
  if kind in ("demonstrations", "prompts"):
    spec["category"] = text()
  return tfds.features.FeaturesDict(spec)


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
  """Which JSONL file(s) to read and with what hygiene. Built by `make_builder`,
  whose config name holds the files' content hash and the settings' hash."""

  paths: tuple[str, ...] = ()
  hygiene: Hygiene = dataclasses.field(default_factory=Hygiene)
  chat: ChatTemplate | None = None


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Reads one user-facing JSONL format; subclasses only set KIND."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Raw strings + hygiene + split by user id."}
  BUILDER_CONFIG_CLASS = JsonlConfig
  KIND = ""
  # tfds 4.9.10 resolves a package builder's source file (only to look for a
  # checksums file) through `importlib_resources`, a backport it declares for
  # Python < 3.9 only, so on 3.11 preparing fails with ModuleNotFoundError. We
  # download nothing and need no checksums: no code path.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"InstructGPT {self.KIND} from user JSONL.",
      features=_features(self.KIND),
      # Hygiene counts are stored with the data so a reused preparation still reports them.
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    config: JsonlConfig = self.builder_config
    records = read_jsonl(config.paths, self.KIND, config.chat)
    splits, counts = apply_hygiene(records, self.KIND, config.hygiene)
    self.info.metadata["hygiene"] = counts
    self.info.metadata["paths"] = list(config.paths)
    # An empty split cannot be written ("No examples were yielded"): leave it out.
    return {s: self._generate_examples(rows) for s, rows in splits.items() if rows}

  def _generate_examples(self, rows):
    for row in rows:
      yield row["index"], row


class InstructgptDemonstrations(_JsonlBuilder):
  KIND = "demonstrations"


class InstructgptComparisons(_JsonlBuilder):
  KIND = "comparisons"
  # 1.1.0 stores the optional "sources"; a preparation made before is prepared again.
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Adds the optional sources (policy per response)."}


class InstructgptPrompts(_JsonlBuilder):
  KIND = "prompts"


class InstructgptPretraining(_JsonlBuilder):
  KIND = "pretraining"


BUILDERS: dict[str, type[_JsonlBuilder]] = {
  b.KIND: b
  for b in (
    InstructgptDemonstrations,
    InstructgptComparisons,
    InstructgptPrompts,
    InstructgptPretraining,
  )
}


def content_hash(paths: str | Sequence[str]) -> str:
  """sha256 over the bytes of the files (in order); names and mtimes don't matter."""
  h = hashlib.sha256()
  for path in _as_paths(paths):
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    h.update(b"\x00end-of-file\x00")
  return h.hexdigest()


def make_builder(
  kind: str,
  jsonl_paths: str | Sequence[str],
  data_dir: str,
  hygiene: Hygiene | None = None,
  chat: ChatTemplate | None = None,
) -> _JsonlBuilder:
  """The tfds builder for these files; nothing is prepared yet.

  Prepared data lives in `<data_dir>/instructgpt_<kind>/<content>-<settings>/1.0.0/`.
  The config name changes with the files' content or the hygiene settings, so a
  changed file is prepared afresh and an unchanged one is reused (old versions stay
  on disk until deleted).
  """
  if kind not in BUILDERS:
    raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
  hygiene = hygiene or Hygiene()
  paths = _as_paths(jsonl_paths)
  # The chat template renders message lists into the stored text: part of the settings.
  settings = hashlib.sha256(
    (repr(hygiene) + (repr(tuple(chat)) if chat and chat.template else "")).encode()
  ).hexdigest()[:8]
  config = JsonlConfig(
    name=f"{content_hash(paths)[:16]}-{settings}",
    description=f"{kind} from {', '.join(paths)}; {hygiene}",
    paths=paths,
    hygiene=hygiene,
    chat=chat,
  )
  return BUILDERS[kind](config=config, data_dir=data_dir, file_format="array_record")


def prepare(
  kind: str,
  jsonl_paths: str | Sequence[str],
  data_dir: str,
  hygiene: Hygiene | None = None,
  chat: ChatTemplate | None = None,
) -> _JsonlBuilder:
  """Prepares (or reuses) array_record files for the JSONL file(s); returns the builder."""
  builder = make_builder(kind, jsonl_paths, data_dir, hygiene, chat)
  # tfds prints "Downloading and preparing ..." banners to stdout for files that are never
  # downloaded; they go to the INFO log instead (`--verbosity=0` shows them).
  banner = io.StringIO()
  with contextlib.redirect_stdout(banner):
    builder.download_and_prepare()  # A no-op when this config was prepared before.
  if banner.getvalue().strip():
    logging.info("tfds: %s", banner.getvalue().strip())
  return builder


def data_sources(
  kind: str,
  jsonl_paths: str | Sequence[str],
  data_dir: str,
  hygiene: Hygiene | None = None,
  chat: ChatTemplate | None = None,
) -> dict[str, Any]:
  """{split: random-access tfds data source} (no TensorFlow); empty splits are absent.

  Elements are dicts of bytes / numpy values in tfds' stored (hashed) order; use
  `load_split` for decoded strings in file order.
  """
  return dict(prepare(kind, jsonl_paths, data_dir, hygiene, chat).as_data_source())


def _decode(example: Mapping[str, Any]) -> dict[str, Any]:
  def value(v):
    if isinstance(v, bytes):
      return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.dtype != object:
      return v.tolist()
    if isinstance(v, (list, tuple, np.ndarray)):
      return [value(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v

  return {k: value(v) for k, v in example.items()}


def load_split(
  kind: str,
  jsonl_paths: str | Sequence[str],
  data_dir: str,
  split: str,
  hygiene: Hygiene | None = None,
  chat: ChatTemplate | None = None,
) -> list[dict[str, Any]]:
  """Prepares (or reuses) the data and returns one split as plain records, in file
  order: the format's fields as str/list plus "index" (position among the file's
  valid records). An empty split returns []."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  sources = data_sources(kind, jsonl_paths, data_dir, hygiene, chat)
  if split not in sources:
    return []
  source = sources[split]
  examples = [_decode(e) for e in source.__getitems__(range(len(source)))]
  return sorted(examples, key=lambda e: e["index"])


# --------------------------------------------------------------------------------------
# Tokenized fixed-shape arrays
# --------------------------------------------------------------------------------------


def _pad(
  seqs: Sequence[Sequence[int]], length: int, pad_id: int, left: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Pads token lists to `length`. Returns (tokens [N, length] int32, mask [N, length] int32)."""
  tokens = np.full((len(seqs), length), pad_id, dtype=np.int32)
  mask = np.zeros((len(seqs), length), dtype=np.int32)
  for i, seq in enumerate(seqs):
    start = length - len(seq) if left else 0
    tokens[i, start : start + len(seq)] = seq
    mask[i, start : start + len(seq)] = 1
  return tokens, mask


class EncodedPrompts(NamedTuple):
  tokens: np.ndarray  # [N, P] int32, BOS + prompt, left-padded
  mask: np.ndarray  # [N, P] int32
  n_dropped: int  # prompts longer than P (with BOS)
  kept: np.ndarray  # [N] int64, index of each row in the input list


def _bos(tok: Tokenizer) -> list[int]:
  # A checkpoint's tokenizer may have no BOS (Qwen): its texts then start without one.
  return [] if tok.bos_id is None else [tok.bos_id]


def _prompt_ids(tok: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
  return [_bos(tok) + ids for ids in tok.encode_batch(prompts)]


def _response_ids(tok: Tokenizer, responses: Sequence[str]) -> list[list[int]]:
  return [ids + [tok.eos_id] for ids in tok.encode_batch(responses)]


def encode_prompts(tok: Tokenizer, prompts: Sequence[str], P: int) -> EncodedPrompts:
  """BOS + prompt, left-padded to P: tokens/mask [N, P].

  Prompts that do not fit (more than P-1 tokens) are dropped, not truncated, as in
  the paper; `n_dropped` counts them and `kept` maps rows back to `prompts`.
  """
  ids = _prompt_ids(tok, prompts)
  kept = np.array([i for i, x in enumerate(ids) if len(x) <= P], dtype=np.int64)
  tokens, mask = _pad([ids[i] for i in kept], P, tok.pad_id, left=True)
  return EncodedPrompts(tokens, mask, len(prompts) - len(kept), kept)


def encode_sft(
  tok: Tokenizer, prompts: Sequence[str], responses: Sequence[str], P: int, R: int
) -> dict[str, Any]:
  """Demonstrations as [prompt (left-padded to P) | response + EOS (right-padded to R)].

  Returns
    tokens    [N, P+R] int32
    mask      [N, P+R] int32  1 on real tokens (BOS, prompt, response, EOS)
    loss_mask [N, P+R] int32  1 on TARGET tokens: the response tokens and its EOS,
              i.e. positions P .. P+len(response). Token t is predicted by the
              logits at t-1, so the LM loss is
                ce(logits[:, :-1], tokens[:, 1:]) weighted by loss_mask[:, 1:].
    kept      [N] int64  index of each row in the inputs
    n_dropped_prompt, n_dropped_response: int counts of examples dropped because
              BOS+prompt > P or response+EOS > R. Long responses are dropped, not
              truncated: a truncated target would teach the model never to stop.
  """
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  prompt_ids, response_ids = _prompt_ids(tok, prompts), _response_ids(tok, responses)
  prompt_ok = [len(x) <= P for x in prompt_ids]
  response_ok = [len(x) <= R for x in response_ids]
  kept = np.array(
    [i for i in range(len(prompts)) if prompt_ok[i] and response_ok[i]], dtype=np.int64
  )
  p_tokens, p_mask = _pad([prompt_ids[i] for i in kept], P, tok.pad_id, left=True)
  r_tokens, r_mask = _pad([response_ids[i] for i in kept], R, tok.pad_id, left=False)
  return {
    "tokens": np.concatenate([p_tokens, r_tokens], axis=1),
    "mask": np.concatenate([p_mask, r_mask], axis=1),
    "loss_mask": np.concatenate([np.zeros_like(p_mask), r_mask], axis=1),
    "kept": kept,
    "n_dropped_prompt": len(prompts) - sum(prompt_ok),
    "n_dropped_response": sum(p and not r for p, r in zip(prompt_ok, response_ok)),
  }


def encode_comparisons(
  tok: Tokenizer,
  prompts: Sequence[str],
  responses_lists: Sequence[Sequence[str]],
  rankings: Sequence[Sequence[int]],
  P: int,
  R: int,
  K_max: int = MAX_RESPONSES,
) -> dict[str, Any]:
  """Comparisons as K_max sequences per prompt, each laid out like `encode_sft`.

  Returns
    tokens [N, K_max, P+R] int32   absent slots are all pad
    mask   [N, K_max, P+R] int32   absent slots are all 0
    ranks  [N, K_max] int32        the given rank (0 = best, ties allowed); -1 = absent
    kept   [N] int64               index of each row in the inputs
    slots  [N, K_max] int32        index of each slot's response in its row's list; -1 = absent
    n_dropped_prompt: rows whose BOS+prompt > P
    n_dropped_responses: single responses dropped because response+EOS > R (the
      remaining ones keep their ranks, which stay consistent)
    n_dropped_no_pairs: rows left with no pair of different ranks (nothing to learn)
  """
  if not len(prompts) == len(responses_lists) == len(rankings):
    raise ValueError("prompts, responses_lists and rankings must have the same length")
  if any(len(r) > K_max for r in responses_lists):
    raise ValueError(f"a comparison has more than K_max={K_max} responses")
  prompt_ids = _prompt_ids(tok, prompts)
  response_ids = _response_ids(tok, [r for rs in responses_lists for r in rs])
  rows, kept = [], []
  n_dropped_prompt = n_dropped_responses = n_dropped_no_pairs = 0
  offset = 0
  for i, (responses, ranking) in enumerate(zip(responses_lists, rankings)):
    if len(ranking) != len(responses):
      raise ValueError(f"comparison {i}: {len(ranking)} ranks for {len(responses)} responses")
    ids = response_ids[offset : offset + len(responses)]
    offset += len(responses)
    if len(prompt_ids[i]) > P:
      n_dropped_prompt += 1
      continue
    fitting = [(x, int(rank), j) for j, (x, rank) in enumerate(zip(ids, ranking)) if len(x) <= R]
    n_dropped_responses += len(responses) - len(fitting)
    if len({rank for _, rank, _ in fitting}) < 2:
      n_dropped_no_pairs += 1
      continue
    rows.append((prompt_ids[i], fitting))
    kept.append(i)

  n, L = len(rows), P + R
  tokens = np.full((n, K_max, L), tok.pad_id, dtype=np.int32)
  mask = np.zeros((n, K_max, L), dtype=np.int32)
  ranks = np.full((n, K_max), -1, dtype=np.int32)
  slots = np.full((n, K_max), -1, dtype=np.int32)
  for i, (prompt, fitting) in enumerate(rows):
    p_tokens, p_mask = _pad([prompt], P, tok.pad_id, left=True)
    r_tokens, r_mask = _pad([x for x, _, _ in fitting], R, tok.pad_id, left=False)
    k = len(fitting)
    tokens[i, :k, :P], mask[i, :k, :P] = p_tokens, p_mask
    tokens[i, :k, P:], mask[i, :k, P:] = r_tokens, r_mask
    ranks[i, :k] = [rank for _, rank, _ in fitting]
    slots[i, :k] = [j for _, _, j in fitting]
  return {
    "tokens": tokens,
    "mask": mask,
    "ranks": ranks,
    "kept": np.array(kept, dtype=np.int64),
    "slots": slots,
    "n_dropped_prompt": n_dropped_prompt,
    "n_dropped_responses": n_dropped_responses,
    "n_dropped_no_pairs": n_dropped_no_pairs,
  }


def pack_lm(tok: Tokenizer, texts: Sequence[str], seq_len: int) -> dict[str, np.ndarray]:
  """Pretraining text packed into fixed rows: BOS + text + EOS per document,
  concatenated and cut every `seq_len` tokens (documents may span rows; the last
  row is right-padded).

  Returns tokens [N, seq_len] int32 and mask [N, seq_len] int32 (1 everywhere but
  the tail padding). Loss: ce(logits[:, :-1], tokens[:, 1:]) weighted by mask[:, 1:].
  """
  stream = [t for ids in tok.encode_batch(texts) for t in [*_bos(tok), *ids, tok.eos_id]]
  n_rows = -(-len(stream) // seq_len)
  flat = np.full(n_rows * seq_len, tok.pad_id, dtype=np.int32)
  flat[: len(stream)] = stream
  mask = np.zeros(n_rows * seq_len, dtype=np.int32)
  mask[: len(stream)] = 1
  return {"tokens": flat.reshape(n_rows, seq_len), "mask": mask.reshape(n_rows, seq_len)}


# --------------------------------------------------------------------------------------
# Batching (grain)
# --------------------------------------------------------------------------------------


def _batchable(arrays: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
  """The numpy-array entries of `arrays` and their common leading dimension N."""
  arrays = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
  sizes = {k: v.shape[0] for k, v in arrays.items()}
  if not arrays or len(set(sizes.values())) != 1:
    raise ValueError(f"arrays must be non-empty and share their leading dimension: {sizes}")
  return arrays, next(iter(sizes.values()))


def make_batches(
  arrays: Mapping[str, Any],
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  *,
  local_rows: slice | None = None,
  prefetch: int = 2,
) -> grain.DatasetIterator:
  """A checkpointable iterator of batches {name: [rows, ...]}: `local_rows` of each global
  batch of `batch_size` (default: all of them).

  `arrays` maps names to arrays with the same leading dimension N; entries that are
  not numpy arrays (the n_dropped_* counts of encode_*) are ignored, so an encode_*
  result can be passed as is. Shuffling is a fresh permutation per epoch, fixed by
  `seed`; `num_epochs=None` repeats forever (batches may then span epochs).

  Several processes: every process builds the same global batch order and takes the rows its
  devices hold (`multihost.local_rows`), so the global batch is the configured one on 1 or N
  processes and no example is fed twice.

  Saving/restoring the position (the state is a small JSON-serialisable dict,
  e.g. {"next_index": 17}):
      state = it.get_state()              # store as JSON in the checkpoint
      it = make_batches(<same arrays and arguments>)
      it.set_state(state)                 # continues with the same next batch
  """
  arrays, n = _batchable(arrays)
  rows = local_rows or slice(0, batch_size)
  if not 0 <= rows.start < rows.stop <= batch_size:
    raise ValueError(f"local_rows={rows} is not a part of a batch of {batch_size}")
  if n == 0:
    raise ValueError("make_batches got 0 examples (did hygiene or length filtering drop them all?)")
  if drop_remainder and num_epochs is not None and n * num_epochs < batch_size:
    raise ValueError(f"{n} examples x {num_epochs} epochs make no full batch of {batch_size}")

  def gather(indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = indices[rows]
    return {k: v[indices] for k, v in arrays.items()}

  # Batch indices, then gather with one fancy-index per array (faster than
  # stacking per-example dicts).
  ds = grain.MapDataset.range(n)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).batch(batch_size, drop_remainder=drop_remainder).map(gather)
  # grain's default read-ahead (16 threads, 500 elements) would hold hundreds of
  # batches in memory; gathering is cheap, so a short prefetch is enough.
  options = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def iterate_split_batches(
  arrays: Mapping[str, Any], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `arrays` in order, last batch padded by repeating row 0, with a
  "valid" [batch] int32 entry marking real rows: for evaluation, where every example
  must count exactly once and shapes must stay fixed for jit."""
  arrays, n = _batchable(arrays)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = (idx < n).astype(np.int32)
    idx = np.where(valid == 1, idx, 0)
    yield {**{k: v[idx] for k, v in arrays.items()}, "valid": valid}


def map_batches(
  fn: Any, arrays: Mapping[str, Any], batch_size: int, mesh: Any, rules: Any, *args: Any
) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
  """Applies `fn(batch, *args)` (jitted; `args` are arrays such as parameters, passed rather
  than closed over) to every row of `arrays` on `mesh`.

  The batch size is rounded up to the data-parallel degree and the last batch is padded
  (`iterate_split_batches`), so one compiled program serves every batch. Each process feeds
  its rows of a batch and gets every row of the outputs. Yields (host batch with its "valid"
  [batch] entry, `fn`'s outputs fetched to the host).
  """
  size = sharding.round_batch(batch_size, mesh, rules)
  rows = sharding.process_rows(mesh, rules, size)
  with sharding.use_rules(mesh, rules):
    for batch in iterate_split_batches(arrays, size):
      local = {k: v[rows] for k, v in batch.items()}
      yield batch, multihost.fetch(fn(sharding.shard_batch(local, mesh, rules, size), *args))
