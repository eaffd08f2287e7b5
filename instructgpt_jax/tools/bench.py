"""Throughput benchmark of the project's own code paths, comparable with the PyTorch peer.

    python -m instructgpt_jax.tools.bench --preset=tiny|gpt2 [--quick] [--skip=peak,train,generate,ppo]
    python -m instructgpt_jax.tools.bench --preset=tiny --compare --peer-python=/tmp/peervenv/bin/python

Prints one JSON object per line per figure, `{"preset", "metric", "value", "unit", ...}`, with the
metric names of ../shared/bench/peer_torch.py (`train_tokens_per_s`,
`mfu_6N_attn_lmhead_vs_jax_peak`, `generate_new_tokens_per_s`, `matmul_fp32_peak_jax`) on the
same shapes (see PRESETS), plus `ppo_iteration_time` and its breakdown on the tiny shape with the
TRL step's completions and lengths (32 completions, prompt 32, 64 new tokens).

What runs is the project's code, built from the tiny config with the peer's shapes and optimizer
(`bench_config`): `pretrain.init_state` + `pretrain.train_step` (jitted like `loop.train`, state
donated), `sampling.generate`, `ppo.init_state` + `ppo.make_step` (and, for the breakdown,
`sampling.generate`, `ppo.policy_logprobs`, `ppo.value_estimates`,
`objectives.sequence_rewards` and `ppo.ppo_update` jitted separately). Every timed program reports
`compile_s` (first call minus the steady median: tracing + XLA compilation) apart from the
steady-state median of the later calls.

Generation always produces exactly `new` tokens per row, like the peer's
`min_new_tokens = max_new_tokens`: the EOS id given to the sampler is one that never occurs (-1).

`--compare` runs the peer script with `--peer-python` after our own figures, in the same sitting
(never concurrently: the CPU is shared) and prints `ratio_*` records (ours / peer).

`--profile-dir` writes a jax.profiler trace of a few train steps (per-op times of XLA:CPU's
thunks; docs/speed.md says how they were read). The variants that were measured against the
project's code paths are recorded there, not kept here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import ppo as ppo_config
from instructgpt_jax import model as model_lib
from instructgpt_jax import (
  model_configs,
  objectives,
  pipeline,
  sampling,
  sharding,
  train_state,
)

# Beside the checkout: <repo>/instructgpt_jax/tools/bench.py -> <repo>/../shared/bench/.
PEER_SCRIPT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
  "shared",
  "bench",
  "peer_torch.py",
)

# Same shapes as peer_torch.py's PRESETS (GPT-2 architecture: learned positions, tied LM head).
PRESETS: dict[str, dict[str, Any]] = {
  "tiny": dict(
    n_layer=4,
    n_embd=256,
    n_head=4,
    vocab=8192,
    n_positions=256,
    seq=256,
    batch=16,
    gen_batch=32,
    gen_prompt=32,
    gen_new=64,
    train_warmup=2,
    train_iters=10,
    gen_warmup=1,
    gen_iters=5,
    ppo_batch=32,
    ppo_prompt=32,
    ppo_new=64,
    ppo_iters=5,
  ),
  "gpt2": dict(
    n_layer=12,
    n_embd=768,
    n_head=12,
    vocab=50257,
    n_positions=1024,
    seq=512,
    batch=4,
    gen_batch=8,
    gen_prompt=64,
    gen_new=64,
    train_warmup=2,
    train_iters=5,
    gen_warmup=1,
    gen_iters=5,
    ppo_batch=8,
    ppo_prompt=64,
    ppo_new=64,
    ppo_iters=3,
  ),
}
# --quick: a few calls on a much smaller model (smoke tests); record names are unchanged.
QUICK = dict(
  n_layer=2,
  n_embd=64,
  n_head=4,
  vocab=512,
  n_positions=128,
  seq=64,
  batch=4,
  gen_batch=4,
  gen_prompt=8,
  gen_new=8,
  train_warmup=0,
  train_iters=2,
  gen_warmup=0,
  gen_iters=2,
  ppo_batch=4,
  ppo_prompt=8,
  ppo_new=8,
  ppo_iters=2,
)

PRESET_NAME: str | None = None
_EMIT: Callable[[dict], None] = lambda rec: print(json.dumps(rec), flush=True)


def emit(metric: str, value: Any, unit: str, **extra: Any) -> dict:
  rec = {"preset": PRESET_NAME, "metric": metric, "value": value, "unit": unit}
  rec.update(extra)
  _EMIT(rec)
  return rec


def _block(x):
  return jax.block_until_ready(x)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, Any]:
  """First call (compile + run), then `warmup` untimed calls and `iters` timed ones."""
  t0 = time.perf_counter()
  _block(fn())
  first = time.perf_counter() - t0
  for _ in range(warmup):
    _block(fn())
  ts = []
  for _ in range(max(iters, 1)):
    t0 = time.perf_counter()
    _block(fn())
    ts.append(time.perf_counter() - t0)
  med = statistics.median(ts)
  return {
    "median": med,
    "first": first,
    "compile": max(first - med, 0.0),
    "iters": [round(t, 4) for t in ts],
  }


def cpu_info() -> dict[str, Any]:
  """The CPU the figures were taken on (model name, family/model, cores), from /proc/cpuinfo."""
  info: dict[str, Any] = {"cores": os.cpu_count()}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in info:
          info[key] = value.strip()
  except OSError:
    pass
  return info


def bench_config(p: dict[str, Any]) -> ml_collections.ConfigDict:
  """The project's tiny PPO config with the peer's shapes and optimizer (AdamW, lr 1e-4,
  betas (0.9, 0.95), weight decay 0.1, no clipping, constant), one PPO minibatch and epoch: one
  policy and one value update per iteration, like the TRL step's one optimizer step."""
  c = ppo_config.get_config("tiny")
  c.model.update(
    vocab_size=p["vocab"],
    num_layers=p["n_layer"],
    d_model=p["n_embd"],
    num_heads=p["n_head"],
    d_ff=4 * p["n_embd"],
    max_len=p["n_positions"],
  )
  for optim in (c.pretrain.optim, c.ppo.optim, c.ppo.value_optim):
    optim.update(lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.1, clip_norm=0.0)
  c.data.update(prompt_len=p["ppo_prompt"], response_len=p["ppo_new"])
  c.ppo.update(rollout_batch_size=p["ppo_batch"], minibatch_size=p["ppo_batch"], epochs=1)
  c.ppo.ptx_batch_size = 8  # Rows of prompt + new tokens (TRL has no ptx: extra work for us).
  c.ppo.missing_eos_penalty = None  # The benchmark's EOS never occurs.
  c.rm.model = {}  # The value model has the policy's shape, like the peer's.
  return c


