"""Stage "eval": what the paper measured, on held-out prompts judged by held-out labelers.

For each policy (base, base few-shot, SFT, PPO, PPO-ptx) one response per evaluation prompt is
sampled; the report has, per policy: win rate against SFT by held-out labelers (ties count half),
mean gold score, KL(pi || pi_SFT) on its own samples, LM loss on held-out pretraining text (the
"alignment tax"), closed-domain hallucination rate and explicit-constraint adherence; plus the
reward model's held-out accuracy and how often two training labelers agree.

Each policy's samples and metrics are saved (`<workdir>/eval/policies/<name>.json`) as soon as
they are done, so an interrupted evaluation resumes at the next policy; the win rates are
judged once all samples exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

from instructgpt_jax import data as data_lib
from instructgpt_jax import inputs, loop, sampling, scoring
from instructgpt_jax.sim import labelers as labelers_lib
from instructgpt_jax.workspace import Workspace

POLICIES = ("base", "base_fewshot", "sft", "ppo", "ppo_ptx")
# Policy name -> the stage whose final parameters it is.
POLICY_STAGES = {
  "base": "pretrain",
  "base_fewshot": "pretrain",
  "sft": "sft",
  "ppo": "ppo/ppo",
  "ppo_ptx": "ppo/ppo_ptx",
}


def _available(ws: Workspace) -> list[str]:
  return [
    p
    for p in POLICIES
    if os.path.isdir(os.path.join(ws.stage_dir(POLICY_STAGES[p]), "final"))
    or os.path.isdir(os.path.join(ws.stage_dir(POLICY_STAGES[p]), "ckpt"))
    or (POLICY_STAGES[p] == "pretrain" and ws.hf_base)  # An imported base model.
  ]


def _sample(
  ws: Workspace, params: Any, prompts: list[str], prefix: str, seed: int
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
  """Samples one response per prompt (after `prefix`); returns texts, response tokens and
  masks [2, N, R], the per-sample log-prob sum under the sampling policy [N] and whether each
  sample ended with EOS [N]."""
  tok, d = ws.tokenizer(), ws.config.data
  P = d.prompt_len + (ws.config.eval.fewshot_prompt_len if prefix else 0)
  enc = data_lib.encode_prompts(tok, [prefix + p for p in prompts], P)
  if enc.n_dropped:
    raise ValueError(
      f"{enc.n_dropped} evaluation prompts do not fit in {P} tokens "
      f"(raise eval.fewshot_prompt_len or data.prompt_len)."
    )
  out = sampling.generate_batched(
    params,
    ws.model_config(),
    enc.tokens,
    enc.mask,
    jax.random.key(seed),
    ws.mesh,
    batch_size=ws.config.eval.batch_size,
    max_new_tokens=d.response_len,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
    temperature=ws.config.eval.temperature,
    progress_name="eval",
  )
  resp_tokens, resp_mask = out["tokens"][:, P:], out["response_mask"][:, P:]
  texts = [tok.decode(t[m > 0]) for t, m in zip(resp_tokens, resp_mask)]
  return texts, np.stack([resp_tokens, resp_mask]), out["logprobs"].sum(axis=1), out["ended"]


def _sft_logprob(
  ws: Workspace, sft_params: Any, prompt_enc: data_lib.EncodedPrompts, response: np.ndarray
) -> np.ndarray:
  """log pi_SFT(response | prompt) per sample [N]; response: tokens and mask [2, N, R]."""
  tokens = np.concatenate([prompt_enc.tokens, response[0]], axis=1)
  mask = np.concatenate([prompt_enc.mask, response[1]], axis=1)
  return scoring.score_with(
    ws,
    scoring.loglik_fn(ws, sft_params, ws.model_config(), ws.config.eval.temperature),
    tokens,
    mask,
    ws.config.eval.batch_size,
  )


def _evaluate_policy(
  ws: Workspace,
  world: Any,
  name: str,
  prompts: list[str],
  prefix: str,
  seed: int,
  sft_params: Any,
  prompt_enc: data_lib.EncodedPrompts,
  lm_eval: dict[str, Any],
) -> dict[str, Any]:
  """Samples the policy's responses; returns them ("texts") and its report row ("metrics")."""
  policy_cfg = ws.model_config()
  params = ws.load_params(POLICY_STAGES[name], policy_cfg)
  texts, response, logp, ended = _sample(ws, params, prompts, prefix, seed)
  kl = (
    0.0
    if name == "sft"
    else float(np.mean(logp - _sft_logprob(ws, sft_params, prompt_enc, response)))
  )
  analyses = [world.analyze(p, t) for p, t in zip(prompts, texts)]
  return {
    "texts": texts,
    "metrics": {
      "gold_score": float(np.mean([a["score"] for a in analyses])),
      "kl_vs_sft": kl,
      "pretrain_loss": scoring.lm_loss(ws, params, policy_cfg, lm_eval),
      "hallucination_rate": _rate([a["hallucinated"] for a in analyses]),
      "constraint_rate": _rate([a["constraint_ok"] for a in analyses]),
      "inappropriate_rate": _rate([a.get("inappropriate") for a in analyses]),
      "eos_rate": float(np.mean(ended)),
    },
  }


