"""Stage "label": comparisons sampled from the SFT policy and ranked by simulated labelers.

For each prompt of the world's labelling set, K ~ U{k_min..k_max} responses (paper: 4..9) are
sampled from the SFT policy at `label.temperature`, and one training labeler (drawn per prompt)
ranks them. The result is the user-facing comparisons JSONL (`<workdir>/label/comparisons.jsonl`),
which the RM reads through its tfds builder like any user's file. With
`config.data.comparisons_jsonl` set, the user's comparisons are used and nothing is sampled.

Prompts are labelled in chunks of `label.chunk_prompts`, each with its own sampling key and
labeler draws; after each chunk the rows so far are saved (`comparisons.jsonl.partial` and a
`.progress.json` record), so an interrupted stage resumes at the last finished chunk and writes
exactly what an uninterrupted run would.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax import loop, sampling
from instructgpt_jax.sim import labelers as labelers_lib
from instructgpt_jax.workspace import Workspace


def sample_texts(
  ws: Workspace,
  params: Any,
  prompts: list[str],
  rng: jax.Array,
  temperature: float,
  batch_size: int,
) -> tuple[list[str], dict[str, np.ndarray]]:
  """One sampled response (decoded text) per prompt, plus the raw sampler arrays."""
  tok = ws.tokenizer()
  enc = data_lib.encode_prompts(tok, prompts, ws.config.data.prompt_len)
  if enc.n_dropped:
    raise ValueError(
      f"{enc.n_dropped} prompts are longer than data.prompt_len="
      f"{ws.config.data.prompt_len} tokens; drop them before sampling."
    )
  out = sampling.generate_batched(
    params,
    ws.model_config(),
    enc.tokens,
    enc.mask,
    rng,
    ws.mesh,
    batch_size=batch_size,
    max_new_tokens=ws.config.data.response_len,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
    temperature=temperature,
    progress_name="label",
  )
  P = ws.config.data.prompt_len
  texts = [tok.decode(row[P:][m[P:] > 0]) for row, m in zip(out["tokens"], out["mask"])]
  return texts, out


def _read_progress(out_path: str, fingerprint: str) -> tuple[int, list[dict[str, Any]], int]:
  """(prompts done, rows written, empty responses) of an interrupted run of the same settings;
  (0, [], 0) when there is none or it was made with other settings."""
  progress_path, partial = out_path + ".progress.json", out_path + ".partial"
  if not (os.path.exists(progress_path) and os.path.exists(partial)):
    return 0, [], 0
  with open(progress_path, encoding="utf-8") as f:
    progress = json.load(f)
  if progress.get("fingerprint") != fingerprint:
    logging.warning("label: ignoring an interrupted run made with other settings (%s)", partial)
    return 0, [], 0
  with open(partial, encoding="utf-8") as f:
    rows = [json.loads(line) for line, _ in zip(f, range(progress["rows"]))]
  if len(rows) < progress["rows"]:
    logging.warning("label: %s holds fewer rows than recorded; labelling from the start", partial)
    return 0, [], 0
  # Rows past the recorded count belong to a chunk that was cut off before it was recorded.
  _write_rows(partial, rows)
  logging.info("label: resumed after %d of the prompts (%s)", progress["prompts_done"], partial)
  return progress["prompts_done"], rows, progress["empty"]


def _save_rows(path: str, rows: list[dict[str, Any]], mode: str) -> None:
  """Writes (mode "w") or appends ("a") JSONL rows and syncs them to disk."""
  with open(path, mode, encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _write_rows(path: str, rows: list[dict[str, Any]]) -> None:
  """Replaces the file with `rows`, atomically."""
  _save_rows(path + ".tmp", rows, "w")
  os.replace(path + ".tmp", path)


def _write_progress(
  out_path: str, fingerprint: str, prompts_done: int, rows: int, empty: int
) -> None:
  """Atomically records how far the partial comparisons file goes (after its rows are synced)."""
  loop.write_json(
    out_path + ".progress.json",
    {"fingerprint": fingerprint, "prompts_done": prompts_done, "rows": rows, "empty": empty},
  )


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.label
  out_path = os.path.join(ws.stage_dir("label"), "comparisons.jsonl")
  if ws.config.data.comparisons_jsonl:
    recs = data_lib.read_jsonl(ws.config.data.comparisons_jsonl, "comparisons")
    return {"source": ws.config.data.comparisons_jsonl, "comparisons": len(recs)}
  if not ws.uses_world:
    raise ValueError(
      "Labelling needs the built-in world's simulated labelers; with your own "
      "data set config.data.comparisons_jsonl."
    )
  if cfg.chunk_prompts < 1:
    raise ValueError(f"label.chunk_prompts must be >= 1, not {cfg.chunk_prompts}.")
  world = ws.world()
  train_pool, _ = labelers_lib.make_labeler_pools(ws.config.data.world_seed, world=world)
  recs = [
    r
    for split in data_lib.SPLITS
    for r in ws.records("prompts", split, path=ws.jsonl("rm_prompts"))
  ]
  tok = ws.tokenizer()
  fits = data_lib.encode_prompts(tok, [r["prompt"] for r in recs], ws.config.data.prompt_len)
  recs = [recs[i] for i in fits.kept][: cfg.num_prompts]
  ks = np.random.default_rng(ws.config.seed + 30).integers(cfg.k_min, cfg.k_max + 1, size=len(recs))
  # Chunks of prompts are sampled and ranked with keys of their own, so a run resumed after
  # an interruption writes exactly what an uninterrupted one would.
  sft_run = (loop.stage_done(ws.stage_dir("sft")) or {}).get("run_id", "")
  fingerprint = json.dumps(
    [sft_run, len(recs), ks.tolist(), cfg.temperature, cfg.chunk_prompts, ws.config.seed]
  )
  done, rows, empty = _read_progress(out_path, fingerprint)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  if not done:
    _write_rows(out_path + ".partial", [])
    _write_progress(out_path, fingerprint, 0, 0, 0)
  params = ws.load_params("sft", ws.model_config())
  num_chunks = -(-len(recs) // cfg.chunk_prompts)
  for chunk in range(done // cfg.chunk_prompts, num_chunks):
    loop.raise_if_preempted(f"while labelling (after {done} of {len(recs)} prompts)")
    lo, hi = chunk * cfg.chunk_prompts, min((chunk + 1) * cfg.chunk_prompts, len(recs))
    repeated = [r["prompt"] for r, k in zip(recs[lo:hi], ks[lo:hi]) for _ in range(k)]
    offsets = np.concatenate([[0], np.cumsum(ks[lo:hi])])
    texts, _ = sample_texts(
      ws,
      params,
      repeated,
      jax.random.fold_in(jax.random.key(ws.config.seed + 31), chunk),
      cfg.temperature,
      cfg.batch_size,
    )
    rng = np.random.default_rng([ws.config.seed + 30, chunk])
    new_rows = []
    for i, rec in enumerate(recs[lo:hi]):
      # The comparisons format refuses empty responses (an immediate EOS), so they are
      # dropped and counted; a prompt left with fewer than two responses is skipped.
      sampled = texts[offsets[i] : offsets[i + 1]]
      responses = [t for t in sampled if t.strip()]
      empty += len(sampled) - len(responses)
      if len(responses) < 2:
        continue
      labeler = train_pool[rng.integers(len(train_pool))]
      new_rows.append(
        {
          "prompt": rec["prompt"],
          "responses": responses,
          "ranking": labelers_lib.rank(labeler, rec["prompt"], responses, rng),
          "user_id": rec["user_id"],
        }
      )
    _save_rows(out_path + ".partial", new_rows, "a")
    rows.extend(new_rows)
    done = hi
    _write_progress(out_path, fingerprint, done, len(rows), empty)
    logging.info(
      "label: %d of %d prompts labelled (chunk %d of %d)", done, len(recs), chunk + 1, num_chunks
    )
  os.replace(out_path + ".partial", out_path)
  os.remove(out_path + ".progress.json")
  # Every pair of every prompt, as the RM's accuracy is scored on all C(K,2) pairs.
  pairs = [(r["prompt"], a, b) for r in rows for a, b in itertools.combinations(r["responses"], 2)]
  gold = [world.gold_score(r["prompt"], t) for r in rows for t in r["responses"]]
  return {
    "comparisons": len(rows),
    "responses": int(sum(len(r["responses"]) for r in rows)),
    "dropped_empty_responses": empty,
    "path": out_path,
    "labeler_agreement": labelers_lib.labeler_agreement(
      train_pool, pairs, np.random.default_rng(ws.config.seed + 32)
    ),
    "sft_sample_gold_mean": float(np.mean(gold)),
  }