def model_config(p: dict[str, Any]) -> model_lib.ModelConfig:
  """The policy's model of `bench_config(p)`."""
  return model_configs.resolve(bench_config(p)).policy


def one_device_mesh():
  return sharding.make_mesh((1, 1, 1), jax.devices()[:1])


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def matmul_peak(n: int = 2048, warmup: int = 3, iters: int = 10) -> float:
  """Dense fp32 matmul FLOP/s through JAX (as ../shared/bench/peak_jax.py)."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  mm = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
  t = time_calls(lambda: mm(a, b), warmup, iters)
  peak = 2.0 * n**3 / t["median"]
  emit("matmul_fp32_peak_jax", peak / 1e9, "GFLOP/s", n=n, median_s=t["median"])
  return peak


def flops_per_token(cfg: model_lib.ModelConfig, seq: int) -> tuple[int, int]:
  """(6N + attn, 6N + attn + LM head) per trained token, the peer's accounting."""
  n_nonemb = cfg.num_params(include_embeddings=False)
  attn = 12 * cfg.num_layers * seq * cfg.d_model
  lmhead = 6 * cfg.vocab_size * cfg.d_model
  return 6 * n_nonemb + attn, 6 * n_nonemb + attn + lmhead


def _forward_flops(
  cfg: model_lib.ModelConfig, rows: int, seq: int, head_positions: int, keys: int | None = None
) -> float:
  """Matmul FLOPs of a forward pass over [rows, seq] (2N + attention over `keys` positions per
  token, default `seq`: the accounting of `flops_per_token`) with the LM head on
  `head_positions` positions of each row."""
  keys = seq if keys is None else keys
  per_token = 2 * cfg.num_params(include_embeddings=False) + 4 * cfg.num_layers * keys * cfg.d_model
  return rows * (seq * per_token + head_positions * 2 * cfg.vocab_size * cfg.d_model)


