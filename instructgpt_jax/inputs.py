"""The arrays each stage reads, encoded from a workspace's records in the project layout.

Shared because stages read each other's data: the RM normalises on the demonstrations, PPO-ptx
and the evaluation read the pretraining text. Too-long examples are dropped and counted, never
silently truncated.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax.workspace import Workspace


def lm_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  """The pretraining text of `split`, packed into rows of `config.data.seq_len` tokens."""
  texts = [r["text"] for r in ws.records("pretraining", split)]
  packed = data_lib.pack_lm(ws.tokenizer(), texts, ws.config.data.seq_len)
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
  return arrays


def comparisons_path(ws: Workspace) -> str:
  """The user's comparisons file, or the one the label stage writes."""
  return ws.config.data.comparisons_jsonl or os.path.join(
    ws.stage_dir("label"), "comparisons.jsonl"
  )


def comparison_arrays(ws: Workspace, split: str) -> dict[str, Any]:
  """Comparisons of `split`: tokens/mask [N, K, seq], ranks [N, K] (-1 where absent)."""
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
  dropped = {k: v for k, v in arrays.items() if k.startswith("n_dropped") and v}
  if dropped:
    logging.warning("rm/%s: of %d comparisons: %s", split, len(recs), dropped)
  return arrays


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
