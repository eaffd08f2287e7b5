"""Sections every stage shares: the run, the model and mesh shapes of each preset, the data.

Presets (the argument after ':' in `--config=configs/ppo.py:tiny`):
  tiny       tests; every stage in seconds on a CPU
  small      the default CPU pipeline on the built-in task world (minutes on 2 cores)
  gpt2       the 124M GPT-2 shape
  gpt3_1.3b  the paper's policy sizes (bf16 compute, scanned and rematerialised layers,
  gpt3_6b      FSDP + tensor-parallel meshes), meant for TPU pods
  gpt3_175b
"""

from __future__ import annotations

import ml_collections

from instructgpt_jax import sharding

PRESETS = ("tiny", "small", "gpt2", "gpt3_1.3b", "gpt3_6b", "gpt3_175b")

# GPT-3 XL lists 24 heads of 128 for d_model 2048, which do not multiply out; we use 16 x 128.
_BIG = dict(dtype="bfloat16", scan_layers=True, remat="full")
MODEL_SHAPES: dict[str, dict] = {
  "tiny": dict(num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=192),
  # small: the policy and, started from its SFT model, the reward model (configs/rm.py says
  # why). 4 x 192 with 4,000 demonstrations brought SFT's invented-word rate from 0.51 to 0.04
  # and its hallucination from 0.89 to 0.65 (docs/findings.md, the upstream calibration).
  "small": dict(num_layers=4, d_model=192, num_heads=4, d_ff=768, max_len=192),
  "gpt2": dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072, max_len=1024),
  "gpt3_1.3b": dict(num_layers=24, d_model=2048, num_heads=16, d_ff=8192, max_len=2048, **_BIG),
  "gpt3_6b": dict(num_layers=32, d_model=4096, num_heads=32, d_ff=16384, max_len=2048, **_BIG),
  "gpt3_175b": dict(num_layers=96, d_model=12288, num_heads=96, d_ff=49152, max_len=2048, **_BIG),
}

# (data, fsdp, tensor) devices; -1 takes the devices that are left.
MESH_SHAPES: dict[str, tuple[int, int, int]] = {
  "tiny": (1, -1, 1),
  "small": (1, -1, 1),
  "gpt2": (1, -1, 1),
  "gpt3_1.3b": (1, -1, 1),
  "gpt3_6b": (1, -1, 4),
  "gpt3_175b": (1, -1, 8),
}

# The built-in world trains its own sentencepiece model of this size; the GPT-3 shapes use the
# GPT-2 BPE size rounded up to a multiple of 128 (so the vocabulary shards evenly). small: 2048
# makes 96 % of the answers' words one piece each (1024: 89 %); with fewer pieces per word the
# policy invents fewer words (SFT 0.21 -> 0.09 of samples, docs/findings.md).
VOCAB_SIZES = {
  "tiny": 512,
  "small": 2048,
  "gpt2": 50304,
  "gpt3_1.3b": 50304,
  "gpt3_6b": 50304,
  "gpt3_175b": 50304,
}


def preset_name(arg: str | None) -> str:
  """The preset named by the config argument (default "small"); unknown names list the valid."""
  preset = arg or "small"
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; valid presets: {list(PRESETS)}.")
  return preset


def optim(
  lr: float,
  schedule: str = "cosine",
  warmup_steps: int = 0,
  warmup_init_fraction: float = 0.0,
) -> ml_collections.ConfigDict:
  """An AdamW section; the paper's Adam betas are (0.9, 0.95) in every stage."""
  return ml_collections.ConfigDict(
    dict(
      lr=lr,
      schedule=schedule,  # cosine | constant | linear (train_state.make_schedule)
      warmup_steps=warmup_steps,
      end_lr_fraction=0.1,  # Cosine decays to 10 % of the peak (paper C.1-C.3).
      warmup_init_fraction=warmup_init_fraction,  # Warmup starts at this fraction of lr.
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.0,
      clip_norm=1.0,  # Global-norm clipping; 0 turns it off.
      grad_accum_steps=1,  # > 1: optax.MultiSteps accumulates this many batches per update.
    )
  )


def loop(batch_size: int, log_every: int, checkpoint_every: int) -> dict:
  """The fields every training loop reads (`loop.train`)."""
  return dict(
    batch_size=batch_size,
    log_every=log_every,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=3,
    on_nonfinite="stop",  # stop: halt with the step and the last good checkpoint | skip
  )


def lora(rank: int = 0) -> ml_collections.ConfigDict:
  """A policy stage's LoRA section (not in the paper; instructgpt_jax/lora.py): rank 0 trains
  every weight, rank r > 0 trains rank-r adapters on a frozen base, and the stage saves the
  merged model. PPO's and DPO's reference is then the base itself: one copy in memory."""
  return ml_collections.ConfigDict(
    dict(
      rank=rank,
      alpha=16.0,  # The update is scaled by alpha / rank (the LoRA paper's convention).
      # Modules whose kernel is adapted: every linear layer of a block (QLoRA's choice); the
      # LoRA paper adapted ("query", "value") only.
      targets=("query", "key", "value", "out", "wi", "wi_gate", "wi_up", "wo"),
    )
  )


