"""The upstream figures of a run: what its policies write before any reward model exists.

The built-in world is calibrated to our scale from these figures only (never from an RM or PPO
figure): fluency (the share of samples holding a word that exists nowhere in the world's texts or
the prompt), SFT's closed-domain hallucination rate and constraint adherence (the paper's GPT-3
and SFT baselines), and, once the label stage is done, how often two training labelers agree.

  python -m instructgpt_jax.tools.upstream --config=configs/label.py[:preset] --workdir=DIR

samples the base model and SFT (at temperatures 1 and 0.7) on the PPO pool's validation and
test prompts (users no stage trains on; never the report's eval prompts), prints one row per
policy and writes `<workdir>/upstream.json`. Needs a finished sft stage on the built-in world.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from instructgpt_jax import console, loop, pipeline, workspace
from instructgpt_jax import data as data_lib

# (row name, stage, temperature)
POLICIES = (("base", "pretrain", 1.0), ("sft", "sft", 1.0), ("sft_t0.7", "sft", 0.7))
SEED = 97  # Offset from config.seed; a stream no stage uses.


def upstream_rates(analyses: list[dict[str, Any]], texts: list[str]) -> dict[str, Any]:
  """The rates of one policy's samples: fluency, hallucination, constraints, gold, length."""

  def rate(key: str) -> float | None:
    vals = [float(a[key]) for a in analyses if a.get(key) is not None]
    return float(np.mean(vals)) if vals else None

  return {
    "nonword_rate": rate("nonword"),
    "hallucination_rate": rate("hallucinated"),
    "constraint_rate": rate("constraint_ok"),
    "gold_score": rate("score"),
    "words": float(np.mean([len(t.split()) for t in texts])),
  }


def probe(ws: workspace.Workspace, num_prompts: int) -> dict[str, Any]:
  """Samples each of `POLICIES` once per validation prompt; rows of `upstream_rates`, the
  invented words seen most often, and the label stage's labeler agreement when it exists."""
  world, tok, d = ws.world(), ws.tokenizer(), ws.config.data
  recs = [r for split in ("validation", "test") for r in ws.records("prompts", split)]
  enc = data_lib.encode_prompts(tok, [r["prompt"] for r in recs], d.prompt_len)
  prompts = [recs[i]["prompt"] for i in enc.kept.tolist()][:num_prompts]
  sample_texts = pipeline.stage_module("label").sample_texts  # The label stage's sampler.
  rows, invented, samples = {}, {}, {}
  for name, stage, temperature in POLICIES:
    params = ws.load_params(stage, ws.models.policy)
    key = jax.random.key(ws.config.seed + SEED)
    texts, _ = sample_texts(ws, params, prompts, key, temperature, ws.config.label.batch_size)
    analyses = [world.analyze(p, t) for p, t in zip(prompts, texts)]
    rows[name] = upstream_rates(analyses, texts)
    counts: collections.Counter[str] = collections.Counter()
    for p, t in zip(prompts, texts):
      counts.update(world.invented_words(p, t))
    invented[name] = counts.most_common(15)
    samples[name] = [
      {"prompt": p, "response": t, "hallucinated": a["hallucinated"], "nonword": a["nonword"]}
      for p, t, a in zip(prompts, texts, analyses)
    ]
  label = loop.stage_done(ws.stage_dir("label")) or {}
  return {
    "num_prompts": len(prompts),
    "policies": rows,
    "invented_words": invented,
    "labeler_agreement": label.get("labeler_agreement"),
    "samples": samples,
  }


def _main(argv: list[str], config: Any, workdir: str | None, num_prompts: int) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if config is None or workdir is None:
    raise app.UsageError("--config and --workdir are required.")
  console.quiet_libraries()
  ws = workspace.Workspace(config, workdir)
  if loop.stage_done(ws.stage_dir("sft")) is None or not ws.from_world("prompts"):
    raise app.UsageError(
      f"No finished sft stage in {ws.workdir} whose PPO prompts are the built-in world's."
    )
  result = probe(ws, num_prompts)
  with open(os.path.join(ws.workdir, "upstream.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  cols = ("nonword_rate", "hallucination_rate", "constraint_rate", "gold_score", "words")
  print(f"{'policy':<10}" + "".join(f"{c:>20}" for c in cols))
  for name, row in result["policies"].items():
    print(f"{name:<10}" + "".join(f"{row[c]:>20.3f}" for c in cols))
  for name, words in result["invented_words"].items():
    print(f"{name}: invented words most seen: {words}")
  print(f"training-labeler agreement: {result['labeler_agreement']}")


def main() -> None:
  """The command line; its flags are defined here, not on import, so tests and other tools
  can import `probe` beside modules that define flags of the same names."""
  config = config_flags.DEFINE_config_file(
    "config", None, "The config the workdir was made with, e.g. configs/label.py.", lock_config=True
  )
  workdir = flags.DEFINE_string("workdir", None, "A workdir whose sft stage is finished.")
  num_prompts = flags.DEFINE_integer("num_prompts", 400, "Validation prompts to sample.")
  app.run(lambda argv: _main(argv, config.value, workdir.value, num_prompts.value))


if __name__ == "__main__":
  main()
