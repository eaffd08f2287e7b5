"""Stage "rm": the reward model, trained on rankings of K = 4..9 responses per prompt.

Initialised from the trunk of `rm.init_from` (default "rm_base": the RM-sized model pretrained,
tuned on the NLP tasks, paper C.2, and on the demonstrations, paper 3.5; or the policy's "sft" /
"pretrain") with the unembedding replaced by a scalar head. The reward of a sequence is the
head's output at its last real token (the EOS). All C(K,2) comparisons of one prompt are one
batch element (`losses.pairwise_rm_loss`), one epoch, cosine decay to 10 % (paper C.2).
Afterwards a bias is folded into the head so the demonstrations score mean 0.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from instructgpt_jax import (
  inputs,
  loop,
  losses,
  model_configs,
  multihost,
  objectives,
  preference_pretraining,
  scoring,
  seeds,
  settings,
  train_state,
  workspace,
)
from instructgpt_jax import model as model_lib
from instructgpt_jax.workspace import Workspace

SCALAR_HEAD = "scalar_head"
LIKELIHOOD_SCALE = "likelihood_scale"  # The likelihood term's learned scale (model.py).
HELD_OUT_KEYS = ("tokens", "mask", "ranks", "slots")
MEMBER_SEED_STRIDE = 1000  # Members' seeds lie this far apart, clear of the stages' offsets.


def loss_fn(
  params: Any, config: model_lib.ModelConfig, batch: dict[str, jax.Array], response_start: int
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """batch: tokens/mask [prompts, K, seq], ranks [prompts, K] (-1 absent) -> pairwise loss.
  Responses start at `response_start` (the project layout's prompt length)."""
  b, k, t = batch["tokens"].shape
  rewards = objectives.sequence_rewards(
    params,
    config,
    batch["tokens"].reshape(b * k, t),
    batch["mask"].reshape(b * k, t),
    response_start,
  ).reshape(b, k)
  return losses.pairwise_rm_loss(rewards, batch["ranks"])


def train_step(
  state: train_state.TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  config: model_lib.ModelConfig,
  response_start: int,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One optimizer step on the pairwise ranking loss (bind `config` and `response_start` with
  functools.partial)."""
  del rng  # Dropout is off for the RM (docs/rlhf-notes.md §10).
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, config, batch, response_start
  )
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  if LIKELIHOOD_SCALE in state.params:
    metrics[LIKELIHOOD_SCALE] = state.params[LIKELIHOOD_SCALE]
  return state.apply_gradients(grads=grads), metrics


def trunk_with_scalar_head(
  lm_params: dict[str, Any], fresh_scalar: dict[str, Any], likelihood_scale: float = 0.0
) -> dict:
  """The LM's trunk with the scalar head of `fresh_scalar` (the unembedding is dropped); a
  reward model with a likelihood term (`fresh_scalar` has `likelihood_scale`) starts that
  term's scale at `likelihood_scale`."""
  params = {k: v for k, v in lm_params.items() if k != "unembed"}
  params[SCALAR_HEAD] = fresh_scalar[SCALAR_HEAD]
  if LIKELIHOOD_SCALE in fresh_scalar:
    params[LIKELIHOOD_SCALE] = np.asarray(likelihood_scale, np.float32)
  return params


def member_seed(config: ml_collections.ConfigDict, member: int) -> int:
  """The seed of ensemble member `member`: its head's initialisation and its batch order.
  Member 0 uses `config.seed` itself, so a one-member RM is the RM without an ensemble."""
  return config.seed + MEMBER_SEED_STRIDE * member


def init_state(
  config: ml_collections.ConfigDict,
  models: model_configs.ModelConfigs,
  mesh: Mesh,
  rules: Any,
  total_steps: int,
  lm_params: Any | None = None,
  *,
  member: int = 0,
  abstract: bool = False,
  reward_params: Any | None = None,
  optim: ml_collections.ConfigDict | None = None,
) -> tuple[train_state.TrainState, Any]:
  """The reward model on the mesh: `lm_params`' trunk (host or device arrays) and a fresh scalar
  head (N(0, 1/sqrt(d+1)), docs/rlhf-notes.md §5), drawn from ensemble member `member`'s seed,
  or a whole reward model's `reward_params`; with the optimizer of `optim` (default `rm.optim`).
  Returns (state, shardings)."""
  cfg, rm_cfg = config.rm, models.reward
  params = reward_params
  if lm_params is not None:
    fresh = model_lib.boxed_params(
      rm_cfg, jax.random.key(seeds.of(member_seed(config, member), "rm.head"))
    )
    params = trunk_with_scalar_head(
      multihost.fetch(lm_params), multihost.fetch(nn.meta.unbox(fresh)), cfg.likelihood_init
    )
  tx = train_state.make_optimizer(optim or cfg.optim, total_steps, cfg.on_nonfinite == "skip")
  return train_state.create_train_state(
    rm_cfg,
    tx,
    mesh,
    rules,
    jax.random.key(seeds.of(config.seed, "rm.init")),
    params,
    abstract=abstract,
  )


def check_settings(ws: Workspace) -> None:
  """This stage's section, preference-model pretraining's included."""
  cfg = ws.config.rm
  settings.positive(cfg, "rm", "epochs", "ensemble")
  settings.fraction(cfg, "rm", "comparisons_fraction", low_open=True, high_open=False)
  settings.require(
    isinstance(cfg.ensemble, int), "rm.ensemble", cfg.ensemble, "must be an integer >= 1"
  )
  train_state.check_optim(cfg.optim, "rm.optim")
  loop.check_loop(cfg, "rm", ws.batch_divisor)
  settings.non_negative(cfg.pmp, "rm.pmp", "steps")
  if cfg.pmp.steps:
    train_state.check_optim(cfg.pmp.optim, "rm.pmp.optim")
    loop.check_loop(cfg.pmp, "rm.pmp", ws.batch_divisor)


def _check_rm_base_trained(ws: Workspace) -> None:
  done = loop.stage_done(ws.stage_dir("rm_base")) or {}
  if "skipped" in done:
    raise ValueError(
      f"rm.init_from='rm_base', but {ws.stage_dir('rm_base')} was finished without training "
      f"({done['skipped']}). Remove that directory (or run configs/rm_base.py with "
      "--config.overwrite=True) and run again."
    )


def train_member(
  ws: Workspace, member: int, train: dict[str, np.ndarray], steps: int
) -> tuple[Any, dict[str, Any]]:
  """Trains ensemble member `member` into its stage directory (`rm_member_stage`) and folds in
  the bias that makes the demonstrations score mean 0; returns (params on the mesh, summary)."""
  cfg, rm_cfg = ws.config.rm, ws.models.reward
  stage = workspace.rm_member_stage(member)
  seed = member_seed(ws.config, member)
  name = "rm" if member == 0 else f"rm member {member}"
  state, shardings = init_state(
    ws.config,
    ws.models,
    ws.mesh,
    ws.rules,
    cfg.pmp.steps or steps,
    ws.load_params(ws.models.rm_init_from, ws.models.rm_init),
    member=member,
    optim=cfg.pmp.optim if cfg.pmp.steps else None,
  )
  step_fn = functools.partial(train_step, config=rm_cfg, response_start=ws.config.data.prompt_len)
  pmp_summary = {}
  if cfg.pmp.steps:
    # Preference-model pretraining (not in the paper): the corpus's corrupted pairs first, in
    # `<stage>/pmp`, then a fresh optimizer for the human comparisons.
    pmp = preference_pretraining.comparison_arrays(ws, seeds.of(seed, "rm.pmp_pairs"))
    pmp = {k: pmp[k] for k in ("tokens", "mask", "ranks")}
    state, pmp_rows = loop.train(
      name=f"{name} pmp",
      stage_dir=os.path.join(ws.stage_dir(stage), "pmp"),
      state=state,
      state_shardings=shardings,
      step_fn=step_fn,
      batches=ws.batches(pmp, cfg.pmp.batch_size, seed=seeds.of(seed, "rm.pmp_data")),
      total_steps=cfg.pmp.steps,
      mesh=ws.mesh,
      rules=ws.rules,
      seed=seeds.of(seed, "rm.pmp_steps"),
      loop_cfg=cfg.pmp,
    )
    pmp_summary = {"pmp_comparisons": int(pmp["tokens"].shape[0]), "pmp_steps": cfg.pmp.steps}
    if pmp_rows:
      pmp_summary["pmp_train_accuracy"] = pmp_rows[-1]["accuracy"]
    state, shardings = init_state(
      ws.config, ws.models, ws.mesh, ws.rules, steps, reward_params=multihost.fetch(state.params)
    )
  state, rows = loop.train(
    name=name,
    stage_dir=ws.stage_dir(stage),
    state=state,
    state_shardings=shardings,
    step_fn=step_fn,
    batches=ws.batches(train, cfg.batch_size, seed=seeds.of(seed, "rm.data")),
    total_steps=steps,
    mesh=ws.mesh,
    rules=ws.rules,
    seed=seeds.of(seed, "rm.steps"),
    loop_cfg=cfg,
  )
  # Normalise: demonstrations score mean 0 (paper C.2), folded into the head's bias so every
  # later user of the RM (PPO reward, value init) sees the normalised scale.
  demos = inputs.sft_arrays(ws, "train")
  demo_rewards = scoring.score_with(
    ws, scoring.reward_fn(ws, rm_cfg), state.params, demos["tokens"], demos["mask"]
  )
  bias = float(losses.rm_normalization_bias(demo_rewards))
  params = multihost.fetch(state.params)
  params[SCALAR_HEAD]["bias"] = params[SCALAR_HEAD]["bias"] + bias
  summary = {
    "seed": seed,
    "demo_bias": bias,
    "demo_reward_std": float(np.std(demo_rewards)),
    "train_accuracy": rows[-1]["accuracy"] if rows else None,
    **pmp_summary,
  }
  if LIKELIHOOD_SCALE in params:
    summary["likelihood_scale"] = float(params[LIKELIHOOD_SCALE])
  return ws.save_params(stage, params, rm_cfg), summary


def load_or_train_member(
  ws: Workspace, member: int, train: dict[str, np.ndarray], steps: int
) -> tuple[Any, dict[str, Any]]:
  """A member finished by an earlier (preempted) run of this stage is read back, not retrained.
  Member 0's record is the stage's own DONE file, so it is always trained here."""
  member_dir = ws.stage_dir(workspace.rm_member_stage(member))
  done = loop.stage_done(member_dir) if member else None
  if done is not None:
    return ws.load_params(workspace.rm_member_stage(member), ws.models.reward), done
  params, summary = train_member(ws, member, train, steps)
  if member:
    loop.mark_done(member_dir, summary)
  return params, summary


def held_out_accuracy(
  ws: Workspace, members: tuple[Any, ...], splits: tuple[str, ...] = ("validation", "test")
) -> dict[str, Any]:
  """The RM's accuracy on the held-out users' comparisons (`splits`), on all pairs ("heldout")
  and on SFT-only pairs ("heldout_sft_only"), for the ensemble (the mean reward) and, with more
  than one member, for each member alone ("members"); {} without held-out comparisons."""
  held_out = [inputs.comparison_arrays(ws, s) for s in splits]
  held_out = [a for a in held_out if a["tokens"].shape[0]]
  if not held_out:
    return {}
  merged = {k: np.concatenate([a[k] for a in held_out]) for k in HELD_OUT_KEYS}
  merged["sources"] = [s for a in held_out for s in a["sources"]]
  # The paper's SFT-only accuracy: pairs whose two responses were both sampled from SFT at
  # temperature 1 (as PPO's first samples are). Absent when the file does not record sources.
  sft_ranks = inputs.ranks_among(merged, inputs.SFT_SOURCE)
  has_sft_pairs = ((sft_ranks >= 0).sum(axis=1) >= 2) & (sft_ranks.max(axis=1) > sft_ranks.min(1))
  reward = scoring.reward_fn(ws, ws.models.reward)
  # One pass per member; the ensemble's scores are their mean, as `ensemble_rewards` computes.
  scores = [scoring.comparison_scores(ws, reward, p, merged) for p in members]

  def accuracies(s: np.ndarray) -> dict[str, Any]:
    out = {"heldout": scoring.ranking_accuracy(s, merged["ranks"])}
    if has_sft_pairs.any():
      out["heldout_sft_only"] = scoring.ranking_accuracy(s[has_sft_pairs], sft_ranks[has_sft_pairs])
    return out

  summary = accuracies(np.mean(scores, axis=0))
  if len(members) > 1:
    summary["members"] = [accuracies(s) for s in scores]
  pairs = {k: merged[k] for k in ("tokens", "mask", "ranks")}
  init_from, init_cfg = ws.models.rm_init_from, ws.models.rm_init
  # The baseline an RM should beat: ranking by the log-likelihood under the model it starts
  # from. Reloaded here rather than kept through training: one model in memory at a time.
  summary["heldout"]["likelihood_baseline"] = scoring.pairwise_accuracy(
    ws, scoring.loglik_fn(ws, init_cfg), ws.load_params(init_from, init_cfg), pairs
  )["accuracy"]
  if init_from != "sft":
    # The SFT policy's own likelihood, the judge the RM failed to beat before (notes of
    # 2026-11-30), reported whatever the RM starts from.
    sft_cfg = ws.models.policy
    summary["heldout"]["sft_likelihood_baseline"] = scoring.pairwise_accuracy(
      ws, scoring.loglik_fn(ws, sft_cfg), ws.load_params("sft", sft_cfg), pairs
    )["accuracy"]
  return summary


def run(ws: Workspace) -> dict[str, Any]:
  cfg = ws.config.rm
  if ws.models.rm_init_from == "rm_base":
    _check_rm_base_trained(ws)
  arrays = inputs.comparison_arrays(ws, "train")
  train = {k: arrays[k] for k in ("tokens", "mask", "ranks")}
  if cfg.comparisons_fraction < 1.0:  # A fixed random subset: the accuracy-vs-data curve.
    total = int(train["tokens"].shape[0])
    rng = np.random.default_rng(seeds.of(ws.config.seed, "rm.subset"))
    keep = np.sort(rng.permutation(total)[: max(1, round(total * cfg.comparisons_fraction))])
    train = {k: v[keep] for k, v in train.items()}
  n = int(train["tokens"].shape[0])
  steps = loop.steps_for_epochs(n, cfg.batch_size, cfg.epochs)
  trained = [load_or_train_member(ws, i, train, steps) for i in range(cfg.ensemble)]
  first = trained[0][1]
  summary: dict[str, Any] = {
    "init_from": ws.models.rm_init_from,
    "params": ws.models.reward.num_params(),
    "ensemble": cfg.ensemble,
    "steps": steps,
    "comparisons": n,
    "demo_bias": first["demo_bias"],
    "demo_reward_std": first["demo_reward_std"],
    "likelihood": ws.models.reward.reward_likelihood,
  }
  for key in (LIKELIHOOD_SCALE, "pmp_comparisons", "pmp_steps", "pmp_train_accuracy"):
    if key in first:
      summary[key] = first[key]
  summary.update(held_out_accuracy(ws, tuple(params for params, _ in trained)))
  if cfg.ensemble > 1:  # Each member's seed, bias and own accuracy (when there are held-out pairs).
    accuracies = summary.get("members") or [{} for _ in trained]
    summary["members"] = [{**acc, **member} for acc, (_, member) in zip(accuracies, trained)]
  summary["train"] = (
    {"accuracy": first["train_accuracy"]} if first["train_accuracy"] is not None else {}
  )
  return summary
