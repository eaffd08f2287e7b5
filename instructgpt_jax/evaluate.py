"""Stage "eval": what the paper measured, on held-out prompts judged by held-out labelers.

Policies: the base model (alone and few-shot), SFT, PPO and PPO-ptx, each answering every eval
prompt once at `eval.temperature`; the RM's own base model (`rm_base`, the pretraining phase of
stage rm_base: larger than the policy by default), alone and few-shot, as the paper's Figure 1
sets a small InstructGPT against a larger GPT-3 (absent when the RM starts from the policy's
models); two controls a skeptical reader asks for:

- SFT sampled at `eval.control_temperature` (`sft_t0.7`): part of an RL policy's gain may be
  nothing but lower randomness, which a cooler SFT gets for free;
- best-of-n (`bon4_rm`, `bon16_gold`, ...): n SFT samples per prompt, the one the reward model
  (or the world's gold score, an oracle) rates highest, for each n in `eval.best_of_n`. Its KL
  from SFT is the analytic bound log n - (n - 1) / n (Stiennon et al. 2020, App. G.3), so it
  shows how much reward a given KL buys without RL.

Per policy the report has: win rate against SFT by held-out labelers (ties count half) with its
standard error and per prompt category, mean gold score, KL(pi || pi_SFT) on its own samples, LM
loss on held-out pretraining text (the "alignment tax"), closed-domain hallucination rate,
explicit-constraint adherence, the share of samples holding a word that exists nowhere in the
world (fluency), inappropriate-output rate and EOS rate; plus the reward model's
held-out accuracy and how often two training labelers agree.

Each policy's samples and metrics are saved (`<workdir>/eval/policies/<name>.json`, the
best-of-n samples in `best_of_n.json`) as soon as they are done, so an interrupted evaluation
resumes at the next policy; the win rates are judged once all samples exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax import inputs, loop, multihost, plots, sampling, scoring, seeds, settings
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax.sim import labelers as labelers_lib
from instructgpt_jax.workspace import (
  Workspace,
  ppo_policy_name,
  ppo_snapshot_stage,
  ppo_snapshot_steps,
)

POLICIES = (
  "base",
  "base_fewshot",
  "sft",
  "ppo",
  "ppo_ptx",
  "dpo",
  "rloo",
  "rloo_ptx",
  "grpo",
  "grpo_ptx",
)
# Policy name -> the stage whose final parameters it is.
POLICY_STAGES = {
  "base": "pretrain",
  "base_fewshot": "pretrain",
  "sft": "sft",
  "ppo": "ppo/ppo",
  "ppo_ptx": "ppo/ppo_ptx",
  # Beyond the paper, reported when the workdir holds them: configs/dpo.py, and PPO's stage
  # with --config.ppo.estimator=rloo|grpo (workspace.ppo_policy_name).
  "dpo": "dpo",
  "rloo": "ppo/rloo",
  "rloo_ptx": "ppo/rloo_ptx",
  "grpo": "ppo/grpo",
  "grpo_ptx": "ppo/grpo_ptx",
}
# The RM-sized base model, prompted and few-shot (the paper's Figure 1 compares with GPT-3 both
# ways); its parameters are those of rm_base's first phase, before the NLP tasks.
RM_BASE_POLICIES = ("rm_base", "rm_base_fewshot")
RM_BASE_STAGE = "rm_base/pretrain"
FEWSHOT = ("base_fewshot", "rm_base_fewshot")
# Sampling seeds are `seeds.of(config.seed, "eval.sampling") + k` with a fixed k per sampled
# set, so adding a control never changes the samples of the policies that were there before it.
CONTROL_SEED, BEST_OF_N_SEED = 5, 6  # After the five policies' 0..4.
RM_BASE_SEEDS = (7, 8)
CURVE_SEED = 9  # The over-optimisation curve's samples (PPO snapshots: CURVE_SEED + 1 + step).
# Policies added after the first five sample from these seeds, clear of the ones above.
LATER_POLICY_SEEDS = {"dpo": 10, "rloo": 11, "rloo_ptx": 12, "grpo": 13, "grpo_ptx": 14}
DPO_CURVE_SEED = 100_000  # Past every PPO snapshot's CURVE_SEED + 1 + step.
BEST_OF_N_BY = ("rm", "gold")
# eval.prompts -> (prompt file kind, its splits). "eval": the eval prompts of held-out users, the
# report. "ppo_heldout": the PPO pool's validation and test splits (users PPO never trained on),
# judged by the training labelers: where settings are chosen without the report's prompts.
PROMPT_SETS = {
  "eval": ("eval_prompts", data_lib.SPLITS),
  "ppo_heldout": ("prompts", ("validation", "test")),
}
REPORT_FILES = {"eval": "report.json", "ppo_heldout": "report_ppo_heldout.json"}


@dataclasses.dataclass(frozen=True)
class Sampled:
  """A policy that answers each eval prompt once: its parameters' stage and how it samples."""

  name: str
  stage: str
  temperature: float
  fewshot: bool
  seed: int  # Added to the "eval.sampling" stream's seed (seeds.py).