def _sampling_flops(cfg: model_lib.ModelConfig, rows: int, prompt: int, new: int) -> float:
  """A prefill with the head at the last position, then one decode step per further token
  (one query attending to the cache so far)."""
  decode = sum(_forward_flops(cfg, rows, 1, 1, keys=prompt + i) for i in range(new - 1))
  return _forward_flops(cfg, rows, prompt, 1) + decode


def rl_iteration_flops(
  policy: model_lib.ModelConfig,
  reward: model_lib.ModelConfig,
  *,
  rows: int,
  prompt: int,
  new: int,
  ptx_rows: int = 0,
  ptx_seq: int = 0,
  estimator: str = "gae",
  reward_head_positions: int = 0,
) -> float:
  """Matmul FLOPs of one fused RL iteration (`ppo.ppo_iteration`) over `rows` responses.

  Sampling; the reference forward (LM head on the response); the reward forward (its LM head on
  `reward_head_positions` per row: the response for a likelihood-term RM, else none); the policy
  update at 3x its forward plus the fused head's recomputed response logits; the ptx update
  (`ptx_rows` rows of `ptx_seq`, 0: none); with "gae" the value forward and its update at 3x
  (RLOO and GRPO have no value model). The value model has the reward model's shape.
  """
  S = prompt + new
  policy_fwd = _forward_flops(policy, rows, S, new)
  value_fwd = _forward_flops(reward, rows, S, 0)
  total = (
    _sampling_flops(policy, rows, prompt, new)
    + policy_fwd  # the reference
    + _forward_flops(reward, rows, S, reward_head_positions)
    + 3 * policy_fwd
    + rows * new * 2 * policy.vocab_size * policy.d_model  # the fused head's recompute
  )
  if ptx_rows:
    total += 3 * _forward_flops(policy, ptx_rows, ptx_seq, ptx_seq)
  if estimator == "gae":
    total += 4 * value_fwd  # its forward in the rollout, then forward + backward in the update
  return total


def dpo_step_flops(policy: model_lib.ModelConfig, *, rows: int, prompt: int, new: int) -> float:
  """Matmul FLOPs of one DPO step over `rows` responses (prompts x K slots): the policy's
  forward and backward (3x, head on the response) plus the fused head's recomputed logits. The
  reference's log-probs are computed once before training (`dpo_reference_flops`)."""
  fwd = _forward_flops(policy, rows, prompt + new, new)
  return 3 * fwd + rows * new * 2 * policy.vocab_size * policy.d_model


def dpo_reference_flops(policy: model_lib.ModelConfig, *, rows: int, prompt: int, new: int):
  """One forward of the reference over every comparison slot (`rows`), before DPO trains."""
  return _forward_flops(policy, rows, prompt + new, new)


def rl_step_gflop(p: dict[str, Any], ptx_coef: float = 1.0) -> tuple[float, float]:
  """(ours, peer's lower bound): matmul GFLOP of one bench PPO iteration (PPO-ptx unless
  `ptx_coef` is 0, which drops the ptx term from the program) and of the TRL RLOO step with the
  same completions (`ppo_batch` is the peer's `trl_batch`). Ours: `rl_iteration_flops` with the
  reward and value models in the policy's shape and 8 ptx rows (bench_config's). The peer's
  lower bound: sampling, one reference forward and the policy's forward + backward (head on the
  response only; TRL forms every position's logits, so it does at least this).
  """
  cfg = model_config(p)
  B, P, R = p["ppo_batch"], p["ppo_prompt"], p["ppo_new"]
  ours = rl_iteration_flops(
    cfg, cfg, rows=B, prompt=P, new=R, ptx_rows=8 if ptx_coef else 0, ptx_seq=P + R
  )
  policy_fwd = _forward_flops(cfg, B, P + R, R)
  peer = _sampling_flops(cfg, B, P, R) + policy_fwd + 3 * policy_fwd
  return ours / 1e9, peer / 1e9


