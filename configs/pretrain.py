"""Stage "pretrain": the base model, trained on the world's plain-text corpus.

No machine here can download GPT-3, so the pipeline trains its own base model; with your own
base model, skip this stage. Usage: `--config=configs/pretrain.py[:preset]` (configs/common.py
lists the presets).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.get_config("pretrain", arg)
  c.pretrain = ml_collections.ConfigDict(
    dict(
      steps=800,
      optim=common.optim(2e-3, warmup_steps=50),  # Cosine to 10 % after the warmup.
      **common.loop(batch_size=32, log_every=50, checkpoint_every=500),
    )
  )
  if c.preset == "tiny":
    c.pretrain.steps = 60
    c.pretrain.optim.lr = 3e-3
    c.pretrain.optim.warmup_steps = 20
    c.pretrain.update(common.loop(batch_size=16, log_every=10, checkpoint_every=30))
  return c
