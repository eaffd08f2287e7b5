"""Stage "label": comparisons sampled from the SFT policy and ranked by simulated labelers.

For each prompt of the world's labelling set, K ~ U{k_min..k_max} responses (paper: 4..9) are
sampled from the SFT policy at `label.temperature`, and one training labeler (drawn per prompt)
ranks them. The result is the user-facing comparisons JSONL (`<workdir>/label/comparisons.jsonl`),
which the RM reads through its tfds builder like any user's file. With
`config.data.comparisons_jsonl` set, the user's comparisons are used and nothing is sampled.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import jax
import numpy as np

from instructgpt_jax import data as data_lib
from instructgpt_jax import labelers as labelers_lib
from instructgpt_jax import sampling
from instructgpt_jax.workspace import Workspace


def sample_texts(ws: Workspace, params: Any, prompts: list[str], rng: jax.Array,
                 temperature: float, batch_size: int) -> tuple[list[str], dict[str, np.ndarray]]:
  """One sampled response (decoded text) per prompt, plus the raw sampler arrays."""
  tok = ws.tokenizer()
  enc = data_lib.encode_prompts(tok, prompts, ws.config.data.prompt_len)
  if enc.n_dropped:
    raise ValueError(f"{enc.n_dropped} prompts are longer than data.prompt_len="
                     f"{ws.config.data.prompt_len} tokens; drop them before sampling.")
  out = sampling.generate_batched(params, ws.model_config(), enc.tokens, enc.mask, rng, ws.mesh,
                                  batch_size=batch_size,
                                  max_new_tokens=ws.config.data.response_len,
                                  eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=temperature,
                                  progress_name="label")
  P = ws.config.data.prompt_len
  texts = [tok.decode(row[P:][m[P:] > 0]) for row, m in zip(out["tokens"], out["mask"])]
  return texts, out


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.label
  out_path = os.path.join(ws.stage_dir("label"), "comparisons.jsonl")
  if ws.config.data.comparisons_jsonl:
    recs = data_lib.read_jsonl(ws.config.data.comparisons_jsonl, "comparisons")
    return {"source": ws.config.data.comparisons_jsonl, "comparisons": len(recs)}
  if not ws.uses_world:
    raise ValueError("Labelling needs the built-in world's simulated labelers; with your own "
                     "data set config.data.comparisons_jsonl.")
  world = ws.world()
  train_pool, _ = labelers_lib.make_labeler_pools(ws.config.data.world_seed, world=world)
  recs = [r for split in data_lib.SPLITS
          for r in ws.records("prompts", split, path=ws.jsonl("rm_prompts"))]
  tok = ws.tokenizer()
  fits = data_lib.encode_prompts(tok, [r["prompt"] for r in recs], ws.config.data.prompt_len)
  recs = [recs[i] for i in fits.kept][:cfg.num_prompts]
  rng = np.random.default_rng(ws.config.seed + 30)
  ks = rng.integers(cfg.k_min, cfg.k_max + 1, size=len(recs))
  repeated = [r["prompt"] for r, k in zip(recs, ks) for _ in range(k)]
  offsets = np.concatenate([[0], np.cumsum(ks)])
  params = ws.load_params("sft", ws.model_config())
  texts, _ = sample_texts(ws, params, repeated, jax.random.key(ws.config.seed + 31),
                          cfg.temperature, cfg.batch_size)
  rows, pairs, empty = [], [], 0
  for i, rec in enumerate(recs):
    # The comparisons format refuses empty responses (an immediate EOS), so they are dropped
    # and counted; a prompt left with fewer than two responses is skipped.
    sampled = texts[offsets[i]:offsets[i + 1]]
    responses = [t for t in sampled if t.strip()]
    empty += len(sampled) - len(responses)
    if len(responses) < 2:
      continue
    labeler = train_pool[rng.integers(len(train_pool))]
    rows.append({"prompt": rec["prompt"], "responses": responses,
                 "ranking": labelers_lib.rank(labeler, rec["prompt"], responses, rng),
                 "user_id": rec["user_id"]})
    # Every pair of the prompt, as the RM's accuracy is scored on all C(K,2) pairs.
    pairs.extend((rec["prompt"], a, b) for a, b in itertools.combinations(responses, 2))
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  tmp = out_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  os.replace(tmp, out_path)
  gold = [world.gold_score(r["prompt"], t) for r in rows for t in r["responses"]]
  return {"comparisons": len(rows), "responses": int(sum(len(r["responses"]) for r in rows)),
          "dropped_empty_responses": empty, "path": out_path,
          "labeler_agreement": labelers_lib.labeler_agreement(train_pool, pairs, rng),
          "sft_sample_gold_mean": float(np.mean(gold))}