def bench_train(p: dict[str, Any], peak: float | None) -> dict[str, float]:
  config, pretrain = bench_config(p), pipeline.stage_module("pretrain")
  models = model_configs.resolve(config)
  cfg = models.policy
  mesh = one_device_mesh()
  state, shardings = pretrain.init_state(config, models, mesh, sharding.DEFAULT_RULES, 1000)
  emit("params_total", cfg.num_params(), "params", note="tied LM head counted once")
  emit(
    "params_nonembedding",
    cfg.num_params(include_embeddings=False),
    "params",
    note="total - token embedding - position embedding",
  )
  B, T = p["batch"], p["seq"]
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (B, T), 0, p["vocab"]), np.int32)
  ones = np.ones((B, T), np.int32)
  step = train_state.jit_step(pretrain.train_step, shardings, mesh)
  rng = jax.random.key(2)
  box = {"state": state}
  with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
    batch = sharding.shard_batch(
      {"tokens": tokens, "mask": ones, "loss_mask": ones}, mesh, sharding.DEFAULT_RULES
    )

    def run():
      box["state"], m = step(box["state"], batch, rng)
      return m["loss"]

    t = time_calls(run, p["train_warmup"], p["train_iters"])
  toks = B * T / t["median"]
  emit("train_step_time", t["median"], "s", batch=B, seq=T, iters=t["iters"])
  emit("train_compile_time", t["compile"], "s", first_call_s=t["first"])
  emit("train_tokens_per_s", toks, "tokens/s", batch=B, seq=T, dtype="fp32")
  f_a, f_b = flops_per_token(cfg, T)
  emit(
    "flops_per_token_6N_attn_lmhead",
    f_b,
    "FLOP/token",
    formula="6*N_nonemb + 12*n_layer*seq*d_model + 6*vocab*d_model",
  )
  if peak:
    emit(
      "mfu_6N_attn_vs_jax_peak",
      f_a * toks / peak,
      "fraction",
      achieved_gflops=f_a * toks / 1e9,
      peak_gflops=peak / 1e9,
    )
    emit(
      "mfu_6N_attn_lmhead_vs_jax_peak",
      f_b * toks / peak,
      "fraction",
      achieved_gflops=f_b * toks / 1e9,
      peak_gflops=peak / 1e9,
    )
  return {"tokens_per_s": toks}


def _generate_fn(cfg: model_lib.ModelConfig, new: int, pad_id: int):
  return jax.jit(
    lambda params, t, m, r: sampling.generate(
      params, cfg, t, m, r, max_new_tokens=new, eos_id=-1, pad_id=pad_id
    )
  )


def bench_generate(p: dict[str, Any]) -> dict[str, float]:
  cfg = model_config(p)
  params = jax.jit(lambda r: nn.meta.unbox(model_lib.boxed_params(cfg, r)))(jax.random.key(0))
  B, P, N = p["gen_batch"], p["gen_prompt"], p["gen_new"]
  prompt = jax.random.randint(jax.random.key(3), (B, P), 0, p["vocab"] - 1, jnp.int32)
  mask = jnp.ones((B, P), jnp.int32)
  gen = _generate_fn(cfg, N, p["vocab"] - 1)
  rng = jax.random.key(4)
  t = time_calls(lambda: gen(params, prompt, mask, rng), p["gen_warmup"], p["gen_iters"])
  out = gen(params, prompt, mask, rng)
  assert out.tokens.shape == (B, P + N) and int(out.lengths.min()) == N, out.lengths
  emit("generate_time", t["median"], "s", batch=B, prompt=P, new=N, iters=t["iters"])
  emit("generate_compile_time", t["compile"], "s", first_call_s=t["first"])
  emit(
    "generate_new_tokens_per_s",
    B * N / t["median"],
    "tokens/s",
    batch=B,
    prompt=P,
    new=N,
    note="end-to-end incl. prefill; KV cache; sampling.generate",
  )
  return {"new_tokens_per_s": B * N / t["median"]}


