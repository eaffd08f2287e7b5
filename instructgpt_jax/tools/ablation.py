"""The method comparison: every RL and preference method a set of workdirs trained (one workdir
per seed), judged as the report judges them, with the cost of each.

  python -m instructgpt_jax.tools.ablation --config=configs/dpo.py --workdirs=RUN0,RUN1

reads each workdir's report.json (win rate against SFT, gold score, KL to SFT, pretraining loss,
hallucination, constraints) and, per method, its training: the loop's wall time from its
metrics.jsonl (steps / steps_per_s at its last row: compilation included, set-up and DPO's
reference scoring not) and its matmul FLOPs from the accounting of tools/bench.py
(`rl_iteration_flops`, `dpo_step_flops`). It prints a Markdown table: the mean over the
workdirs, +- half their range (the spread of two seeds), and the cost per 0.01 of gold gained
over SFT (no gain: "-"). The rows of sampling-only controls (SFT at a lower temperature,
best-of-n) are listed without a training cost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from instructgpt_jax import console, model_configs
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax.tools import bench

TRAINED = ("ppo", "ppo_ptx", "dpo", "rloo", "rloo_ptx", "grpo", "grpo_ptx")
CONTROLS = ("sft_t0.7", "bon4_rm", "bon16_rm")
# The report's fields shown, and how each column prints.
FIELDS = (
  ("win_rate_vs_sft", "win vs SFT"),
  ("gold_score", "gold"),
  ("kl_vs_sft", "KL"),
  ("pretrain_loss", "pretraining loss"),
  ("hallucination_rate", "hallucination"),
  ("constraint_rate", "constraints"),
)


def method_stage(name: str) -> str:
  """The stage directory of a trained method, relative to the workdir."""
  return "dpo" if name == "dpo" else os.path.join("ppo", name)


def train_seconds(workdir: str, name: str) -> float | None:
  """The training loop's wall time: steps / steps_per_s at the last logged row (None: no log)."""
  rows = metrics_lib.read_metrics(os.path.join(workdir, method_stage(name), "metrics.jsonl"))
  rows = [r for r in rows if r.get("steps_per_s")]
  return rows[-1]["step"] / rows[-1]["steps_per_s"] if rows else None


def train_flops(config: ml_collections.ConfigDict, name: str, done: dict[str, Any]) -> float:
  """Matmul FLOPs of a method's training from its config and its DONE record (`done`)."""
  models = model_configs.resolve(config)
  P, R = config.data.prompt_len, config.data.response_len
  if name == "dpo":
    k = config.label.k_max  # Every ranking is padded to K slots.
    step = bench.dpo_step_flops(models.policy, rows=config.dpo.batch_size * k, prompt=P, new=R)
    reference = bench.dpo_reference_flops(
      models.policy, rows=done["comparisons"] * k, prompt=P, new=R
    )
    return done["steps"] * step + reference
  ppo = config.ppo
  updates = ppo.epochs * (ppo.rollout_batch_size // ppo.minibatch_size)
  iteration = bench.rl_iteration_flops(
    models.policy,
    models.reward,
    rows=ppo.rollout_batch_size,
    prompt=P,
    new=R,
    ptx_rows=updates * ppo.ptx_batch_size if done.get("ptx_coef") else 0,
    ptx_seq=config.data.seq_len,
    estimator=done.get("estimator", "gae"),
    reward_head_positions=R if models.reward.reward_likelihood != "none" else 0,
  )
  return done["iterations"] * iteration


def _done(workdir: str, name: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, method_stage(name), "DONE.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def collect(config: ml_collections.ConfigDict, workdirs: Sequence[str]) -> dict[str, Any]:
  """{"rows": {name: {field: [per workdir]}}, "sft_gold": [...]} for every method in every
  workdir's report (a method missing from one workdir is left out)."""
  reports = []
  for w in workdirs:
    path = os.path.join(w, "report.json")
    if not os.path.exists(path):
      raise app.UsageError(f"No report in {w}: run the evaluation there first.")
    with open(path, encoding="utf-8") as f:
      reports.append(json.load(f)["policies"])
  names = [n for n in (*TRAINED, *CONTROLS) if all(n in r for r in reports)]
  rows: dict[str, Any] = {}
  for name in names:
    row = {key: [r[name].get(key) for r in reports] for key, _ in FIELDS}
    row["win_rate_vs_sft_se"] = [r[name].get("win_rate_vs_sft_se") for r in reports]
    if name in TRAINED:
      dones = [_done(w, name) for w in workdirs]
      row["seconds"] = [train_seconds(w, name) for w in workdirs]
      row["flops"] = [train_flops(config, name, d) if d else None for d in dones]
    rows[name] = row
  return {"rows": rows, "sft_gold": [r["sft"]["gold_score"] for r in reports]}


def _mean_spread(values: Sequence[float | None]) -> tuple[float, float] | None:
  vals = [v for v in values if v is not None]
  if len(vals) < len(values) or not vals:
    return None
  return float(np.mean(vals)), (max(vals) - min(vals)) / 2


def _cell(values: Sequence[float | None], digits: int = 3) -> str:
  ms = _mean_spread(values)
  if ms is None:
    return "n/a"
  mean, spread = ms
  return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def format_table(table: dict[str, Any]) -> str:
  """The Markdown table of `collect`'s result."""
  sft_gold = float(np.mean(table["sft_gold"]))
  head = ["method", *(title for _, title in FIELDS), "train s", "train TFLOP"]
  head += ["s per 0.01 gold", "TFLOP per 0.01 gold"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in table["rows"].items():
    cells = [name, *(_cell(row[key]) for key, _ in FIELDS)]
    gain = (_mean_spread(row["gold_score"]) or (sft_gold, 0))[0] - sft_gold
    if "seconds" in row:
      sec, flops = _mean_spread(row["seconds"]), _mean_spread(row["flops"])
      cells += [
        f"{sec[0]:.0f}" if sec else "n/a",
        f"{flops[0] / 1e12:.1f}" if flops else "n/a",
        f"{sec[0] / (gain / 0.01):.0f}" if sec and gain > 0 else "-",
        f"{flops[0] / 1e12 / (gain / 0.01):.1f}" if flops and gain > 0 else "-",
      ]
    else:
      cells += ["(sampling only)", "", "", ""]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append(f"\nSFT's gold score: {_cell(table['sft_gold'])} ({len(table['sft_gold'])} run(s)).")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIRS.value:
    raise app.UsageError("--config and --workdirs are required.")
  console.quiet_libraries()
  print(format_table(collect(_CONFIG.value, _WORKDIRS.value)))


def define_flags() -> None:
  """The CLI's flags, defined when run as a program (the other tools define their own
  --config, and a test imports several tools into one process)."""
  global _CONFIG, _WORKDIRS  # pylint: disable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "configs/dpo.py (it holds the PPO and DPO sections), with the workdirs' overrides.",
    lock_config=True,
  )
  _WORKDIRS = flags.DEFINE_list("workdirs", None, "Finished workdirs, one per seed.")


_CONFIG: Any = None
_WORKDIRS: Any = None

if __name__ == "__main__":
  define_flags()
  app.run(main)
