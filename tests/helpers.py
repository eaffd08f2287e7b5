"""Small shared builders for tests."""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from instructgpt_jax import model as model_lib
from instructgpt_jax import objectives, sampling


def tiny_model(family: str = "gpt", **kw) -> model_lib.ModelConfig:
  """8 heads and widths divisible by 8, so every mesh of 8 devices can shard it."""
  base = dict(
    vocab_size=128,
    num_layers=2,
    d_model=64,
    num_heads=8,
    d_ff=128,
    max_len=64,
    family=family,
    num_kv_heads=4 if family == "llama" else 0,
  )
  base.update(kw)
  return model_lib.ModelConfig(**base)


def lm_batch(
  rng: np.random.Generator, batch: int, seq: int, vocab: int, left_pad: bool = True
) -> dict[str, np.ndarray]:
  """Random tokens with ragged left padding, mask and loss mask."""
  tokens = rng.integers(4, vocab, size=(batch, seq)).astype(np.int32)
  mask = np.ones((batch, seq), np.int32)
  if left_pad:
    for i in range(batch):
      mask[i, : i % 4] = 0
  tokens = np.where(mask == 1, tokens, 0)
  return {"tokens": tokens, "mask": mask, "loss_mask": mask.copy()}


def optim_config(lr: float = 1e-2) -> ml_collections.ConfigDict:
  return common.optim(lr, schedule="constant")


def config(stage: str, preset: str = "tiny") -> ml_collections.ConfigDict:
  """`configs/<stage>.py:<preset>`, as `--config=` loads it."""
  return importlib.import_module(f"configs.{stage}").get_config(preset)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
  """A directory `build(path)` fills once per test session, shared by the xdist workers: the
  first worker to ask builds it under a lock, the others wait and read it. Tests must only read
  it (or copy from it)."""
  # The workers' base dirs share a parent that is new for every run; without xdist the parent
  # outlives the run, and a directory built by older code must not be reused.
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path, done = root / name, root / f"{name}.built"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        build(path)
        done.touch()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return path


def forward(cfg: model_lib.ModelConfig, params, tokens, mask):
  return model_lib.Transformer(cfg).apply(
    {"params": params}, jnp.asarray(tokens), jnp.asarray(mask)
  )


def init_params(cfg: model_lib.ModelConfig, seed: int = 0):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  return nn.meta.unbox(model_lib.boxed_params(cfg, jax.random.key(seed)))


def token_logprobs(
  params, config: model_lib.ModelConfig, tokens, mask, temperature: float = 1.0
) -> jax.Array:
  """Per-token log-probs [batch, seq] from one full forward pass (no cache).

  `out[:, t] = log p(tokens[:, t] | tokens[:, <t])`; 0 at t = 0, on masked positions, and on the
  first real token of a left-padded row (its predecessor is padding). On the response of a
  `sampling.generate` output it equals `SampleOutput.logprobs` (same temperature).
  """
  lp = objectives.span_logprobs(params, config, tokens, mask, 1, tokens.shape[1] - 1, temperature)
  return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


# `sampling.generate` under `jax.jit`, as callers jit it.
generate_jit = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)


def hygiene_counts(builder) -> dict[str, int]:
  """What hygiene kept and dropped when a tfds builder's data was prepared (`data.prepare`)."""
  return dict(builder.info.metadata["hygiene"])