def ppo_setup(p: dict[str, Any], ptx_coef: float | None = None, estimator: str = "gae"):
  """PPO state, batch, frozen models and settings for `ppo_iteration` on the preset's shapes
  (`bench_config`); the ptx batch is 8 rows of prompt + new tokens. `ptx_coef` replaces
  configs/ppo.py's when given. With `estimator` "rloo" or "grpo" the batch holds
  completions / group_size prompts, each sampled group_size times: the same completions."""
  ppo = pipeline.stage_module("ppo")
  config = bench_config(p)
  config.ppo.estimator = estimator
  if ptx_coef is not None:
    config.ppo.ptx_coef = ptx_coef
  B, P, N = p["ppo_batch"], p["ppo_prompt"], p["ppo_new"]
  models = model_configs.resolve(config)
  s = ppo.make_settings(config, models, eos_id=-1, pad_id=p["vocab"] - 1, variant="ppo_ptx")
  mesh = one_device_mesh()
  state, shardings = ppo.init_state(config, s, mesh, sharding.DEFAULT_RULES)
  ref_params = jax.tree.map(jnp.copy, state.policy.params)
  rm_params = (jax.tree.map(jnp.copy, state.value.params),)  # A one-member RM ensemble.
  ptx_rows, ptx_len = config.ppo.ptx_batch_size, P + N
  g = np.random.default_rng(5)
  prompts = B // s.group_size
  batch = {
    "prompts": g.integers(0, p["vocab"] - 1, (prompts, P)).astype(np.int32),
    "prompt_mask": np.ones((prompts, P), np.int32),
    "tokens": g.integers(0, p["vocab"], (ptx_rows, ptx_len)).astype(np.int32),
    "mask": np.ones((ptx_rows, ptx_len), np.int32),
    "loss_mask": np.ones((ptx_rows, ptx_len), np.int32),
  }
  return s, mesh, state, shardings, batch, ref_params, rm_params


def jit_ppo_iteration(s: Any, shardings: Any, mesh) -> Callable:
  """`ppo.make_step(s)` jitted the way `loop.train` does it (state donated)."""
  return train_state.jit_step(
    pipeline.stage_module("ppo").make_step(s),
    shardings,
    mesh,
    const_shardings=(shardings.policy.params, (shardings.value.params,)),  # One RM member.
  )


