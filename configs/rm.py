"""Stage "rm": the reward model, trained on rankings of K = 4..9 responses per prompt (paper C.2).

All C(K,2) comparisons of a prompt are one batch element; one epoch (more over-fit in the
paper); cosine decay to 10 %; a bias so that the demonstrations score mean 0.
Usage: `--config=configs/rm.py[:preset]`.
"""

import ml_collections

from configs import common, label


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = label.get_config(arg)
  c.stage = "rm"
  c.rm = ml_collections.ConfigDict(
    dict(
      epochs=1,  # Paper: 1 epoch; more over-fit.
      # Paper: lr 9e-6 at batch 64 for the 6B RM; our small model from scratch needs more.
      optim=common.optim(1e-3),
      init_from="sft",  # sft | pretrain: the trunk the scalar head is put on.
      **common.loop(batch_size=16, log_every=10, checkpoint_every=100),  # Prompts per batch.
    )
  )
  if c.preset == "tiny":
    c.rm.update(common.loop(batch_size=8, log_every=5, checkpoint_every=20))
  return c
