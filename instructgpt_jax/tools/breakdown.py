"""Where a reward model errs: held-out accuracy split by what separates the two responses.

Every held-out comparison pair whose responses have different gold scores is filed under the
criteria of the built-in world's gold score on which the two differ (content, constraints,
hallucination, ending, verbosity, and the paper world's truthful and harmless; e.g.
"content+verbosity"). Each judge is then scored on how often it prefers the response with the
higher gold score (ties count half): the reward model, the log-likelihood under the model the RM
started from, and the training labelers' ranking.

  python -m instructgpt_jax.tools.breakdown --config=configs/rm.py[:preset] --workdir=DIR

prints the table and writes `<workdir>/rm/breakdown.json`. Needs a finished rm stage trained
on comparisons of the built-in world. `--splits=train` scores the RM's training comparisons.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from instructgpt_jax import console, inputs, loop, scoring, workspace
from instructgpt_jax import data as data_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "The config the workdir was made with, e.g. configs/rm.py:tiny.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir whose rm stage is finished.")
_SPLITS = flags.DEFINE_list(
  "splits",
  ["validation", "test"],
  "Comparison splits to score (train shows what the RM memorised).",
)

# (name, reads the criterion from a `World.analyze` result)
CRITERIA = (
  ("content", lambda a: round(a["content"], 9)),
  ("constraint", lambda a: a["constraint_frac"]),
  ("hallucination", lambda a: a["hallucinated"]),
  ("ending", lambda a: a["terminated"]),
  ("verbosity", lambda a: round(a["verbosity"], 9)),
  # The paper world's own criteria (absent from the knowledge world's analyses: never differ).
  ("truthful", lambda a: a.get("truthful")),
  ("harmless", lambda a: a.get("harmless")),
)
JUDGES = ("reward_model", "likelihood", "labelers")


def differing_criteria(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
  """The gold-score criteria on which two `World.analyze` results differ, joined by "+"
  ("none" when the score differs only through a criterion not listed, e.g. empty answers)."""
  names = [name for name, read in CRITERIA if read(a) != read(b)]
  return "+".join(names) or "none"


def accuracy_by_group(
  groups: Sequence[str], gold_diff: np.ndarray, judge_diffs: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
  """How often each judge orders a pair as the gold score does, per group and over "all".

  groups: [pairs] labels; gold_diff: [pairs] gold(a) - gold(b), nonzero; judge_diffs: judge ->
  [pairs] judge(a) - judge(b). A judge's tie counts half. Returns group -> {"pairs": count,
  judge: accuracy}, groups ordered by count (largest first), "all" first.
  """
  groups = np.asarray(groups)
  sign = np.sign(gold_diff)
  if np.any(sign == 0):
    raise ValueError("accuracy_by_group takes only pairs whose gold scores differ")
  right = {name: (np.sign(d) == sign) + 0.5 * (np.sign(d) == 0) for name, d in judge_diffs.items()}
  names, counts = np.unique(groups, return_counts=True)
  out = {}
  for group in ("all", *names[np.argsort(-counts, kind="stable")]):
    sel = np.ones(len(groups), bool) if group == "all" else groups == group
    out[str(group)] = {
      "pairs": int(sel.sum()),
      **{name: float(r[sel].mean()) for name, r in right.items()},
    }
  return out


def gold_differing_pairs(
  records: Sequence[Mapping[str, Any]],
  analyses: Sequence[Mapping[str, Any]],
  scores: Mapping[str, np.ndarray],
) -> dict[str, Any]:
  """The pairs of `records` (comparisons) whose gold scores differ, with each judge's difference.

  analyses and every array of `scores` run over the responses of all records in order (NaN
  where a judge could not score one; such pairs are left out). The labelers' judgement is the
  record's ranking (lower rank = better)."""
  groups, gold, diffs = [], [], {name: [] for name in (*scores, "labelers")}
  offset = 0
  for rec in records:
    n = len(rec["responses"])
    for i, j in itertools.combinations(range(n), 2):
      a, b = offset + i, offset + j
      if analyses[a]["score"] == analyses[b]["score"]:
        continue
      if any(np.isnan(s[a]) or np.isnan(s[b]) for s in scores.values()):
        continue
      groups.append(differing_criteria(analyses[a], analyses[b]))
      gold.append(analyses[a]["score"] - analyses[b]["score"])
      for name, s in scores.items():
        diffs[name].append(s[a] - s[b])
      diffs["labelers"].append(rec["ranking"][j] - rec["ranking"][i])
    offset += n
  return {
    "groups": groups,
    "gold_diff": np.asarray(gold, np.float64),
    "judge_diffs": {k: np.asarray(v, np.float64) for k, v in diffs.items()},
  }