def bench_ppo(p: dict[str, Any], ptx_coef: float | None = None) -> dict[str, float]:
  ppo = pipeline.stage_module("ppo")
  s, mesh, state, shardings, batch, ref_params, rm_params = ppo_setup(p, ptx_coef)
  warm, iters = 1 if p["ppo_iters"] > 2 else 0, p["ppo_iters"]
  B, P, N = p["ppo_batch"], s.prompt_len, s.response_len
  info = dict(completions=B, prompt=P, new=N, ptx_coef=s.ppo.ptx_coef, minibatches=1, epochs=1)
  rng = jax.random.key(6)
  with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
    dev_batch = sharding.shard_batch(batch, mesh, sharding.DEFAULT_RULES)
    prompts, pmask = dev_batch["prompts"], dev_batch["prompt_mask"]
    ptx = {k: dev_batch[k] for k in ("tokens", "mask", "loss_mask")}
    parts: dict[str, dict[str, Any]] = {}

    # Breakdown: the same functions ppo.rollout / ppo.ppo_update call, jitted one by one.
    gen = jax.jit(
      lambda params, t, m, r: sampling.generate(
        params,
        s.policy_cfg,
        t,
        m,
        r,
        max_new_tokens=N,
        eos_id=s.eos_id,
        pad_id=s.pad_id,
        temperature=s.ppo.temperature,
      )
    )
    pp = state.policy.params
    parts["rollout_generate"] = time_calls(lambda: gen(pp, prompts, pmask, rng), warm, iters)
    out = gen(pp, prompts, pmask, rng)
    tok, msk = out.tokens, out.mask
    logp_fn = jax.jit(lambda params, t, m: ppo.policy_logprobs(params, s, t, m))
    value_fn = jax.jit(lambda params, t, m: ppo.value_estimates(params, s, t, m))
    reward_fn = jax.jit(
      lambda params, t, m: objectives.ensemble_rewards(params, s.value_cfg, t, m, s.prompt_len)
    )
    if s.ppo.recompute_logprobs:  # Otherwise the rollout uses the sampler's log-probs.
      parts["score_policy_logprobs"] = time_calls(lambda: logp_fn(pp, tok, msk), warm, iters)
    parts["score_reference"] = time_calls(lambda: logp_fn(ref_params, tok, msk), warm, iters)
    parts["score_reward"] = time_calls(lambda: reward_fn(rm_params, tok, msk), warm, iters)
    parts["score_value"] = time_calls(lambda: value_fn(state.value.params, tok, msk), warm, iters)
    roll_fn = jax.jit(lambda st, ref, rmp, t, m, r: ppo.rollout(st, ref, rmp, t, m, r, s))
    parts["rollout_and_scoring_fused"] = time_calls(
      lambda: roll_fn(state, ref_params, rm_params, prompts, pmask, rng), warm, iters
    )
    ro = roll_fn(state, ref_params, rm_params, prompts, pmask, rng)
    train_batch = {
      k: ro[k] for k in ("tokens", "mask", "rmask", "logp", "values", "advantages", "returns")
    }
    upd = jax.jit(lambda st, b, x, r: ppo.ppo_update(st, b, x, r, s))
    parts["update"] = time_calls(lambda: upd(state, train_batch, ptx, rng), warm, iters)

    # The fused iteration, as loop.train runs it.
    step = jit_ppo_iteration(s, shardings, mesh)
    box = {"state": jax.tree.map(jnp.copy, state)}

    def run():
      box["state"], m = step(box["state"], dev_batch, rng, ref_params, rm_params)
      return m

    total = time_calls(run, warm, iters)
  for name, t in parts.items():
    emit(f"ppo_{name}_time", t["median"], "s", compile_s=round(t["compile"], 3), **info)
  emit(
    "ppo_iteration_time",
    total["median"],
    "s",
    compile_s=round(total["compile"], 3),
    first_call_s=round(total["first"], 3),
    iters=total["iters"],
    **info,
    note="fused ppo.ppo_iteration: rollout + ref/reward/value scoring + GAE + update",
  )
  emit("ppo_iteration_compile_time", total["compile"], "s")
  emit("ppo_completion_tokens_per_s", B * N / total["median"], "tokens/s", **info)
  ours_gflop, peer_gflop = rl_step_gflop(p, s.ppo.ptx_coef)
  emit("ppo_iteration_gflop", ours_gflop, "GFLOP", note="rl_step_gflop: matmul work, computed")
  emit("ppo_iteration_gflops", ours_gflop / total["median"], "GFLOP/s")
  emit(
    "trl_rloo_step_gflop_lower_bound",
    peer_gflop,
    "GFLOP",
    note="rl_step_gflop: the peer step's sampling, reference forward, policy fwd+bwd",
  )
  return {"iteration_s": total["median"]}


def bench_group_estimators(p: dict[str, Any], ptx_coef: float | None = None) -> None:
  """The fused iteration with RLOO and with GRPO (no value model; `ppo.group_size` samples per
  prompt, the same number of completions as PPO's), timed as `bench_ppo` times PPO's."""
  warm, iters = 1 if p["ppo_iters"] > 2 else 0, p["ppo_iters"]
  for estimator in ("rloo", "grpo"):
    s, mesh, state, shardings, batch, ref_params, rm_params = ppo_setup(p, ptx_coef, estimator)
    with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
      dev_batch = sharding.shard_batch(batch, mesh, sharding.DEFAULT_RULES)
      step = jit_ppo_iteration(s, shardings, mesh)
      box = {"state": jax.tree.map(jnp.copy, state)}

      def run(step=step, box=box, dev_batch=dev_batch, ref_params=ref_params, rm_params=rm_params):
        box["state"], m = step(box["state"], dev_batch, jax.random.key(6), ref_params, rm_params)
        return m

      total = time_calls(run, warm, iters)
    emit(
      f"{estimator}_iteration_time",
      total["median"],
      "s",
      compile_s=round(total["compile"], 3),
      completions=p["ppo_batch"],
      group_size=s.group_size,
      ptx_coef=s.ppo.ptx_coef,
      note=f"fused ppo.ppo_iteration with ppo.estimator={estimator}: no value model",
    )


