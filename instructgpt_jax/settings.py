"""A run's settings: the checks on their values, and what a finished stage was built with.

Each stage module checks its own section in `check_settings(ws)`, beside where it reads it, with
the helpers below; `pipeline.run` calls every stage's check before any stage starts, so a bad
value in the last stage is refused in one line before the first one trains.

A stage's DONE.json records the settings that shaped it (`of_stage`): its own section, the
run's seed, model and data settings, and the data files it reads. Settings that cannot change a
result (logging and checkpoint cadence, the compilation cache, the mesh) are left out, so
changing them reuses the stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections


class SettingError(ValueError):
  """A config value the run cannot use: the message names the key, the value and what is
  valid."""


def require(ok: bool, key: str, value: Any, valid: str) -> None:
  """Raises `SettingError("config.<key>=<value>: <valid>")` unless `ok`."""
  if not ok:
    raise SettingError(f"config.{key}={value!r}: {valid}.")


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(section: Mapping[str, Any], path: str, *keys: str) -> None:
  """Each of `section[key]` is a finite number > 0."""
  for key in keys:
    value = section[key]
    require(_number(value) and value > 0, f"{path}.{key}", value, "must be a number > 0")


def non_negative(section: Mapping[str, Any], path: str, *keys: str) -> None:
  """Each of `section[key]` is a finite number >= 0."""
  for key in keys:
    value = section[key]
    require(_number(value) and value >= 0, f"{path}.{key}", value, "must be a number >= 0")


def fraction(
  section: Mapping[str, Any], path: str, key: str, *, low_open: bool, high_open: bool
) -> None:
  """`section[key]` lies in the interval from 0 to 1 (open or closed at each end)."""
  value = section[key]
  ok = _number(value) and (value > 0 if low_open else value >= 0)
  ok = ok and (value < 1 if high_open else value <= 1)
  interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
  require(ok, f"{path}.{key}", value, f"must be in {interval}")


def one_of(section: Mapping[str, Any], path: str, key: str, valid: Iterable[Any]) -> None:
  valid = list(valid)
  require(section[key] in valid, f"{path}.{key}", section[key], f"valid: {valid}")


def positive_ints(values: Sequence[Any], key: str) -> None:
  """Every entry of a tuple setting is an integer >= 1 (best-of-n sizes, ...)."""
  ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in values)
  require(ok, key, tuple(values), "every entry must be an integer >= 1")


def divides(section: Mapping[str, Any], path: str, key: str, divisor: int, what: str) -> None:
  """`section[key]` is a positive multiple of `divisor` (e.g. the mesh's data-parallel shards)."""
  value = section[key]
  ok = isinstance(value, int) and value >= 1 and value % divisor == 0
  require(ok, f"{path}.{key}", value, f"must be a positive multiple of {divisor} ({what})")


# --- what a finished stage was built with ---------------------------------------------------------

# Leaf keys that cannot change a result, wherever they appear.
IGNORED_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints")
# The settings that shape each stage besides the run's seed, model and data settings
# (COMMON): its own section and the data files it reads. DONE.json records them; a
# finished stage whose settings differ is not reused as if nothing changed (pipeline.plan).
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
  # (The tokenizer, trained once per workdir, also reads the demonstrations; it is not a stage.)
  "pretrain": ("pretrain", "data.pretrain_jsonl"),
  "sft": ("sft", "data.demonstrations_jsonl", "data.pretrain_jsonl"),
  "label": ("label", "data.rm_prompts_jsonl", "data.comparisons_jsonl"),
  "rm_base": (
    "rm_base",
    "rm.model",
    "data.nlp_tasks_jsonl",
    "data.pretrain_jsonl",
    "data.demonstrations_jsonl",
  ),
  "rm": ("rm", "data.comparisons_jsonl"),
  "ppo": ("ppo", "data.prompts_jsonl", "data.pretrain_jsonl"),
  "dpo": ("dpo", "data.comparisons_jsonl"),
  "eval": ("eval", "data.eval_prompts_jsonl", "data.prompts_jsonl"),
}
# Sections of the config that every stage's result depends on (`data` without its file paths:
# each stage names the files it reads).
COMMON = ("seed", "model", "data")


def _flat(node: Any, prefix: str) -> dict[str, Any]:
  if isinstance(node, Mapping):
    out: dict[str, Any] = {}
    for key in sorted(node):
      if key not in IGNORED_KEYS:
        out.update(_flat(node[key], f"{prefix}.{key}" if prefix else str(key)))
    return out
  return {prefix: node}


def of_stage(config: ml_collections.ConfigDict, paths: Sequence[str]) -> dict[str, Any]:
  """{dotted key: value} of the COMMON sections and `paths` (sections or single keys, e.g.
  "rm.model", "data.prompts_jsonl"), as JSON stores them. Data file paths count only where
  `paths` names them."""
  resolved = json.loads(config.to_json())  # Tuples become lists, as DONE.json reads back.
  out: dict[str, Any] = {}
  for path in (*COMMON, *paths):
    node: Any = resolved
    for part in path.split("."):
      node = node.get(part) if isinstance(node, Mapping) else None
    if node is not None:
      out.update(_flat(node, path))
  for key in [k for k in out if k.startswith("data.") and k.endswith("_jsonl")]:
    if key not in paths:
      del out[key]
  return out


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict:
  """{key: (recorded value, current value)} for every key whose value differs; {} when nothing
  was recorded (a stage finished before settings were recorded is trusted)."""
  if recorded is None:
    return {}
  keys = sorted(set(recorded) | set(current))
  missing = "(unset)"
  return {
    k: (recorded.get(k, missing), current.get(k, missing))
    for k in keys
    if recorded.get(k, missing) != current.get(k, missing)
  }


def describe(diffs: Mapping[str, tuple[Any, Any]], limit: int = 4) -> str:
  """ "sft.epochs=8 (now 4), ..." for the first `limit` differences."""
  items = [f"{k}={json.dumps(old)} (now {json.dumps(new)})" for k, (old, new) in diffs.items()]
  more = f" and {len(items) - limit} more" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more
