"""The arrays each stage reads, encoded from a workspace's records in the project layout.

Shared because stages read each other's data: the RM normalises on the demonstrations, PPO-ptx
and the evaluation read the pretraining text. Too-long examples are dropped and counted, never
silently truncated.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax import loop, settings, train_state
from instructgpt_jax.workspace import Workspace


def check_sft_section(ws: Workspace, section: Any, path: str) -> None:
  """An SFT recipe's section (configs/sft.py `sft`, configs/rm_base.py `rm_base.sft`): epochs,
  residual dropout, the pretraining mix, its optimizer and loop."""
  settings.non_negative(section, path, "epochs")
  settings.fraction(section, path, "dropout", low_open=False, high_open=True)
  settings.fraction(section, path, "pretrain_mix", low_open=False, high_open=True)
  train_state.check_optim(section.optim, f"{path}.optim")
  loop.check_loop(section, path, ws.batch_divisor)


def lm_arrays(ws: Workspace, split: str, seq_len: int | None = None) -> dict[str, Any]:
  """The pretraining text of `split`, packed into rows of `seq_len` tokens (default
  `config.data.seq_len`; SFT's pretraining mix packs to the demonstrations' length)."""
  texts = [r["text"] for r in ws.records("pretraining", split)]
  packed = data_lib.pack_lm(ws.tokenizer(), texts, seq_len or ws.config.data.seq_len)
  packed["loss_mask"] = packed["mask"]
  return packed


def sft_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  """Demonstrations of `split`: tokens/mask/loss_mask [N, prompt_len + response_len]."""
  recs = ws.records("demonstrations", split)
  d = ws.config.data
  arrays = data_lib.encode_sft(
    ws.tokenizer(),
    [r["prompt"] for r in recs],
    [r["response"] for r in recs],
    d.prompt_len,
    d.response_len,
  )
  dropped = arrays["n_dropped_prompt"] + arrays["n_dropped_response"]
  if dropped:
    logging.warning(
      "sft/%s: dropped %d of %d demonstrations longer than the context "
      "(%d prompts > %d tokens, %d responses > %d tokens)",
      split,
      dropped,
      len(recs),
      arrays["n_dropped_prompt"],
      d.prompt_len,
      arrays["n_dropped_response"],
      d.response_len,
    )
  if split == "train" and not arrays["tokens"].shape[0]:
    raise data_lib.DataError(
      f"{ws.jsonl('demonstrations')}: none of the {len(recs):,} training demonstrations fits "
      f"the context: {arrays['n_dropped_prompt']:,} prompts are longer than "
      f"data.prompt_len={d.prompt_len} tokens, {arrays['n_dropped_response']:,} responses "
      f"longer than data.response_len={d.response_len}."
    )
  return arrays


def mix_pretraining(
  demos: dict[str, Any],
  text: dict[str, np.ndarray],
  fraction: float,
  seed: int,
  name: str = "sft",
) -> tuple[dict[str, np.ndarray], int]:
  """Demonstrations with pretraining rows appended so that they make `fraction` of the rows
  (paper C.3: 10 %); batching shuffles them together. Returns (arrays, pretraining rows).

  demos: tokens/mask/loss_mask [N, L]; text: tokens/mask/loss_mask [M, L] (packed text, the
  loss on every token). The pretraining rows are a fixed random subset of `text`, reused every
  epoch, as the demonstrations are; fewer are taken when `text` holds too few. `name` is the
  config section that sets `fraction` (its `pretrain_mix`), for the messages.
  """
  keys = ("tokens", "mask", "loss_mask")
  n = int(demos["tokens"].shape[0])
  want = int(round(n * fraction / (1.0 - fraction)))
  m = min(want, int(text["tokens"].shape[0]))
  if want > m:
    logging.warning("%s: pretrain_mix wants %d pretraining rows; the text has %d", name, want, m)
  rows = np.random.default_rng(seed).choice(text["tokens"].shape[0], size=m, replace=False)
  return {k: np.concatenate([demos[k], text[k][rows]]) for k in keys}, m


def sft_train_rows(
  ws: Workspace, fraction: float, seed: int, name: str = "sft"
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """The rows an SFT run trains on: the train demonstrations plus pretraining text packed to
  their length (`mix_pretraining`; none when `fraction` is 0). Shared by the policy's SFT and
  the RM base model's demonstration phase (stage rm_base), so both follow one recipe.

  Returns (tokens/mask/loss_mask [N + M, prompt_len + response_len], counts: examples N,
  pretrain_rows M, dropped demonstrations).
  """
  demos = sft_arrays(ws, "train")
  arrays, n_text = {k: demos[k] for k in ("tokens", "mask", "loss_mask")}, 0
  if fraction > 0:
    d = ws.config.data
    text = lm_arrays(ws, "train", seq_len=d.prompt_len + d.response_len)
    arrays, n_text = mix_pretraining(arrays, text, fraction, seed, name)
  counts = {
    "examples": int(demos["tokens"].shape[0]),
    "pretrain_rows": n_text,
    "dropped": demos["n_dropped_prompt"] + demos["n_dropped_response"],
  }
  return arrays, counts


# Policies the label stage can sample comparisons from (`label.sources`, "policy:temperature").
SOURCE_POLICIES = ("sft", "base", "base_fewshot")


def parse_source(source: str) -> tuple[str, float]:
  """ "sft:0.7" -> ("sft", 0.7); an error a user can act on for anything else."""
  policy, _, temperature = source.partition(":")
  try:
    value = float(temperature)
  except ValueError:
    value = -1.0
  if policy not in SOURCE_POLICIES or value <= 0:
    raise settings.SettingError(
      f"label source {source!r} is not 'policy:temperature' with policy one of "
      f"{list(SOURCE_POLICIES)} and a temperature > 0 (e.g. 'sft:1.0')."
    )
  return policy, value


def source_name(policy: str, temperature: float) -> str:
  """The canonical name a comparisons file records for a source ("sft:1.0")."""
  return f"{policy}:{float(temperature)!r}"


# The pairs the paper's SFT-only accuracy counts: both responses sampled as PPO samples.
SFT_SOURCE = source_name("sft", 1.0)


def comparisons_path(ws: Workspace) -> str:
  """The user's comparisons file, or the one the label stage writes."""
  return ws.config.data.comparisons_jsonl or os.path.join(
    ws.stage_dir("label"), "comparisons.jsonl"
  )