# ---------------------------------------------------------------------------------------------
# Profiling
# ---------------------------------------------------------------------------------------------


def _train_runner(p: dict[str, Any]) -> Callable[[], Any]:
  """A closure running one `pretrain.train_step` (compiled on its first call, done here)."""
  config, pretrain = bench_config(p), pipeline.stage_module("pretrain")
  mesh = one_device_mesh()
  state, shardings = pretrain.init_state(
    config, model_configs.resolve(config), mesh, sharding.DEFAULT_RULES, 1000
  )
  B, T = p["batch"], p["seq"]
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (B, T), 0, p["vocab"]), np.int32)
  ones = np.ones((B, T), np.int32)
  step = train_state.jit_step(pretrain.train_step, shardings, mesh)
  box = {"state": state}
  with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
    batch = sharding.shard_batch(
      {"tokens": tokens, "mask": ones, "loss_mask": ones}, mesh, sharding.DEFAULT_RULES
    )

  def run():
    with sharding.use_rules(mesh, sharding.DEFAULT_RULES):
      box["state"], m = step(box["state"], batch, jax.random.key(2))
    return m["loss"]

  _block(run())
  return run


def profile_train(p: dict[str, Any], logdir: str) -> None:
  """Writes a jax.profiler trace of a few train steps (TensorBoard, and Perfetto's JSON: the
  `*.trace.json.gz` file has one event per XLA:CPU thunk, named as in the compiled HLO)."""
  run = _train_runner(p)  # Compiles outside the trace.
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    for _ in range(3):
      _block(run())
  emit("profile_written", 0, "n/a", logdir=logdir)


# ---------------------------------------------------------------------------------------------
# Peer comparison
# ---------------------------------------------------------------------------------------------

# (ratio's name, our metric, the peer's, direction): "higher" = throughput (ratio > 1 is better
# for us), "lower" = time (ratio < 1 is better for us). TRL's PPOTrainer step is the
# like-for-like peer of our iteration; its RLOO step does about half the work.
RATIOS = (
  ("train_tokens_per_s", "train_tokens_per_s", "train_tokens_per_s", "higher"),
  (
    "mfu_6N_attn_lmhead_vs_jax_peak",
    "mfu_6N_attn_lmhead_vs_jax_peak",
    "mfu_6N_attn_lmhead_vs_jax_peak",
    "higher",
  ),
  ("generate_new_tokens_per_s", "generate_new_tokens_per_s", "generate_new_tokens_per_s", "higher"),
  ("ppo_iteration_time_vs_trl_ppo", "ppo_iteration_time", "trl_ppo_step_time", "lower"),
  ("ppo_gflops_vs_trl_ppo", "ppo_iteration_gflops", "trl_ppo_step_gflops", "higher"),
  (
    "ppo_completion_tokens_per_s_vs_trl_ppo",
    "ppo_completion_tokens_per_s",
    "trl_ppo_completion_tokens_per_s",
    "higher",
  ),
  ("ppo_iteration_time", "ppo_iteration_time", "trl_rloo_step_time", "lower"),
  (
    "ppo_completion_tokens_per_s",
    "ppo_completion_tokens_per_s",
    "trl_rloo_completion_tokens_per_s",
    "higher",
  ),
)