def get_config(stage: str, arg: str | None) -> ml_collections.ConfigDict:
  """The run, model, sharding and data sections; the stage files add their own."""
  preset = preset_name(arg)
  tiny = preset == "tiny"
  c = ml_collections.ConfigDict()
  c.stage = stage  # What `main` runs, after every earlier stage the workdir lacks.
  c.preset = preset
  c.seed = 0
  c.dry_run = False  # Compile the stage's step on abstract arrays; report memory and FLOPs.
  c.overwrite = False  # A finished stage is reused unless this is set for the requested stage.
  # JAX's compiled programs, reused by a rerun: a directory inside the workdir, an absolute
  # path that several runs share (a sweep compiles once), or "" (off).
  c.compilation_cache = "jax_cache"

  c.model = ml_collections.ConfigDict(
    dict(
      vocab_size=VOCAB_SIZES[preset],
      num_layers=4,
      d_model=256,
      num_heads=4,
      num_kv_heads=0,  # 0: as many as num_heads (no grouped-query attention).
      d_ff=1024,
      max_len=256,
      family="gpt",  # gpt: learned positions, LayerNorm, GELU | llama: RoPE, RMSNorm, SwiGLU
      tie_embeddings=True,
      dropout=0.0,  # Residual dropout of the base model; SFT sets its own.
      dtype="float32",  # Compute dtype; bfloat16 on TPUs.
      param_dtype="float32",
      remat="none",  # none | full: rematerialise each layer in the backward pass.
      scan_layers=False,  # True: one compiled layer scanned over depth (fast compiles).
      rope_theta=10000.0,
      norm_eps=1e-5,
      # "hf:/dir": start from that Hugging Face checkpoint instead of the pretrain stage; its
      # config.json then sets the model's shape (docs/hf.md). Empty: the pipeline's own model.
      init="",
    )
  )
  c.model.update(MODEL_SHAPES[preset])

  c.sharding = ml_collections.ConfigDict(
    dict(
      mesh_shape=MESH_SHAPES[preset],  # Devices per axis of mesh_axes; -1 takes the rest.
      mesh_axes=sharding.MESH_AXES,  # ("data", "fsdp", "tensor"); the rules name these.
      # Logical axis name -> mesh axes, for parameters, activations, the KV cache and the batch
      # ("batch": the data-parallel axes every batch is split over). sharding.DEFAULT_RULES
      # lists them; override one with e.g. --config.sharding.rules='(("batch", "data"), ...)'.
      rules=sharding.DEFAULT_RULES,
      # Several processes (every host of a TPU pod slice runs the same command): True calls
      # jax.distributed.initialize() first. On a TPU pod leave the three keys below empty (the
      # TPU environment gives them); elsewhere give all three, the same address on every
      # process and its own process_id (tests/test_multiprocess.py runs 2 on one machine).
      distributed=False,
      coordinator_address="",  # "host:port" of process 0.
      num_processes=-1,  # -1: from the environment.
      process_id=-1,  # -1: from the environment.
    )
  )

  c.data = ml_collections.ConfigDict(
    dict(
      # Empty paths mean the built-in task world; point these at your own JSONL files.
      pretrain_jsonl="",
      demonstrations_jsonl="",
      prompts_jsonl="",
      rm_prompts_jsonl="",
      eval_prompts_jsonl="",
      comparisons_jsonl="",
      nlp_tasks_jsonl="",  # Optional: the RM base model's NLP tasks (demonstrations format).
      world="paper",  # Built-in world: "paper" (Table 1 mix, App. B judging) or "knowledge".
      world_seed=1234,
      world_scale=0.25 if tiny else 1.0,  # Pool sizes of the built-in world.
      # Empty: train a sentencepiece model on the pretraining text (or, with model.init=hf:/dir,
      # use that checkpoint's). "hf:/dir": a checkpoint's tokenizer.json; else a .model file.
      tokenizer_path="",
      prompt_len=48,  # Tokens; longer prompts are dropped and counted.
      response_len=32,  # Tokens; longer demonstrations are dropped, samples are cut.
      seq_len=128,  # Rows of packed pretraining text (pretrain and ptx).
      dedup_prefix_chars=100,  # Paper: prompts sharing a long common prefix are de-duplicated.
      max_prompts_per_user=200,  # Paper: at most 200 prompts per user ID.
      validation_fraction=0.1,  # Splits are by user ID, so no user is in two splits.
      test_fraction=0.1,
    )
  )
  return c
