"""Stage "label": comparisons sampled from several policies and ranked by simulated labelers.

For each prompt of the world's labelling set, K ~ U{k_min..k_max} responses (paper: 4..9) are
sampled, each from one of `label.sources` ("policy:temperature"; policy sft, base or
base_fewshot, the base model after the world's few-shot prefix as the evaluation prompts it),
drawn per response with `label.source_weights`, as the paper's comparisons came from the outputs
of several models. One training labeler (drawn per prompt) ranks them. The result is the
user-facing comparisons JSONL (`<workdir>/label/comparisons.jsonl`), which the RM reads through
its tfds builder like any user's file; its optional "sources" field names the source of each
response (the RM reports its accuracy on the SFT-only pairs from it). With
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
from instructgpt_jax import inputs, loop, multihost, sampling, seeds, settings
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax.formats import MAX_RESPONSES, MIN_RESPONSES
from instructgpt_jax.sim import labelers as labelers_lib
from instructgpt_jax.workspace import Workspace


def sample_texts(
  ws: Workspace,
  params: Any,
  prompts: list[str],
  rng: jax.Array,
  temperature: float,
  batch_size: int,
  prefix: str = "",
  progress: metrics_lib.Progress | None = None,
) -> tuple[list[str], dict[str, np.ndarray]]:
  """One sampled response (decoded text) per prompt, after `prefix` (a few-shot prefix then
  gets `label.fewshot_prompt_len` more prompt tokens), plus the raw sampler arrays."""
  tok = ws.tokenizer()
  P = ws.config.data.prompt_len + (ws.config.label.fewshot_prompt_len if prefix else 0)
  enc = data_lib.encode_prompts(tok, [prefix + p for p in prompts], P)
  if enc.n_dropped:
    raise ValueError(
      f"{enc.n_dropped} prompts are longer than {P} tokens (data.prompt_len"
      f"{' + label.fewshot_prompt_len' if prefix else ''}); drop them before sampling."
    )
  out = sampling.generate_batched(
    params,
    ws.models.policy,
    enc.tokens,
    enc.mask,
    rng,
    ws.mesh,
    ws.rules,
    batch_size=batch_size,
    max_new_tokens=ws.config.data.response_len,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
    temperature=temperature,
    progress_name="label",
    progress=progress,
  )
  texts = [tok.decode(row[P:][m[P:] > 0]) for row, m in zip(out["tokens"], out["mask"])]
  return texts, out


def parse_sources(cfg: Any) -> tuple[list[tuple[str, float]], np.ndarray]:
  """`label.sources` as (policy, temperature) pairs and their normalised weights; errors name
  the setting to fix."""
  sources = [inputs.parse_source(s) for s in cfg.sources]
  weights = np.asarray(cfg.source_weights, np.float64)
  if not sources:
    raise settings.SettingError("label.sources is empty; give at least one, e.g. ('sft:1.0',).")
  if weights.shape != (len(sources),) or (weights < 0).any() or weights.sum() <= 0:
    raise settings.SettingError(
      f"label.source_weights={tuple(cfg.source_weights)} must be {len(sources)} non-negative "
      f"numbers (one per label.sources entry) with a positive sum."
    )
  names = [inputs.source_name(p, t) for p, t in sources]
  if len(set(names)) != len(names):
    raise settings.SettingError(f"label.sources {list(cfg.sources)} names a source twice.")
  return sources, weights / weights.sum()


def assign_sources(
  fits: np.ndarray, weights: np.ndarray, ks: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
  """The source of each of a prompt's K responses, drawn with `weights` among the sources whose
  prompt fits the context.

  fits: [prompts, sources] bool; weights: [sources]; ks: [prompts]. Returns one int array of
  length ks[i] per prompt (indices into the sources)."""
  out = []
  for fit, k in zip(fits, ks):
    w = np.where(fit, weights, 0.0)
    if w.sum() <= 0:  # No weighted source fits: the first that does (the caller checks one).
      w = fit.astype(np.float64)
    out.append(rng.choice(len(weights), size=int(k), p=w / w.sum()))
  return out


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
  if multihost.is_main():
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


def check_settings(ws: Workspace) -> None:
  """This stage's section (nothing is sampled with your own `data.comparisons_jsonl`)."""
  if ws.config.data.comparisons_jsonl:
    return
  if not ws.from_world("rm_prompts"):
    raise settings.SettingError(
      "Labelling needs the built-in world's simulated labelers, which judge only the world's "
      "prompts; with your own config.data.rm_prompts_jsonl set config.data.comparisons_jsonl."
    )
  cfg = ws.config.label
  settings.positive(cfg, "label", "num_prompts", "batch_size", "chunk_prompts")
  settings.non_negative(cfg, "label", "fewshot_examples", "fewshot_prompt_len")
  settings.require(
    MIN_RESPONSES <= cfg.k_min <= cfg.k_max <= MAX_RESPONSES,
    "label.k_min, label.k_max",
    (cfg.k_min, cfg.k_max),
    f"need {MIN_RESPONSES} <= k_min <= k_max <= {MAX_RESPONSES}",
  )
  parse_sources(cfg)


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.label
  out_path = os.path.join(ws.stage_dir("label"), "comparisons.jsonl")
  if ws.config.data.comparisons_jsonl:
    recs = data_lib.read_jsonl(ws.config.data.comparisons_jsonl, "comparisons")
    return {"source": ws.config.data.comparisons_jsonl, "comparisons": len(recs)}
  world = ws.world()
  train_pool, _ = labelers_lib.make_labeler_pools(ws.config.data.world_seed, world=world)
  recs = [
    r
    for split in data_lib.SPLITS
    for r in ws.records("prompts", split, path=ws.jsonl("rm_prompts"))
  ]
  tok = ws.tokenizer()
  d = ws.config.data
  fits = data_lib.encode_prompts(tok, [r["prompt"] for r in recs], d.prompt_len)
  recs = [recs[i] for i in fits.kept][: cfg.num_prompts]
  sources, weights = parse_sources(cfg)
  names = [inputs.source_name(p, t) for p, t in sources]
  prefix = world.fewshot_prefix(cfg.fewshot_examples)
  fewshot_fits = np.zeros(len(recs), bool)
  fewshot_fits[
    data_lib.encode_prompts(
      tok, [prefix + r["prompt"] for r in recs], d.prompt_len + cfg.fewshot_prompt_len
    ).kept
  ] = True
  # [prompts, sources]: a few-shot source only where the prefixed prompt fits the context.
  source_fits = np.stack(
    [fewshot_fits if p == "base_fewshot" else np.ones(len(recs), bool) for p, _ in sources], 1
  )
  if not source_fits.any(axis=1).all():
    raise ValueError(
      "Some prompts fit no label source (only base_fewshot is configured and the few-shot "
      "prefix makes them too long): raise label.fewshot_prompt_len or add 'sft:1.0'."
    )
  ks = np.random.default_rng(seeds.of(ws.config.seed, "label.rankings")).integers(
    cfg.k_min, cfg.k_max + 1, size=len(recs)
  )
  assigned = assign_sources(
    source_fits, weights, ks, np.random.default_rng(seeds.of(ws.config.seed, "label.sources"))
  )
  # Chunks of prompts are sampled and ranked with keys of their own, so a run resumed after
  # an interruption writes exactly what an uninterrupted one would.
  runs = {
    s: (loop.stage_done(ws.stage_dir(s)) or {}).get("run_id", "") for s in ("pretrain", "sft")
  }
  fingerprint = json.dumps(
    [
      runs,
      len(recs),
      ks.tolist(),
      names,
      weights.tolist(),
      cfg.fewshot_examples,
      cfg.fewshot_prompt_len,
      cfg.chunk_prompts,
      ws.config.seed,
    ]
  )
  # Every process samples and ranks every chunk (the same rows, from the same keys); process 0
  # writes them.
  done, rows, empty = _read_progress(out_path, fingerprint)
  multihost.barrier("label: progress read")
  writes = multihost.is_main()
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  if writes and not done:
    _write_rows(out_path + ".partial", [])
    _write_progress(out_path, fingerprint, 0, 0, 0)
  policies = {p for p, _ in sources}
  params = {
    "sft": ws.load_params("sft", ws.models.policy) if "sft" in policies else None,
    "base": (
      ws.load_params("pretrain", ws.models.policy) if policies & {"base", "base_fewshot"} else None
    ),
  }
  num_chunks = -(-len(recs) // cfg.chunk_prompts)
  # One line for the whole stage: responses sampled of all prompts' K, with the source now.
  progress = metrics_lib.Progress(
    "label", int(ks.sum()), start=int(ks[:done].sum()), unit="response"
  )
  for chunk in range(done // cfg.chunk_prompts, num_chunks):
    loop.raise_if_preempted(f"while labelling (after {done} of {len(recs)} prompts)")
    lo, hi = chunk * cfg.chunk_prompts, min((chunk + 1) * cfg.chunk_prompts, len(recs))
    # texts[i][j]: response j of prompt lo + i, from source assigned[lo + i][j].
    texts: list[list[str]] = [[""] * int(k) for k in ks[lo:hi]]
    chunk_key = jax.random.fold_in(
      jax.random.key(seeds.of(ws.config.seed, "label.sampling")), chunk
    )
    for s, (policy, temperature) in enumerate(sources):
      slots = [(i, j) for i in range(hi - lo) for j, a in enumerate(assigned[lo + i]) if a == s]
      if not slots:
        continue
      progress.what = names[s]
      sampled, _ = sample_texts(
        ws,
        params["sft" if policy == "sft" else "base"],
        [recs[lo + i]["prompt"] for i, _ in slots],
        jax.random.fold_in(chunk_key, s),
        temperature,
        cfg.batch_size,
        prefix=prefix if policy == "base_fewshot" else "",
        progress=progress,
      )
      for (i, j), text in zip(slots, sampled):
        texts[i][j] = text
    rng = np.random.default_rng([seeds.of(ws.config.seed, "label.rankings"), chunk])
    new_rows = []
    for i, rec in enumerate(recs[lo:hi]):
      # The comparisons format refuses empty responses (an immediate EOS), so they are
      # dropped and counted; a prompt left with fewer than two responses is skipped.
      kept = [j for j, t in enumerate(texts[i]) if t.strip()]
      empty += len(texts[i]) - len(kept)
      if len(kept) < 2:
        continue
      responses = [texts[i][j] for j in kept]
      labeler = train_pool[rng.integers(len(train_pool))]
      new_rows.append(
        {
          "prompt": rec["prompt"],
          "responses": responses,
          "ranking": labelers_lib.rank(labeler, rec["prompt"], responses, rng),
          "user_id": rec["user_id"],
          "sources": [names[assigned[lo + i][j]] for j in kept],
        }
      )
    rows.extend(new_rows)
    done = hi
    if writes:
      _save_rows(out_path + ".partial", new_rows, "a")
      _write_progress(out_path, fingerprint, done, len(rows), empty)
    logging.info(
      "label: %d of %d prompts labelled (chunk %d of %d)", done, len(recs), chunk + 1, num_chunks
    )
  if writes:
    os.replace(out_path + ".partial", out_path)
    os.remove(out_path + ".progress.json")
  # Every pair of every prompt, as the RM's accuracy is scored on all C(K,2) pairs.
  pairs = [(r["prompt"], a, b) for r in rows for a, b in itertools.combinations(r["responses"], 2)]
  gold = [world.gold_score(r["prompt"], t) for r in rows for t in r["responses"]]
  by_source = [src for r in rows for src in r["sources"]]
  gold_by_source = {
    name: float(np.mean([g for g, src in zip(gold, by_source) if src == name]))
    for name in names
    if name in by_source
  }
  return {
    "comparisons": len(rows),
    "responses": int(sum(len(r["responses"]) for r in rows)),
    "dropped_empty_responses": empty,
    "path": out_path,
    "labeler_agreement": labelers_lib.labeler_agreement(
      train_pool, pairs, np.random.default_rng(seeds.of(ws.config.seed, "label.agreement"))
    ),
    "sample_gold_mean": float(np.mean(gold)),
    # SFT at temperature 1 (absent when it is not a source): the samples PPO starts from.
    "sft_sample_gold_mean": gold_by_source.get(inputs.SFT_SOURCE),
    "responses_by_source": {name: by_source.count(name) for name in names},
    "gold_mean_by_source": gold_by_source,
  }
