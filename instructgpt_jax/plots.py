"""The run's pictures, drawn with matplotlib into `<workdir>/plots/` (PNG).

- `overoptimization_png`: gold score and reward against sqrt(KL to SFT) for best-of-n by the RM
  and for PPO's kept policies (Gao et al. 2022), from the report's "overoptimization" section;
- `win_rates_png`: each policy's win rate against SFT with its standard error (the paper's
  Figure 1), from the report's "policies";
- `stage_curves_png`: the metrics each stage logged over its steps (`<stage>/metrics.jsonl`).

`python -m instructgpt_jax.tools.plots --workdir=DIR` redraws them for any finished run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

# Figures are made with matplotlib's object API and written as files: no pyplot, so importing
# this module never changes the backend of a notebook (its inline plots) or needs a display.
from matplotlib.figure import Figure

from instructgpt_jax import metrics as metrics_lib

_DPI = 110


def _save(fig: Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  return path


def overoptimization_png(curves: Mapping[str, Any], path: str) -> str:
  """Two panels, gold score and RM reward against sqrt(KL to SFT): best-of-n by the RM (each
  point labelled with its n), best-of-n by the other selectors of the same samples (dotted; the
  reward panel shows the whole RM's reward of their picks) and each PPO variant's kept
  policies, which start from SFT (the n = 1 point)."""
  bon = curves["best_of_n_rm"]
  start = next((p for p in bon if p["n"] == 1), None)
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2)
  for ax, key, title in zip(axes, ("gold", "rm"), ("gold score", "reward (RM)")):
    ax.plot([p["sqrt_kl"] for p in bon], [p[key] for p in bon], "o-", label="best-of-n by RM")
    for p in bon:
      ax.annotate(str(p["n"]), (p["sqrt_kl"], p[key]), textcoords="offset points", xytext=(3, 3))
    for name, points in curves.items():
      if name in ("best_of_n_rm", "prompts") or not isinstance(points, list):
        continue
      if name.startswith("best_of_n_"):  # Other selectors of the same samples: the controls.
        label = "best-of-n by " + name[len("best_of_n_") :].replace("_", " ")
        ax.plot([p["sqrt_kl"] for p in points], [p[key] for p in points], "o:", label=label)
        continue
      pts = ([start] if start else []) + list(points)
      ax.plot([p["sqrt_kl"] for p in pts], [p[key] for p in pts], "s--", label=name)
    ax.set_xlabel("sqrt(KL to SFT) (nats^0.5)")
    ax.set_ylabel(title)
    ax.set_title(f"{title} against KL, {curves.get('prompts', '?')} validation prompts")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  return _save(fig, path)


def win_rates_png(policies: Mapping[str, Mapping[str, Any]], path: str) -> str:
  """Each policy's win rate against SFT with a bar of +-1 standard error, and the 0.5 line."""
  rows = [(n, r) for n, r in policies.items() if r.get("win_rate_vs_sft") is not None]
  fig = Figure(figsize=(max(6, 0.6 * len(rows) + 2), 4))
  ax = fig.subplots()
  xs = range(len(rows))
  ax.bar(
    xs,
    [r["win_rate_vs_sft"] for _, r in rows],
    yerr=[r.get("win_rate_vs_sft_se") or 0.0 for _, r in rows],
    capsize=3,
    color="tab:blue",
  )
  ax.axhline(0.5, color="gray", linestyle=":")
  ax.set_xticks(list(xs), [n for n, _ in rows], rotation=45, ha="right")
  ax.set_ylabel("win rate against SFT (held-out labelers)")
  ax.set_ylim(0, 1)
  ax.set_title("Win rate against SFT, +-1 standard error")
  return _save(fig, path)


def stage_curves_png(
  rows: Sequence[Mapping[str, Any]], keys: Sequence[str], title: str, path: str
) -> str:
  """One panel per metric in `keys` (those the rows hold), against the logged step."""
  keys = [k for k in keys if any(k in r for r in rows)]
  fig = Figure(figsize=(3.4 * max(1, len(keys)), 3))
  axes = fig.subplots(1, max(1, len(keys)), squeeze=False)[0]
  for ax, key in zip(axes, keys):
    pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
    ax.plot([s for s, _ in pts], [v for _, v in pts])
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  return _save(fig, path)


# (stage directory under the workdir, metrics to draw) for `draw_all`.
STAGE_METRICS = (
  ("pretrain", ("loss", "accuracy", "grad_norm")),
  ("sft", ("loss", "accuracy", "grad_norm")),
  ("rm", ("loss", "accuracy", "grad_norm")),
  ("ppo/ppo", ("score", "kl", "gold", "pg_loss", "vf_loss", "response_length")),
  ("ppo/ppo_ptx", ("score", "kl", "gold", "ptx_loss", "pg_loss", "response_length")),
  ("dpo", ("loss", "accuracy", "chosen_reward", "rejected_reward", "grad_norm")),
)


def draw_all(workdir: str) -> list[str]:
  """Every picture the files of `workdir` allow, into `<workdir>/plots/`; returns their paths.
  Reads `report.json` (win rates, the over-optimisation curve) and `<stage>/metrics.jsonl`."""
  out_dir = os.path.join(workdir, "plots")
  paths = []
  for stage, keys in STAGE_METRICS:
    rows = metrics_lib.read_metrics(os.path.join(workdir, stage, "metrics.jsonl"))
    if rows:
      name = stage.replace("/", "_")
      paths.append(stage_curves_png(rows, keys, stage, os.path.join(out_dir, f"{name}.png")))
  report_path = os.path.join(workdir, "report.json")
  if os.path.exists(report_path):
    with open(report_path, encoding="utf-8") as f:
      report = json.load(f)
    if any(r.get("win_rate_vs_sft") is not None for r in report["policies"].values()):
      paths.append(win_rates_png(report["policies"], os.path.join(out_dir, "win_rates.png")))
    if report.get("overoptimization"):
      paths.append(
        overoptimization_png(
          report["overoptimization"], os.path.join(out_dir, "overoptimization.png")
        )
      )
  return paths