def run_peer(
  peer_python: str, preset: str, jax_peak_gflops: float | None, skip: set[str]
) -> list[dict]:
  cmd = [peer_python, PEER_SCRIPT, "--preset", preset]
  if jax_peak_gflops:
    cmd += ["--jax-peak-gflops", str(jax_peak_gflops)]
  peer_skip = {"train": ["train"], "generate": ["generate"], "ppo": ["trl", "trl_ppo"]}
  sk = [section for k in skip for section in peer_skip.get(k, [])]
  if sk:
    cmd += ["--skip", ",".join(sk)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  recs = []
  for line in proc.stdout.splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        recs.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  if proc.returncode:
    emit("peer_failed", proc.returncode, "exit code", stderr=proc.stderr[-2000:])
  return recs


def compare(ours: list[dict], peer: list[dict]) -> None:
  o = {r["metric"]: r["value"] for r in ours}
  pr = {r["metric"]: r["value"] for r in peer}
  for name, mine, theirs, direction in RATIOS:
    if mine in o and theirs in pr and pr[theirs]:
      emit(
        f"ratio_{name}",
        o[mine] / pr[theirs],
        "ours/peer",
        ours=o[mine],
        peer=pr[theirs],
        peer_metric=theirs,
        better="higher" if direction == "higher" else "lower",
      )
  if {"ppo_iteration_gflops", "trl_rloo_step_gflop_lower_bound"} <= o.keys() and pr.get(
    "trl_rloo_step_time"
  ):
    # Our iteration does more work than the RLOO step (value model, reward model, ptx): this
    # compares work per second; the peer's work is counted at its lower bound, so the ratio is
    # an upper bound.
    peer_rate = o["trl_rloo_step_gflop_lower_bound"] / pr["trl_rloo_step_time"]
    emit(
      "ratio_rl_gflops",
      o["ppo_iteration_gflops"] / peer_rate,
      "ours/peer",
      ours=o["ppo_iteration_gflops"],
      peer_at_least=peer_rate,
      better="higher",
    )


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[dict]:
  global PRESET_NAME, _EMIT
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
  ap.add_argument("--quick", action="store_true", help="small model, few calls (smoke test)")
  ap.add_argument("--skip", default="", help="comma list of: peak,train,generate,ppo")
  ap.add_argument(
    "--ppo-ptx-coef", type=float, default=None, help="default: configs/ppo.py's ppo.ptx_coef"
  )
  ap.add_argument("--compare", action="store_true")
  ap.add_argument("--peer-python", default=None)
  ap.add_argument("--profile-dir", default=None, help="write a jax.profiler trace of train")
  args = ap.parse_args(argv)
  PRESET_NAME = args.preset
  p = dict(PRESETS[args.preset])
  if args.quick:
    p.update(QUICK)
  skip = set(filter(None, args.skip.split(",")))
  records: list[dict] = []
  printer = _EMIT

  def collect(rec):
    records.append(rec)
    printer(rec)

  _EMIT = collect
  try:
    t_start = time.perf_counter()
    emit(
      "env",
      0,
      "n/a",
      jax=jax.__version__,
      devices=[str(d) for d in jax.devices()[:1]],
      cpu=cpu_info(),
      python=sys.version.split()[0],
      quick=args.quick,
      date=time.strftime("%Y-%m-%d"),
      config=p,
    )
    peak = None
    if "peak" not in skip:
      peak = matmul_peak(
        512 if args.quick else 2048, 1 if args.quick else 3, 2 if args.quick else 10
      )
    if args.profile_dir:
      profile_train(p, args.profile_dir)
    if "train" not in skip:
      bench_train(p, peak)
    if "generate" not in skip:
      bench_generate(p)
    if "ppo" not in skip:
      bench_ppo(p, args.ppo_ptx_coef)
      bench_group_estimators(p, args.ppo_ptx_coef)
    emit("wall_time", time.perf_counter() - t_start, "s")
    if args.compare:
      if not args.peer_python:
        raise SystemExit("--compare needs --peer-python=/path/to/venv/bin/python")
      peer = run_peer(args.peer_python, args.preset, peak / 1e9 if peak else None, skip)
      for rec in peer:
        collect(dict(rec, source="peer"))
      compare([r for r in records if r.get("source") != "peer"], peer)
  finally:
    _EMIT = printer
  return records


if __name__ == "__main__":
  main()