def control_name(temperature: float) -> str:
  """The SFT-at-a-lower-temperature control's row name, e.g. "sft_t0.7"."""
  return f"sft_t{temperature:g}"


def best_of_n_name(n: int, by: str) -> str:
  return f"bon{n}_{by}"


def sampled_policies(cfg: Any) -> list[Sampled]:
  """Every one-sample-per-prompt policy, in report order (eval config `cfg`)."""
  out = [
    Sampled(
      name, POLICY_STAGES[name], cfg.temperature, name in FEWSHOT, LATER_POLICY_SEEDS.get(name, k)
    )
    for k, name in enumerate(POLICIES)
  ]
  if cfg.control_temperature is not None:
    control = Sampled(
      control_name(cfg.control_temperature), "sft", cfg.control_temperature, False, CONTROL_SEED
    )
    out.insert(POLICIES.index("sft") + 1, control)
  after_base = POLICIES.index("base_fewshot") + 1
  out[after_base:after_base] = [
    Sampled(name, RM_BASE_STAGE, cfg.temperature, name in FEWSHOT, seed)
    for name, seed in zip(RM_BASE_POLICIES, RM_BASE_SEEDS)
  ]
  return out


# --- pure statistics ------------------------------------------------------------------------------


def mean_and_se(outcomes: Sequence[float]) -> tuple[float | None, float | None]:
  """Mean of per-prompt outcomes (a win 1, a tie 0.5, a loss 0) and its standard error,
  sample std (ddof 1) / sqrt(n); prompts are the unit, since each is judged once. The SE is
  None below two outcomes."""
  x = np.asarray(outcomes, np.float64)
  if x.size == 0:
    return None, None
  se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None
  return float(x.mean()), se


def per_category(
  outcomes: Sequence[float], gold: Sequence[float], categories: Sequence[str]
) -> dict[str, dict[str, Any]]:
  """{category: {win_rate, win_rate_se, gold_score, n}} over prompts; all three lists [N]."""
  out = {}
  for cat in sorted(set(categories)):
    idx = [i for i, c in enumerate(categories) if c == cat]
    win, se = mean_and_se([outcomes[i] for i in idx])
    out[cat] = {
      "win_rate": win,
      "win_rate_se": se,
      "gold_score": float(np.mean([gold[i] for i in idx])),
      "n": len(idx),
    }
  return out


def best_of_n_choice(scores: np.ndarray, n: int) -> np.ndarray:
  """Index [N] of the highest score among each row's first n samples; scores [N, M >= n].

  The first n of M i.i.d. samples are themselves n i.i.d. samples, so one pool of max(n)
  samples per prompt serves every n. Ties go to the earliest sample."""
  if not 1 <= n <= scores.shape[1]:
    raise ValueError(f"best-of-{n} needs 1..{scores.shape[1]} samples per prompt")
  return np.argmax(scores[:, :n], axis=1)


def best_of_n_kl_bound(n: int) -> float:
  """KL(best-of-n || base policy) <= log n - (n - 1) / n, with equality when no two samples
  score the same; what the best-of-n rows report as their KL."""
  return math.log(n) - (n - 1) / n


def _rate(values: Sequence[Any]) -> float | None:
  """Mean of the values that are not None (a criterion that applies to some prompts only, or
  that a world does not have: then None)."""
  vals = [float(v) for v in values if v is not None]
  return float(np.mean(vals)) if vals else None


def _analysis_metrics(analyses: Sequence[dict[str, Any]], ended: np.ndarray) -> dict[str, Any]:
  """The report's metrics that come from the world's judgement of each response."""
  return {
    "gold_score": float(np.mean([a["score"] for a in analyses])),
    "hallucination_rate": _rate([a["hallucinated"] for a in analyses]),
    # Samples holding a word that exists nowhere in the world's texts or the prompt.
    "nonword_rate": _rate([a.get("nonword") for a in analyses]),
    "constraint_rate": _rate([a["constraint_ok"] for a in analyses]),
    "inappropriate_rate": _rate([a.get("inappropriate") for a in analyses]),
    "eos_rate": float(np.mean(ended)),
  }


# --- sampling and scoring -------------------------------------------------------------------------


def _has_params(ws: Workspace, stage: str) -> bool:
  if stage == "pretrain" and ws.hf_base:  # An imported base model stands in for pretraining.
    return True
  return any(os.path.isdir(os.path.join(ws.stage_dir(stage), d)) for d in ("final", "ckpt"))


