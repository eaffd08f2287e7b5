"""Every random stream of the pipeline, named once.

A stream's seed is `config.seed + OFFSETS[name]` (`seeds.of`), so two stages never share a stream
by accident, and a new stream is one new row. The reward model's ensemble members shift the whole
"rm.*" block by `rm.MEMBER_SEED_STRIDE` per member (their `base` is the member's seed). The
evaluation's sampled rows add their own index to "eval.sampling" (`evaluate.Sampled.seed`).
"""

from __future__ import annotations

OFFSETS: dict[str, int] = {
  # pretrain
  "pretrain.init": 0,
  "pretrain.data": 0,
  "pretrain.steps": 1,
  # sft (the same initial key as pretrain: both stages build a model of the same shape)
  "sft.init": 0,
  "sft.data": 10,
  "sft.steps": 11,
  "sft.pretrain_mix": 12,  # Which pretraining rows join the demonstrations (also rm_base's sft).
  # rm (relative to the member's seed)
  "rm.init": 0,  # The train state's key (the run's seed, not the member's).
  "rm.head": 20,  # The scalar head's initialisation.
  "rm.data": 21,
  "rm.steps": 22,
  "rm.pmp_pairs": 23,
  "rm.pmp_data": 24,
  "rm.pmp_steps": 25,
  "rm.subset": 26,  # Which comparisons rm.comparisons_fraction < 1 keeps.
  # label: responses per prompt and each chunk's ranking noise share one stream by design
  "label.rankings": 30,
  "label.sampling": 31,
  "label.agreement": 32,
  "label.sources": 33,
  # eval
  "eval.sampling": 40,
  "eval.judges": 50,
  # rm_base: one initial key, then each phase's batch order and steps
  "rm_base.init": 60,
  "rm_base.pretrain.data": 61,
  "rm_base.pretrain.steps": 62,
  "rm_base.nlp.data": 63,
  "rm_base.nlp.steps": 64,
  "rm_base.sft.data": 66,
  "rm_base.sft.steps": 67,
  # dpo
  "dpo.init": 70,
  "dpo.data": 71,
  "dpo.steps": 72,
  # ppo
  "ppo.init": 100,
  "ppo.prompts": 101,
  "ppo.ptx": 102,
  "ppo.steps": 103,
}


def of(base: int, name: str) -> int:
  """The seed of stream `name` for a run (or an RM ensemble member) seeded `base`."""
  return base + OFFSETS[name]