def _fingerprint(ws: Workspace, name: str, index: int, prompts: list[str]) -> str | None:
  """What a policy's evaluation depends on: the runs that made it and SFT, the eval settings,
  its sampling seed and the prompts. None when a run is unfinished (nothing is reused then)."""
  run_ids = [
    (loop.stage_done(ws.stage_dir(stage)) or {}).get("run_id")
    for stage in (POLICY_STAGES[name].split("/")[0], "sft")
  ]
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
      index,
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
  if fingerprint is None:
    return
  path = _policy_path(ws, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  loop.write_json(path, {"fingerprint": fingerprint, **saved})


def _rate(values: list[Any]) -> float | None:
  vals = [float(v) for v in values if v is not None]
  return float(np.mean(vals)) if vals else None


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.eval
  if not ws.uses_world:
    raise ValueError(
      "The evaluation report needs the built-in world's gold scorer and "
      "held-out labelers; with your own data, run the stages up to ppo."
    )
  world = ws.world()
  _, heldout = labelers_lib.make_labeler_pools(ws.config.data.world_seed, world=world)
  tok = ws.tokenizer()
  recs = [r for split in data_lib.SPLITS for r in ws.records("eval_prompts", split)]
  # Every policy answers the same prompts: those that fit the context alone and after the
  # few-shot prefix (the paper drops over-long prompts too); the rest are counted.
  prefix = world.fewshot_prefix(cfg.fewshot_examples)
  texts = [r["prompt"] for r in recs]
  plain = set(data_lib.encode_prompts(tok, texts, ws.config.data.prompt_len).kept.tolist())
  fewshot = data_lib.encode_prompts(
    tok, [prefix + t for t in texts], ws.config.data.prompt_len + cfg.fewshot_prompt_len
  )
  prompts = [texts[i] for i in fewshot.kept.tolist() if i in plain][: cfg.num_prompts]
  dropped = len(texts) - len(plain & set(fewshot.kept.tolist()))
  if dropped:
    logging.warning(
      "eval: %d of %d prompts do not fit the context (with the few-shot prefix) and are not used",
      dropped,
      len(texts),
    )
  prompt_enc = data_lib.encode_prompts(tok, prompts, ws.config.data.prompt_len)
  lm_eval = inputs.lm_arrays(ws, "validation")
  sft_params = ws.load_params("sft", ws.model_config())

  samples, policies = {}, {}
  for i, name in enumerate(_available(ws)):
    loop.raise_if_preempted(f"while evaluating (before policy {name!r})")
    fingerprint = _fingerprint(ws, name, i, prompts)
    saved = _load_policy(ws, name, fingerprint)
    if saved is None:
      saved = _evaluate_policy(
        ws,
        world,
        name,
        prompts,
        prefix if name == "base_fewshot" else "",
        ws.config.seed + 40 + i,
        sft_params,
        prompt_enc,
        lm_eval,
      )
      _save_policy(ws, name, fingerprint, saved)
    samples[name], policies[name] = saved["texts"], saved["metrics"]
  rng = np.random.default_rng(ws.config.seed + 50)
  for name, texts in samples.items():
    if "sft" in samples:
      wins = [
        labelers_lib.compare(heldout[rng.integers(len(heldout))], p, a, b, rng)
        for p, a, b in zip(prompts, texts, samples["sft"])
      ]
      policies[name]["win_rate_vs_sft"] = float(np.mean(wins))
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
    },
    "policies": policies,
    "num_prompts": len(prompts),
    "examples": {
      name: [{"prompt": p, "response": t} for p, t in list(zip(prompts, texts))[:5]]
      for name, texts in samples.items()
    },
  }
  path = os.path.join(ws.workdir, "report.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(format_report(report), flush=True)
  return {
    "report": path,
    "prompts": len(prompts),
    "prompts_too_long": dropped,
    **{f"{k}_win_rate": v.get("win_rate_vs_sft") for k, v in policies.items()},
  }


def format_report(report: dict[str, Any]) -> str:
  """The report as a fixed-width table."""
  cols = (
    "win_rate_vs_sft",
    "gold_score",
    "kl_vs_sft",
    "pretrain_loss",
    "hallucination_rate",
    "constraint_rate",
  )
  lines = [f"{'policy':<14}" + "".join(f"{c:>20}" for c in cols)]
  for name, row in report["policies"].items():
    cells = "".join(
      f"{row.get(c):>20.3f}" if isinstance(row.get(c), float) else f"{'-':>20}" for c in cols
    )
    lines.append(f"{name:<14}" + cells)
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
  return "\n".join(lines)