def _sample(
  ws: Workspace,
  params: Any,
  model_cfg: Any,
  prompts: list[str],
  prefix: str,
  seed: int,
  temperature: float,
  n: int = 1,
  what: str = "",
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
  """Samples n responses per prompt (after `prefix`), prompt-major: rows i*n .. i*n+n-1 answer
  prompt i; one progress line says `what` is sampled. Returns texts [N*n], response tokens and masks [2, N*n, R], the per-sample log-prob
  sum under the sampling policy (at `temperature`) [N*n] and whether each ended with EOS
  [N*n]."""
  tok, d = ws.tokenizer(), ws.config.data
  P = d.prompt_len + (ws.config.eval.fewshot_prompt_len if prefix else 0)
  enc = data_lib.encode_prompts(tok, [prefix + p for p in prompts], P)
  if enc.n_dropped:
    raise ValueError(
      f"{enc.n_dropped} evaluation prompts do not fit in {P} tokens "
      f"(raise eval.fewshot_prompt_len or data.prompt_len)."
    )
  progress = metrics_lib.Progress("eval", len(prompts) * n, unit="response")
  progress.what = what
  out = sampling.generate_batched(
    params,
    model_cfg,
    np.repeat(enc.tokens, n, axis=0),
    np.repeat(enc.mask, n, axis=0),
    jax.random.key(seed),
    ws.mesh,
    ws.rules,
    batch_size=ws.config.eval.batch_size,
    max_new_tokens=d.response_len,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
    temperature=temperature,
    progress=progress,
  )
  resp_tokens, resp_mask = out["tokens"][:, P:], out["response_mask"][:, P:]
  texts = [tok.decode(t[m > 0]) for t, m in zip(resp_tokens, resp_mask)]
  return texts, np.stack([resp_tokens, resp_mask]), out["logprobs"].sum(axis=1), out["ended"]


def _with_prompts(prompt_enc: data_lib.EncodedPrompts, response: np.ndarray, n: int = 1):
  """tokens, mask [N*n, P+R]: each prompt (repeated n times) followed by its responses [2, N*n,
  R], the layout the policy and the RM score."""
  tokens = np.concatenate([np.repeat(prompt_enc.tokens, n, axis=0), response[0]], axis=1)
  mask = np.concatenate([np.repeat(prompt_enc.mask, n, axis=0), response[1]], axis=1)
  return tokens, mask


def _sft_logprob(
  ws: Workspace, sft_params: Any, prompt_enc: data_lib.EncodedPrompts, response: np.ndarray
) -> np.ndarray:
  """log pi_SFT(response | prompt) per sample [N], pi_SFT at eval.temperature (the reference
  every KL is measured against); response: tokens and mask [2, N, R]."""
  tokens, mask = _with_prompts(prompt_enc, response)
  return scoring.score_with(
    ws,
    scoring.loglik_fn(ws, ws.models.policy, ws.config.eval.temperature),
    sft_params,
    tokens,
    mask,
    ws.config.eval.batch_size,
  )


def _evaluate_policy(
  ws: Workspace,
  world: Any | None,
  members: Sequence[Any] | None,
  policy: Sampled,
  prompts: list[str],
  prefix: str,
  sft_params: Any,
  prompt_enc: data_lib.EncodedPrompts,
  pretrain_loss: Any,
) -> dict[str, Any]:
  """Samples the policy's responses; returns them ("texts"), their gold scores ("gold", empty
  without the world's prompts) and its report row ("metrics": with the world its judgement,
  with an RM (`members`) the mean reward PPO maximises). pretrain_loss(stage) -> the stage's
  held-out LM loss."""
  model_cfg = ws.models.for_stage(policy.stage)
  params = sft_params if policy.stage == "sft" else ws.load_params(policy.stage, model_cfg)
  seed = seeds.of(ws.config.seed, "eval.sampling") + policy.seed
  texts, response, logp, ended = _sample(
    ws, params, model_cfg, prompts, prefix, seed, policy.temperature, what=policy.name
  )
  same_as_sft = policy.stage == "sft" and policy.temperature == ws.config.eval.temperature
  kl = (
    0.0
    if same_as_sft
    else float(np.mean(logp - _sft_logprob(ws, sft_params, prompt_enc, response)))
  )
  analyses = [world.analyze(p, t) for p, t in zip(prompts, texts)] if world else []
  metrics = _analysis_metrics(analyses, ended) if world else {"eos_rate": float(np.mean(ended))}
  if members is not None:
    metrics["rm_score"] = float(
      np.mean(_penalised_reward(ws, members, prompt_enc, response, ended, 1))
    )
  return {
    "texts": texts,
    "gold": [float(a["score"]) for a in analyses],
    "metrics": {**metrics, "kl_vs_sft": kl, "pretrain_loss": pretrain_loss(policy.stage)},
  }


def _best_of_n_pool(
  ws: Workspace,
  world: Any | None,
  members: Sequence[Any] | None,
  prompts: list[str],
  sft_params: Any,
  prompt_enc: data_lib.EncodedPrompts,
  n: int,
) -> dict[str, Any]:
  """n SFT samples per prompt at eval.temperature with what selects among them: texts, gold
  scores (None without the world's prompts), the scores of the RM's ensemble `members` (None
  without an RM) and EOS flags, each [N][n]."""
  cfg = ws.config.eval
  seed = seeds.of(ws.config.seed, "eval.sampling") + BEST_OF_N_SEED
  texts, response, _, ended = _sample(
    ws, sft_params, ws.models.policy, prompts, "", seed, cfg.temperature, n, f"best-of-{n} pool"
  )
  repeated = [p for p in prompts for _ in range(n)]
  gold = [world.analyze(p, t)["score"] for p, t in zip(repeated, texts)] if world else None
  rm_scores = None
  if members is not None:
    rm_scores = _rm_reward(ws, members, prompt_enc, response, n).reshape(-1, n).tolist()
  rows = lambda x: np.asarray(x).reshape(len(prompts), n).tolist()
  return {
    "texts": [texts[i * n : (i + 1) * n] for i in range(len(prompts))],
    "gold": rows(gold) if gold is not None else None,
    "rm": rm_scores,
    "ended": rows(np.asarray(ended, bool)),
  }


def _best_of_n_rows(
  ws: Workspace, world: Any | None, prompts: list[str], pool: dict[str, Any], sft_loss: float
) -> dict[str, dict[str, Any]]:
  """The best-of-n policies' samples ("texts", "gold") and rows ("metrics") from the pool:
  selected by the gold score (with the world's prompts) and by the RM (with an RM)."""
  ended = np.asarray(pool["ended"], bool)
  selectors = {}
  if pool["gold"] is not None:
    selectors["gold"] = np.asarray(pool["gold"], np.float64)
  rm = None
  if pool["rm"] is not None:
    penalty = ws.config.ppo.missing_eos_penalty
    # Select by the reward PPO maximises: the RM's score, with the same fixed low score for a
    # response that never ends.
    rm = np.asarray(pool["rm"], np.float64)
    rm = rm if penalty is None else np.where(ended, rm, penalty)
    selectors["rm"] = rm
  out = {}
  for by in BEST_OF_N_BY:
    if by not in selectors:
      continue
    for n in ws.config.eval.best_of_n:
      pick = best_of_n_choice(selectors[by], n)
      rows = np.arange(len(pick))
      texts = [pool["texts"][i][j] for i, j in enumerate(pick)]
      analyses = [world.analyze(p, t) for p, t in zip(prompts, texts)] if world else []
      metrics = (
        _analysis_metrics(analyses, ended[rows, pick])
        if world
        else {"eos_rate": float(np.mean(ended[rows, pick]))}
      )
      if rm is not None:
        metrics["rm_score"] = float(np.mean(rm[rows, pick]))
      out[best_of_n_name(n, by)] = {
        "texts": texts,
        "gold": [float(a["score"]) for a in analyses],
        "metrics": {
          **metrics,
          "kl_vs_sft": best_of_n_kl_bound(n),
          "kl_is_bound": True,
          "pretrain_loss": sft_loss,  # SFT's parameters.
          "best_of_n": n,
          "selected_by": by,
        },
      }
  return out


# --- over-optimisation curves (Gao et al. 2022) ---------------------------------------------------


def best_of_n_curve(
  gold: np.ndarray, reward: np.ndarray, ns: Sequence[int], select_by: np.ndarray | None = None
) -> list[dict[str, Any]]:
  """Best-of-n by `select_by` (default: the reward), for each n: the mean gold and reward of the
  pick and the KL bound.

  gold, reward, select_by: [N, M] for M >= max(ns) samples per prompt. n = 1 is the sampling
  policy itself (its first sample, KL 0)."""
  out = []
  for n in ns:
    pick = best_of_n_choice(reward if select_by is None else select_by, n)
    rows = np.arange(len(pick))
    kl = best_of_n_kl_bound(n)
    out.append(
      {
        "n": int(n),
        "kl": kl,
        "sqrt_kl": math.sqrt(kl),
        "gold": float(gold[rows, pick].mean()),
        "rm": float(reward[rows, pick].mean()),
      }
    )
  return out


def _rm_reward(
  ws: Workspace, members: Sequence[Any], prompt_enc: Any, response: np.ndarray, n: int
) -> np.ndarray:
  """The RM's score of each sample [N*n]: the mean of its ensemble `members`."""
  tokens, mask = _with_prompts(prompt_enc, response, n)
  fn = scoring.ensemble_reward_fn(ws, ws.models.reward)
  return scoring.score_with(ws, fn, members, tokens, mask, ws.config.eval.batch_size)


def _penalised_reward(
  ws: Workspace, members: Sequence[Any], prompt_enc: Any, response: np.ndarray, ended: Any, n: int
):
  """The reward PPO maximises for each sample [N*n]: the RM's score (`_rm_reward`), or the
  fixed `ppo.missing_eos_penalty` for a response that never ends."""
  rm = _rm_reward(ws, members, prompt_enc, response, n)
  penalty = ws.config.ppo.missing_eos_penalty
  return rm if penalty is None else np.where(np.asarray(ended, bool), rm, penalty)


def _head_reward(
  ws: Workspace, members: Sequence[Any], prompt_enc: Any, response: np.ndarray, n: int
) -> np.ndarray:
  """The RM's scalar head alone, without its likelihood term (`rm.likelihood`), per sample."""
  heads = [dict(m, likelihood_scale=jnp.zeros_like(m["likelihood_scale"])) for m in members]
  return _rm_reward(ws, heads, prompt_enc, response, n)


def overoptimization(
  ws: Workspace, world: Any, sft_params: Any, members: Sequence[Any]
) -> dict[str, Any]:
  """Gold score and reward (of the RM's ensemble `members`) against KL to SFT, on the PPO
  pool's validation prompts (never the report's): best-of-n by the RM for each n of
  `eval.curve_best_of_n`, and every kept PPO
  policy (`ppo.snapshot_every`). Where PPO's gold stays below best-of-n's at the same KL, PPO
  is what limits the result; where best-of-n's gold falls as its reward rises, the RM is; where
  best-of-n by SFT's own likelihood (no feedback at all) matches it, the RM adds nothing."""
  cfg, tok = ws.config.eval, ws.tokenizer()
  texts = [r["prompt"] for r in ws.records("prompts", "validation")]
  enc = data_lib.encode_prompts(tok, texts, ws.config.data.prompt_len)
  prompts = [texts[i] for i in enc.kept.tolist()][: cfg.curve_prompts]
  prompt_enc = data_lib.encode_prompts(tok, prompts, ws.config.data.prompt_len)
  seed = seeds.of(ws.config.seed, "eval.sampling") + CURVE_SEED
  m = max(cfg.curve_best_of_n)
  sampled, response, logp, ended = _sample(
    ws, sft_params, ws.models.policy, prompts, "", seed, cfg.temperature, m, "curve: best-of-n"
  )
  repeated = [p for p in prompts for _ in range(m)]
  gold = np.array([world.analyze(p, t)["score"] for p, t in zip(repeated, sampled)])
  reward = _penalised_reward(ws, members, prompt_enc, response, ended, m)
  gold, reward = gold.reshape(-1, m), reward.reshape(-1, m)
  curves: dict[str, Any] = {
    "prompts": len(prompts),
    "best_of_n_rm": best_of_n_curve(gold, reward, cfg.curve_best_of_n),
    # Controls that use no feedback: SFT's own likelihood of its sample (what sharpening alone
    # buys). With `rm.likelihood`, also the RM's parts alone: its scalar head (what the RM
    # learned from the comparisons) and its likelihood term; "rm" is the whole RM's reward of
    # each pick.
    "best_of_n_sft_likelihood": best_of_n_curve(
      gold, reward, cfg.curve_best_of_n, select_by=logp.reshape(-1, m)
    ),
  }
  if ws.models.reward.reward_likelihood != "none":
    head = _head_reward(ws, members, prompt_enc, response, m).reshape(-1, m)
    curves["best_of_n_rm_head"] = best_of_n_curve(gold, reward, cfg.curve_best_of_n, head)
    curves["best_of_n_rm_likelihood_term"] = best_of_n_curve(
      gold, reward, cfg.curve_best_of_n, reward - head
    )
  names = [ppo_policy_name(ws.config.ppo, v) for v in ws.config.ppo.variants]
  for variant in dict.fromkeys(["ppo", "ppo_ptx", *names]):  # Every kind the workdir holds.
    points = []
    for step in ppo_snapshot_steps(ws.config.ppo):
      stage = ppo_snapshot_stage(variant, step)
      if not os.path.isdir(os.path.join(ws.stage_dir(stage), "final")):
        continue
      params = ws.load_params(stage, ws.models.policy)
      what = f"curve: {variant} at iteration {step}"
      point = _curve_point(ws, world, members, params, prompts, sft_params, seed + 1 + step, what)
      points.append({"step": step, **point})
    if points:
      curves[variant] = points
  if _has_params(ws, "dpo"):  # One point: DPO keeps no snapshots.
    params = ws.load_params("dpo", ws.models.policy)
    steps = (loop.stage_done(ws.stage_dir("dpo")) or {}).get("steps", 0)
    point = _curve_point(
      ws, world, members, params, prompts, sft_params, seed + DPO_CURVE_SEED, "curve: dpo"
    )
    curves["dpo"] = [{"step": steps, **point}]
  return curves


def _curve_point(
  ws: Workspace,
  world: Any,
  members: Sequence[Any],
  params: Any,
  prompts: list[str],
  sft_params: Any,
  seed: int,
  what: str,
) -> dict[str, float]:
  """A policy's point on the over-optimisation curve: one sample per prompt, its KL to SFT,
  gold score and reward (the RM's, or the missing-EOS penalty)."""
  prompt_enc = data_lib.encode_prompts(ws.tokenizer(), prompts, ws.config.data.prompt_len)
  texts, resp, logp, end = _sample(
    ws, params, ws.models.policy, prompts, "", seed, ws.config.eval.temperature, what=what
  )
  kl = float(np.mean(logp - _sft_logprob(ws, sft_params, prompt_enc, resp)))
  return {
    "kl": kl,
    "sqrt_kl": math.sqrt(max(kl, 0.0)),
    "gold": float(np.mean([world.analyze(p, t)["score"] for p, t in zip(prompts, texts)])),
    "rm": float(np.mean(_penalised_reward(ws, members, prompt_enc, resp, end, 1))),
  }


# --- resuming -------------------------------------------------------------------------------------


def _fingerprint(
  ws: Workspace, name: str, stages: Sequence[str], seed: int, prompts: list[str]
) -> str | None:
  """What a saved evaluation depends on: the runs of `stages`, the eval and data settings, its
  sampling seed and the prompts. None when a run is unfinished (nothing is reused then)."""
  run_ids = [(loop.stage_done(ws.stage_dir(stage)) or {}).get("run_id") for stage in stages]
  if not all(run_ids):
    return None
  digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
  return json.dumps(
    [
      name,
      run_ids,
      json.loads(ws.config.eval.to_json()),
      json.loads(ws.config.data.to_json()),
      ws.config.seed,
      seed,
      digest,
    ]
  )


def _policy_path(ws: Workspace, name: str) -> str:
  return os.path.join(ws.stage_dir("eval"), "policies", f"{name}.json")


def _load_policy(ws: Workspace, name: str, fingerprint: str | None) -> dict[str, Any] | None:
  """A policy's samples and metrics saved by an interrupted evaluation with the same inputs."""
  path = _policy_path(ws, name)
  if fingerprint is None or not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  if saved.get("fingerprint") != fingerprint:
    logging.warning(
      "eval: %s was made from other runs or settings; evaluating %s again", path, name
    )
    return None
  logging.info("eval: %s reused from %s", name, path)
  return saved


def _save_policy(ws: Workspace, name: str, fingerprint: str | None, saved: dict[str, Any]) -> None:
  """Saves a policy's samples and metrics atomically, so a rerun after a crash reuses them."""
  if fingerprint is None or not multihost.is_main():
    return
  path = _policy_path(ws, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  loop.write_json(path, {"fingerprint": fingerprint, **saved})


def _resumable(ws: Workspace, name: str, fingerprint: str | None, compute: Any) -> dict[str, Any]:
  saved = _load_policy(ws, name, fingerprint)
  if saved is None:
    saved = compute()
    _save_policy(ws, name, fingerprint, saved)
  return saved


# --- the stage ------------------------------------------------------------------------------------


def fewshot_prefix(ws: Workspace, world: Any | None) -> str:
  """`eval.fewshot_examples` solved examples, one "<prompt> <response>" per line, that the
  few-shot base rows put before each prompt: the world's, or without it the first short
  training demonstrations (never an eval prompt)."""
  n = ws.config.eval.fewshot_examples
  if world is not None:
    return world.fewshot_prefix(n)
  demos = [r for r in ws.records("demonstrations", "train") if len(r["prompt"].split()) <= 14]
  return "".join(f"{r['prompt']} {r['response']}\n" for r in demos[:n])


def _eval_prompts(ws: Workspace, world: Any | None) -> tuple[list[str], list[str], str, int]:
  """The eval prompts every policy answers, their categories, the few-shot prefix and how many
  prompts were dropped: those that fit the context alone and after the few-shot prefix (the
  paper drops over-long prompts too); the rest are counted."""
  cfg, tok = ws.config.eval, ws.tokenizer()
  kind, splits = PROMPT_SETS[cfg.prompts]
  recs = [r for split in splits for r in ws.records(kind, split)]
  prefix = fewshot_prefix(ws, world)
  texts = [r["prompt"] for r in recs]
  plain = set(data_lib.encode_prompts(tok, texts, ws.config.data.prompt_len).kept.tolist())
  fewshot = data_lib.encode_prompts(
    tok, [prefix + t for t in texts], ws.config.data.prompt_len + cfg.fewshot_prompt_len
  )
  keep = [i for i in fewshot.kept.tolist() if i in plain][: cfg.num_prompts]
  if not keep:
    raise ValueError(
      f"None of the {len(texts)} eval prompts fits data.prompt_len={ws.config.data.prompt_len} "
      f"tokens alone and with the few-shot prefix (+ eval.fewshot_prompt_len="
      f"{cfg.fewshot_prompt_len}); raise them."
    )
  dropped = len(texts) - len(plain & set(fewshot.kept.tolist()))
  if dropped:
    logging.warning(
      "eval: %d of %d prompts do not fit the context (with the few-shot prefix) and are not used",
      dropped,
      len(texts),
    )
  return [texts[i] for i in keep], [recs[i].get("category", "") for i in keep], prefix, dropped


def check_settings(ws: Workspace) -> None:
  """This stage's section, before any stage starts."""
  cfg = ws.config.eval
  settings.positive(cfg, "eval", "num_prompts", "batch_size", "temperature")
  settings.non_negative(cfg, "eval", "curve_prompts", "fewshot_examples", "fewshot_prompt_len")
  if cfg.control_temperature is not None:
    settings.positive(cfg, "eval", "control_temperature")
  settings.positive_ints(cfg.best_of_n, "eval.best_of_n")
  settings.positive_ints(cfg.curve_best_of_n, "eval.curve_best_of_n")
  settings.one_of(cfg, "eval", "prompts", sorted(PROMPT_SETS))


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.eval
  # The gold score and the simulated labelers judge only the world's own prompts: with prompts
  # of your own the rows hold the RM's score and the KL, and no human-judged win rate exists.
  judged = ws.from_world(PROMPT_SETS[cfg.prompts][0])
  with_curve = bool(cfg.curve_best_of_n) and ws.from_world("prompts") and _has_params(ws, "rm")
  world = ws.world() if judged or with_curve else None
  judge_world = world if judged else None
  if judged:
    training, heldout = labelers_lib.make_labeler_pools(ws.config.data.world_seed, world=world)
    # The report's judges are labelers no stage has seen; choosing settings uses the training
    # labelers, so the held-out ones stay unseen until the report.
    judges = heldout if cfg.prompts == "eval" else training
  else:
    print(
      f"[eval] your {PROMPT_SETS[cfg.prompts][0]} are not the built-in world's, so no gold "
      "score or judged win rate exists: the rows report the RM's score and the KL to SFT",
      flush=True,
    )
  prompts, categories, prefix, dropped = _eval_prompts(ws, judge_world)
  prompt_enc = data_lib.encode_prompts(ws.tokenizer(), prompts, ws.config.data.prompt_len)
  sft_params = ws.load_params("sft", ws.models.policy)
  # Read once: every row, the best-of-n pool and the curve are scored by it.
  members = ws.load_reward_model() if _has_params(ws, "rm") else None
  lm_eval, lm_losses = None, {}

  def pretrain_loss(stage: str) -> float:
    # SFT's loss serves every row made from SFT's parameters (the control, best-of-n).
    nonlocal lm_eval
    if stage not in lm_losses:
      if lm_eval is None:
        lm_eval = inputs.lm_arrays(ws, "validation")
      model_cfg = ws.models.for_stage(stage)
      params = sft_params if stage == "sft" else ws.load_params(stage, model_cfg)
      lm_losses[stage] = scoring.lm_loss(ws, params, model_cfg, lm_eval)
    return lm_losses[stage]

  results: dict[str, dict[str, Any]] = {}
  for policy in sampled_policies(cfg):
    if not _has_params(ws, policy.stage):
      continue
    loop.raise_if_preempted(f"while evaluating (before policy {policy.name!r})")
    # A PPO policy's own run (ppo/<name>), so extending the ppo stage keeps its samples.
    own = policy.stage if "run_id" in (loop.stage_done(ws.stage_dir(policy.stage)) or {}) else None
    stages = (own or policy.stage.split("/")[0], "sft") + (("rm",) if members else ())
    fingerprint = _fingerprint(ws, policy.name, stages, policy.seed, prompts)
    results[policy.name] = _resumable(
      ws,
      policy.name,
      fingerprint,
      lambda p=policy: _evaluate_policy(
        ws,
        judge_world,
        members,
        p,
        prompts,
        prefix if p.fewshot else "",
        sft_params,
        prompt_enc,
        pretrain_loss,
      ),
    )
    lm_losses.setdefault(policy.stage, results[policy.name]["metrics"]["pretrain_loss"])
  if cfg.best_of_n and "sft" in results:
    loop.raise_if_preempted("while evaluating (before best-of-n)")
    n = max(cfg.best_of_n)
    stages = ("sft", "rm") if _has_params(ws, "rm") else ("sft",)
    pool = _resumable(
      ws,
      "best_of_n",
      _fingerprint(ws, "best_of_n", stages, BEST_OF_N_SEED, prompts),
      lambda: _best_of_n_pool(ws, judge_world, members, prompts, sft_params, prompt_enc, n),
    )
    results.update(_best_of_n_rows(ws, judge_world, prompts, pool, pretrain_loss("sft")))

  curves = None
  if with_curve:
    loop.raise_if_preempted("while evaluating (before the over-optimisation curve)")
    stages = ("sft", "rm") + tuple(s for s in ("ppo", "dpo") if loop.stage_done(ws.stage_dir(s)))
    curves = _resumable(
      ws,
      "overoptimization",
      _fingerprint(ws, "overoptimization", stages, CURVE_SEED, []),
      lambda: overoptimization(ws, world, sft_params, members),
    )
    curves.pop("fingerprint", None)

  policies = {name: dict(r["metrics"]) for name, r in results.items()}
  if judged and "sft" in results:
    for name, r in results.items():
      # One judge stream per row, so adding a row never changes another row's judgements.
      rng = np.random.default_rng(
        [seeds.of(ws.config.seed, "eval.judges"), zlib.crc32(name.encode())]
      )
      wins = [
        labelers_lib.compare(judges[rng.integers(len(judges))], p, a, b, rng)
        for p, a, b in zip(prompts, r["texts"], results["sft"]["texts"])
      ]
      win, se = mean_and_se(wins)
      policies[name].update(
        win_rate_vs_sft=win,
        win_rate_vs_sft_se=se,
        per_category=per_category(wins, r["gold"], categories),
      )
  rm_done = loop.stage_done(ws.stage_dir("rm")) or {}
  label_done = loop.stage_done(ws.stage_dir("label")) or {}
  report = {
    "rm": {
      "accuracy": rm_done.get("heldout", {}).get("accuracy"),
      "labeler_agreement": label_done.get("labeler_agreement"),
      "likelihood_baseline": rm_done.get("heldout", {}).get("likelihood_baseline"),
      # Pairs whose two responses both came from SFT at temperature 1 (label.sources).
      "sft_only_accuracy": rm_done.get("heldout_sft_only", {}).get("accuracy"),
      # The SFT policy's own likelihood as a judge, when the RM starts from another model.
      "sft_likelihood_baseline": rm_done.get("heldout", {}).get("sft_likelihood_baseline"),
      "init_from": rm_done.get("init_from"),
      # With `rm.ensemble` > 1 the accuracies above are the members' mean reward's; each
      # member's own held-out accuracy is listed here.
      "ensemble": rm_done.get("ensemble", 1),
      "member_accuracies": [m["heldout"]["accuracy"] for m in rm_done.get("members", [])],
    },
    "policies": policies,
    # Gold score and reward against KL to SFT on the PPO pool's validation prompts.
    "overoptimization": curves,
    "num_prompts": len(prompts),
    "prompts": cfg.prompts,
    # False with eval prompts of your own: no gold score, no judged win rate.
    "judged": judged,
    "settings": {
      "temperature": cfg.temperature,
      "control_temperature": cfg.control_temperature,
      "best_of_n": list(cfg.best_of_n),
    },
    "examples": {
      name: [{"prompt": p, "response": t} for p, t in list(zip(prompts, r["texts"]))[:5]]
      for name, r in results.items()
    },
  }
  path = os.path.join(ws.workdir, REPORT_FILES[cfg.prompts])
  if multihost.is_main():
    with open(path, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  print(format_report(report), flush=True)
  if multihost.is_main() and cfg.prompts == "eval":
    print(f"[eval] plots: {', '.join(plots.draw_all(ws.workdir))}", flush=True)
  return {
    "report": path,
    "prompts": len(prompts),
    "prompts_too_long": dropped,
    **{f"{k}_win_rate": v.get("win_rate_vs_sft") for k, v in policies.items()},
  }


# --- the printed report ---------------------------------------------------------------------------


def _cell(value: Any, width: int, digits: int = 3) -> str:
  return f"{value:>{width}.{digits}f}" if isinstance(value, float) else f"{'-':>{width}}"


def _win_cell(win: float | None, se: float | None, width: int) -> str:
  """A win rate and its standard error as "0.620 ± 0.017" (the rate alone without an SE)."""
  if win is None:
    return f"{'-':>{width}}"
  return f"{f'{win:.3f} ± {se:.3f}' if se is not None else f'{win:.3f}':>{width}}"


def format_report(
  report: dict[str, Any], category_rows: tuple[str, str] = ("sft", "ppo_ptx")
) -> str:
  """The report as fixed-width tables: one row per policy, then per category for
  `category_rows` (SFT against PPO-ptx), then the reward model."""
  cols = (
    ("gold_score", "gold"),
    ("rm_score", "rm"),
    ("kl_vs_sft", "KL"),
    ("pretrain_loss", "pt_loss"),
    ("hallucination_rate", "halluc"),
    ("nonword_rate", "nonword"),
    ("constraint_rate", "constr"),
    ("inappropriate_rate", "inappr"),
    ("eos_rate", "eos"),
  )
  width = max([14, *(len(name) + 1 for name in report["policies"])])
  lines = []
  if report.get("prompts", "eval") != "eval":  # Not the report: say whose prompts and judges.
    lines.append(
      f"{report['num_prompts']} prompts of eval.prompts={report['prompts']!r}, judged by the "
      "training labelers (for choosing settings; the report uses eval.prompts='eval')"
    )
  if not report.get("judged", True):
    lines.append(
      f"{report['num_prompts']} prompts of your own: no gold score or judged win rate; rm is "
      "the reward PPO maximises, KL the divergence from SFT"
    )
  lines.append(f"{'policy':<{width}}{'win vs sft':>16}" + "".join(f"{h:>7}" for _, h in cols))
  for name, row in report["policies"].items():
    cells = "".join(_cell(row.get(c), 7) for c, _ in cols)
    win = _win_cell(row.get("win_rate_vs_sft"), row.get("win_rate_vs_sft_se"), 16)
    lines.append(f"{name:<{width}}{win}{cells}")
  if any(row.get("kl_is_bound") for row in report["policies"].values()):
    lines.append("best-of-n rows (bon<n>_<selector>): KL is the bound log n - (n - 1) / n")

  base, other = category_rows
  rows = report["policies"]
  if all(rows.get(r, {}).get("per_category") for r in category_rows):
    lines.append(
      f"{'category':<16}{'n':>5}{f'{base} gold':>13}{f'{other} gold':>13}{f'{other} win':>16}"
    )
    for cat, c in rows[other]["per_category"].items():
      base_gold = rows[base]["per_category"].get(cat, {}).get("gold_score")
      lines.append(
        f"{cat or '(none)':<16}{c['n']:>5}{_cell(base_gold, 13)}{_cell(c['gold_score'], 13)}"
        f"{_win_cell(c['win_rate'], c['win_rate_se'], 16)}"
      )
  rm_ = report["rm"]

  def fmt(key):
    value = rm_.get(key)
    return value if value is None else round(value, 3)

  lines.append(
    f"reward model held-out accuracy: {fmt('accuracy')} (SFT-only pairs: "
    f"{fmt('sft_only_accuracy')}); training-labeler agreement: "
    f"{fmt('labeler_agreement')}; ranking by the RM's initial model's likelihood: "
    f"{fmt('likelihood_baseline')}"
  )
  if rm_.get("member_accuracies"):
    members = ", ".join(f"{a:.3f}" for a in rm_["member_accuracies"])
    lines.append(f"  (the mean of {rm_['ensemble']} reward models; each alone: {members})")
  return "\n".join(lines)
