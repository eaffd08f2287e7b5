"""Where a run's files live, and the set-up every stage shares (mesh, data, tokenizer).

<workdir>/world/*.jsonl       the built-in task world (when config.data paths are empty)
<workdir>/data/               tfds array_record preparations of the JSONL files
<workdir>/tokenizer.model     sentencepiece model trained on the pretraining text
<workdir>/<stage>/            ckpt/, metrics.jsonl, tensorboard/, DONE.json
<workdir>/report.json         the evaluation report
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from instructgpt_jax import (
  checkpoint,
  hf,
  hf_tokenizer,
  model_configs,
  multihost,
  settings,
  sharding,
  train_state,
)
from instructgpt_jax import data as data_lib
from instructgpt_jax import model as model_lib
from instructgpt_jax import tokenizer as tokenizer_lib
from instructgpt_jax.sim import files as sim_files

# Config key of each user-facing file, and the world's file of that kind.
JSONL_KEYS = {
  "pretraining": ("pretrain_jsonl", "pretrain.jsonl"),
  "demonstrations": ("demonstrations_jsonl", "demonstrations.jsonl"),
  "prompts": ("prompts_jsonl", "prompts.jsonl"),
  "rm_prompts": ("rm_prompts_jsonl", "rm_prompts.jsonl"),
  "eval_prompts": ("eval_prompts_jsonl", "eval_prompts.jsonl"),
  # The RM base model's "public NLP tasks" (paper C.2), in the demonstrations format. Optional:
  # with your own data and no such file, the rm_base stage skips its fine-tuning.
  "nlp_tasks": ("nlp_tasks_jsonl", "nlp_tasks.jsonl"),
}
OPTIONAL_KINDS = ("nlp_tasks",)  # Kinds a data set of your own may leave out.
# Kinds whose train split a stage trains on: an empty one is an error that names the file.
TRAINED_ON = ("pretraining", "demonstrations", "prompts", "comparisons")
# The data format each kind is read with (data.KINDS), where it is not the kind's own name.
DATA_KINDS = {"eval_prompts": "prompts", "rm_prompts": "prompts", "nlp_tasks": "demonstrations"}


def rm_member_stage(member: int) -> str:
  """The stage directory of reward-model ensemble member `member` (`rm.ensemble`): member 0 is
  "rm" itself (what the value function starts from and `export_hf` writes), member i > 0 lives
  in "rm/member_<i>", so redoing the rm stage removes every member."""
  return "rm" if member == 0 else f"rm/member_{member}"


def ppo_policy_name(ppo_cfg: ml_collections.ConfigDict, variant: str) -> str:
  """The policy a `ppo.variants` entry trains, named for the advantage estimator: "ppo" and
  "ppo_ptx" with GAE (the paper's), "rloo", "rloo_ptx", "grpo", "grpo_ptx" with the others.
  It lives in `ppo/<name>`."""
  estimator = ppo_cfg.get("estimator", "gae")
  return variant if estimator == "gae" else variant.replace("ppo", estimator, 1)


def ppo_snapshot_stage(variant: str, step: int) -> str:
  """The stage name of the `variant` policy (its `ppo_policy_name`) kept after `step` PPO
  iterations."""
  return f"ppo/{variant}/snapshot_{step:05d}"


def ppo_snapshot_steps(ppo_cfg: ml_collections.ConfigDict) -> list[int]:
  """The PPO iterations after which the policy is kept (`ppo.snapshot_every`, and the last)."""
  every, last = ppo_cfg.snapshot_every, ppo_cfg.iterations
  return sorted({*range(every, last + 1, every), last}) if every > 0 else []


class Workspace:
  """A run's directory layout, mesh, tokenizer and data, shared by the stages of a pipeline."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None):
    self.config = config
    # Every model of the run, made here once; stages and tools read them from `ws.models`.
    self.models = model_configs.resolve(config)
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.mesh = (
      mesh
      if mesh is not None
      else sharding.make_mesh(config.sharding.mesh_shape, axes=config.sharding.mesh_axes)
    )
    self.rules = sharding.normalize_rules(config.sharding.rules)
    self._tokenizer: tokenizer_lib.Tokenizer | hf_tokenizer.HfTokenizer | None = None
    self._records: dict[tuple[str, str], list[dict]] = {}

  # Paths ---------------------------------------------------------------------------------------

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  @property
  def hf_base(self) -> str | None:
    """The Hugging Face checkpoint directory of `model.init = "hf:/dir"`, which then stands in
    for the pretrain stage (its weights, model shape and tokenizer); None when unset."""
    return hf.hf_path(self.config.model.get("init", ""))

  def from_world(self, kind: str) -> bool:
    """True when the user gave no file of `kind` (JSONL_KEYS), so the built-in world's is used:
    any subset of the files can be the user's, and the world fills the rest."""
    return not self.config.data[JSONL_KEYS[kind][0]]

  @property
  def uses_world(self) -> bool:
    """True when none of the required files is the user's (the whole data set is the world's)."""
    return all(self.from_world(kind) for kind in JSONL_KEYS if kind not in OPTIONAL_KINDS)

  def data_summary(self) -> str:
    """Where the run's data comes from, for the top of the terminal."""
    own = [kind for kind in JSONL_KEYS if not self.from_world(kind)]
    if self.config.data.comparisons_jsonl:
      own.append("comparisons")
    if not own:
      return "built-in task world"
    return f"your {', '.join(own)} (config.data); the built-in world's for the rest"

  def optional_jsonl(self, kind: str) -> str | None:
    """The file of an optional kind (OPTIONAL_KINDS): the user's, or the built-in world's when
    the whole data set is the world's and it writes one ("knowledge" writes no NLP tasks); None
    when there is none (the world's NLP tasks would teach its language, not your data's)."""
    if not self.from_world(kind):
      return self.jsonl(kind)
    if not self.uses_world:
      return None
    filename = JSONL_KEYS[kind][1]
    self.jsonl("pretraining")  # Writes the world's files on first use.
    path = os.path.join(self.workdir, "world", filename)
    return path if os.path.exists(path) else None

  def world(self) -> Any:
    """The built-in world of config.data (world, world_seed, world_scale)."""
    d = self.config.data
    return sim_files.make_world(d.world, d.world_seed, d.world_scale)

  def jsonl(self, kind: str) -> str:
    """The user's file for `kind`, or the built-in world's (written on first use)."""
    key, filename = JSONL_KEYS[kind]
    if self.config.data[key]:
      path = self.config.data[key]
      if not os.path.exists(path):
        raise FileNotFoundError(f"config.data.{key}={path} does not exist.")
      return path
    world_dir = os.path.join(self.workdir, "world")
    path = os.path.join(world_dir, filename)
    if multihost.agree(not os.path.exists(path)):
      logging.info("Writing the built-in task world to %s", world_dir)
      multihost.on_main("world", lambda: sim_files.write_world(world_dir, self.world()))
    return path

  @property
  def batch_divisor(self) -> int:
    """Every global batch must be a multiple of this: the mesh's data-parallel shards."""
    return sharding.batch_divisor(self.mesh, self.rules)

  def check_settings(self) -> None:
    """The data section against the run's models: a prompt and its response fit each model's
    context, the splits leave training data, the world is known."""
    init = self.config.model.get("init", "")
    settings.require(
      not init or hf.hf_path(init) is not None,
      "model.init",
      init,
      'valid: "" (the pipeline\'s own base model) or "hf:/dir" (a Hugging Face checkpoint)',
    )
    d, path = self.config.data, "data"
    settings.positive(d, path, "prompt_len", "response_len", "seq_len")
    # Only learned positions end at max_len (RoPE families run past it, as model._run allows).
    for name in [n for n in ("policy", "reward") if getattr(self.models, n).family == "gpt"]:
      max_len = getattr(self.models, name).max_len
      total = d.prompt_len + d.response_len
      settings.require(
        total <= max_len,
        "data.prompt_len + data.response_len",
        total,
        f"must fit the {name} model's context (model.max_len={max_len})",
      )
      settings.require(
        d.seq_len <= max_len, "data.seq_len", d.seq_len, f"must be <= model.max_len={max_len}"
      )
    settings.non_negative(d, path, "validation_fraction", "test_fraction")
    settings.non_negative(d, path, "dedup_prefix_chars", "max_prompts_per_user")
    held_out = d.validation_fraction + d.test_fraction
    settings.require(
      held_out < 1,
      "data.validation_fraction + data.test_fraction",
      held_out,
      "must be < 1, so that users are left to train on",
    )
    settings.one_of(d, path, "world", sim_files.WORLDS)
    settings.positive(d, path, "world_scale")
    files = [(key, DATA_KINDS.get(kind, kind)) for kind, (key, _) in JSONL_KEYS.items()]
    for key, kind in [*files, ("comparisons_jsonl", "comparisons")]:
      if d[key]:
        data_lib.check_file(d[key], f"config.data.{key}", kind)

  # Data ----------------------------------------------------------------------------------------

  def hygiene(self) -> data_lib.Hygiene:
    d = self.config.data
    train = 1.0 - d.validation_fraction - d.test_fraction
    return data_lib.Hygiene(
      dedup_prefix_len=d.dedup_prefix_chars or None,
      max_per_user=d.max_prompts_per_user or None,
      split_fractions=(train, d.validation_fraction, d.test_fraction),
    )

  def records(self, kind: str, split: str, path: str | None = None) -> list[dict[str, Any]]:
    """One split of a user-facing file, through its tfds builder (cached per run)."""
    path = path or self.jsonl(kind)
    data_kind = DATA_KINDS.get(kind, kind)
    key = (path, split)
    if key not in self._records:
      chat = None
      if hf.hf_path(self.config.data.tokenizer_path) or self.hf_base:
        # Message lists in the data render through the checkpoint's own chat template.
        tok = self.tokenizer()
        chat = data_lib.ChatTemplate(tok.chat_template or "", tok.eos_token)
      data_dir = os.path.join(self.workdir, "data")
      # Process 0 prepares the array_record files (once per workdir); every process reads them.
      multihost.on_main(
        f"data {path}",
        lambda: data_lib.prepare(data_kind, path, data_dir, self.hygiene(), chat),
      )
      self._records[key] = data_lib.load_split(
        data_kind, path, data_dir, split, self.hygiene(), chat
      )
      if split == "train" and kind in TRAINED_ON and not self._records[key]:
        builder = data_lib.make_builder(data_kind, path, data_dir, self.hygiene(), chat)
        counts = dict(builder.info.metadata.get("hygiene", {}))
        raise data_lib.DataError(
          f"{path}: no {data_kind} left to train on after the data hygiene ({counts}); see "
          "config.data (dedup_prefix_chars, max_prompts_per_user, validation_fraction, "
          "test_fraction)."
        )
    return self._records[key]

  def tokenizer(self) -> tokenizer_lib.Tokenizer | hf_tokenizer.HfTokenizer:
    """The configured tokenizer, or one trained on the pretraining text (once per workdir).

    `data.tokenizer_path = "hf:/dir"` (or an empty one with `model.init = "hf:/dir"`) reads the
    checkpoint's tokenizer.json and special tokens instead.
    """
    hf_dir = hf.hf_path(self.config.data.tokenizer_path) or (
      None if self.config.data.tokenizer_path else self.hf_base
    )
    if self._tokenizer is None and hf_dir:
      self._tokenizer = hf_tokenizer.HfTokenizer.load(hf_dir)
      self._tokenizer.check_vocab(self.models.policy.vocab_size)
    if self._tokenizer is None:
      path = self.config.data.tokenizer_path or os.path.join(self.workdir, "tokenizer.model")
      if not self.config.data.tokenizer_path and multihost.agree(not os.path.exists(path)):
        texts = [r["text"] for r in self.records("pretraining", "train")]
        texts += [
          r["prompt"] + " " + r["response"] for r in self.records("demonstrations", "train")
        ]
        multihost.on_main(
          "tokenizer",
          lambda: tokenizer_lib.train_tokenizer(texts, path, self.models.policy.vocab_size),
        )
      self._tokenizer = tokenizer_lib.Tokenizer.load(path)
      self._tokenizer.check_vocab(self.models.policy.vocab_size)
    return self._tokenizer

  def batches(self, arrays: Any, batch_size: int, seed: int) -> Any:
    """`data.make_batches` of global batches of `batch_size`, yielding the rows this process
    feeds (`sharding.process_rows`; all of them on one process)."""
    rows = sharding.process_rows(self.mesh, self.rules, batch_size)
    return data_lib.make_batches(arrays, batch_size, seed=seed, local_rows=rows)

  # Models --------------------------------------------------------------------------------------

  def load_params(self, stage: str, model_cfg: model_lib.ModelConfig) -> Any:
    """The final parameters of a finished stage, placed on this run's mesh.

    `<stage>/final` (parameters post-processed after training, e.g. the RM's bias) wins over
    the newest train checkpoint in `<stage>/ckpt`. With `model.init = "hf:/dir"` the "pretrain"
    stage is the imported checkpoint, read leaf by leaf onto this mesh.
    """
    if stage == "pretrain" and self.hf_base:
      shardings = train_state.param_shardings(model_cfg, self.mesh, self.rules)
      return hf.load_params(self.hf_base, model_cfg, shardings)
    directory = os.path.join(self.stage_dir(stage), "final")
    if not os.path.isdir(directory):
      directory = os.path.join(self.stage_dir(stage), "ckpt")
    shardings = train_state.param_shardings(model_cfg, self.mesh, self.rules)
    abstract = nn.meta.unbox(
      jax.eval_shape(lambda r: model_lib.boxed_params(model_cfg, r), jax.random.key(0))
    )
    return checkpoint.restore_params(directory, checkpoint.abstract_like(abstract, shardings))

  def load_reward_model(self) -> tuple[Any, ...]:
    """The reward model's `rm.ensemble` members (one by default), each a parameter tree placed
    on this run's mesh; the reward is their mean (`objectives.ensemble_rewards`)."""
    cfg = self.models.reward
    members = int((self.config.get("rm") or {}).get("ensemble", 1))
    return tuple(self.load_params(rm_member_stage(i), cfg) for i in range(members))

  def save_params(self, stage: str, params: Any, model_cfg: model_lib.ModelConfig) -> Any:
    """Writes a stage's final parameters to `<stage>/final` (read back by `load_params`) and
    returns them as placed on this run's mesh."""
    placed = train_state.place_params(params, model_cfg, self.mesh, self.rules)
    # A run killed after writing `final` but before DONE.json redoes this write.
    final = os.path.join(self.stage_dir(stage), "final")
    multihost.on_main(f"clear {final}", lambda: shutil.rmtree(final, ignore_errors=True))
    ckpt = checkpoint.Checkpointer(final, keep=1)
    ckpt.save(0, {"params": placed}, {"stage": stage}, force=True)
    ckpt.close()
    return placed