def comparison_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  """Comparisons of `split`: tokens/mask [N, K, seq], ranks [N, K] (-1 where absent), slots
  [N, K] (each slot's index in its record's responses, -1 absent), and "sources": a list of N
  lists, each record's optional sources (empty when the file does not say)."""
  recs = ws.records("comparisons", split, path=comparisons_path(ws))
  d = ws.config.data
  arrays = data_lib.encode_comparisons(
    ws.tokenizer(),
    [r["prompt"] for r in recs],
    [r["responses"] for r in recs],
    [r["ranking"] for r in recs],
    d.prompt_len,
    d.response_len,
  )
  messages = {
    "n_dropped_prompt": "{k} of {n} comparisons dropped: prompt longer than {P} tokens "
    "(data.prompt_len)",
    "n_dropped_responses": "{k} responses of {n} comparisons dropped: longer than {R} tokens "
    "(data.response_len); the others keep their ranks",
    "n_dropped_no_pairs": "{k} of {n} comparisons dropped: no two different ranks left",
  }
  for key, message in messages.items():
    if arrays[key]:
      k, n = f"{arrays[key]:,}", f"{len(recs):,}"
      text = message.format(k=k, n=n, P=d.prompt_len, R=d.response_len)
      logging.warning("[comparisons/%s] %s", split, text)
  if split == "train" and not arrays["tokens"].shape[0]:
    raise data_lib.DataError(
      f"{comparisons_path(ws)}: none of the {len(recs):,} training comparisons is usable: "
      f"{arrays['n_dropped_prompt']:,} prompts are longer than data.prompt_len="
      f"{d.prompt_len} tokens, {arrays['n_dropped_no_pairs']:,} have no two ranks left after "
      f"dropping responses longer than data.response_len={d.response_len}."
    )
  # A list, so batching (which takes the numpy arrays) leaves it out.
  arrays["sources"] = [list(recs[i].get("sources") or []) for i in arrays["kept"]]
  return arrays


def ranks_among(arrays: dict[str, Any], source: str) -> np.ndarray:
  """`arrays["ranks"]` with every response not produced by `source` marked absent (-1), so a
  pairwise accuracy counts only the pairs whose two responses both came from it. [N, K]"""
  keep = np.zeros(arrays["ranks"].shape, bool)
  for i, (row, sources) in enumerate(zip(arrays["slots"], arrays["sources"])):
    for k, j in enumerate(row):
      keep[i, k] = j >= 0 and j < len(sources) and sources[j] == source
  return np.where(keep, arrays["ranks"], -1)


def prompt_arrays(ws: Workspace, split: str = "train") -> dict[str, Any]:
  """PPO prompts of `split`, left-padded: tokens/mask [N, prompt_len]."""
  recs = ws.records("prompts", split)
  enc = data_lib.encode_prompts(
    ws.tokenizer(), [r["prompt"] for r in recs], ws.config.data.prompt_len
  )
  if enc.n_dropped:
    logging.warning(
      "ppo: dropped %d of %d prompts longer than %d tokens",
      enc.n_dropped,
      len(recs),
      ws.config.data.prompt_len,
    )
  return {"tokens": enc.tokens, "mask": enc.mask}