def breakdown(
  ws: Any, splits: Sequence[str] = ("validation", "test")
) -> dict[str, dict[str, float]]:
  """`accuracy_by_group` of the workdir's RM, its initial model's likelihood and the labelers
  on the comparisons of `splits` (by default the held-out ones)."""
  if ws.config.data.comparisons_jsonl or not ws.from_world("rm_prompts"):
    raise ValueError(
      "The breakdown needs comparisons of the built-in world's prompts (the gold score judges "
      "only those); this run's comparisons are your own."
    )
  recs = [
    r
    for split in splits
    for r in ws.records("comparisons", split, path=inputs.comparisons_path(ws))
  ]
  if not recs:
    raise ValueError(
      f"No comparisons of the splits {list(splits)} in {inputs.comparisons_path(ws)}."
    )
  flat = [(r["prompt"], t) for r in recs for t in r["responses"]]
  d = ws.config.data
  enc = data_lib.encode_sft(
    ws.tokenizer(), [p for p, _ in flat], [t for _, t in flat], d.prompt_len, d.response_len
  )
  rm_cfg, lm_cfg = ws.models.reward, ws.models.rm_init
  judges = {
    "reward_model": lambda: scoring.score_with(
      ws,
      scoring.ensemble_reward_fn(ws, rm_cfg),
      ws.load_reward_model(),
      enc["tokens"],
      enc["mask"],
    ),
    "likelihood": lambda: scoring.score_with(
      ws,
      scoring.loglik_fn(ws, lm_cfg),
      ws.load_params(ws.models.rm_init_from, lm_cfg),
      enc["tokens"],
      enc["mask"],
    ),
  }
  scores = {}
  for name, score in judges.items():  # One model in memory at a time.
    scores[name] = np.full(len(flat), np.nan)
    scores[name][enc["kept"]] = score()
  world = ws.world()
  pairs = gold_differing_pairs(recs, [world.analyze(p, t) for p, t in flat], scores)
  return accuracy_by_group(**pairs)


def format_breakdown(table: Mapping[str, Mapping[str, float]], min_pairs: int = 30) -> str:
  """The table as fixed-width text; groups with fewer than `min_pairs` pairs are left out."""
  lines = [f"{'differ in':<42}{'pairs':>7}" + "".join(f"{j:>14}" for j in JUDGES)]
  for group, row in table.items():
    if row["pairs"] >= min_pairs:
      lines.append(f"{group:<42}{row['pairs']:>7}" + "".join(f"{row[j]:>14.3f}" for j in JUDGES))
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")
  console.quiet_libraries()
  ws = workspace.Workspace(_CONFIG.value, _WORKDIR.value)
  if loop.stage_done(ws.stage_dir("rm")) is None:
    raise app.UsageError(f"No finished rm stage in {ws.stage_dir('rm')}.")
  table = breakdown(ws, _SPLITS.value)
  path = os.path.join(ws.stage_dir("rm"), "breakdown.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(table, f, indent=1)
  print(format_breakdown(table))
  print(f"written to {path}")


if __name__ == "__main__":
  app.run(main)
