"""Stage "sft": supervised fine-tuning of the base model on demonstrations (paper C.1).

The loss is on response tokens only; residual dropout; cosine decay to 10 % without warmup.
Usage: `--config=configs/sft.py[:preset]`; the earlier stages run first if the workdir lacks them.
"""

import ml_collections

from configs import common, pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = pretrain.get_config(arg)
  c.stage = "sft"
  # Paper: 16 epochs at dropout 0.2 and lr 9.65e-6 for a fine-tuned GPT-3. Our 4-layer model
  # trained from scratch needs a larger learning rate; 8 epochs at dropout 0.1 gave the best
  # sampled gold score of the settings tried (0.245, against 0.063 for 4 epochs at 3e-4 with
  # dropout 0.2).
  c.sft = ml_collections.ConfigDict(
    dict(
      epochs=8,
      dropout=0.1,  # Residual dropout during SFT only.
      # Paper C.3: the SFT that PPO starts from mixes in 10 % pretraining data. This fraction of
      # the rows are pretraining text packed to prompt_len + response_len, loss on every token.
      pretrain_mix=0.1,
      optim=common.optim(1e-3),  # Cosine to 10 %, no warmup (paper C.1).
      lora=common.lora(),  # Not in the paper: `--config.sft.lora.rank=8` trains adapters only.
      **common.loop(batch_size=32, log_every=25, checkpoint_every=200),
    )
  )
  if c.preset == "tiny":
    c.sft.epochs = 1
    c.sft.dropout = 0.0
    c.sft.pretrain_mix = 0.1  # A few rows more per epoch; the tests see the mix.
    c.sft.update(common.loop(batch_size=16, log_every=10, checkpoint_every=20))
  return c
