"""Stage "dpo" (not in the paper): DPO on the RM's comparisons, from SFT with SFT as the
reference, then the evaluation, which reports it beside every policy the workdir holds.

    loss = -log sigmoid(beta * [log pi(y_w)/pi_SFT(y_w) - log pi(y_l)/pi_SFT(y_l)])

over all C(K, 2) pairs of each ranking (IPO with `--config.dpo.loss=ipo`).
Usage: `--config=configs/dpo.py[:preset]`. It reads the eval section of configs/ppo.py.
"""

import ml_collections

from configs import common, ppo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ppo.get_config(arg)  # The data, the models and the evaluation are PPO's.
  c.stage = "dpo"
  c.dpo = ml_collections.ConfigDict(
    dict(
      beta=0.1,  # The DPO paper's default KL strength.
      loss="sigmoid",  # sigmoid (DPO) | ipo (then beta is IPO's tau).
      epochs=1,  # Passes over the comparisons, as the RM makes.
      # The policy's PPO learning rate; SFT's 1e-3 would move far from the reference.
      optim=common.optim(1e-4, "cosine", warmup_steps=5, warmup_init_fraction=0.1),
      lora=common.lora(),  # `--config.dpo.lora.rank=8`: adapters on SFT, SFT the reference.
      # Prompts per batch, each with all its C(K, 2) pairs (K <= 9 responses).
      **common.loop(batch_size=32, log_every=5, checkpoint_every=50),
    )
  )
  if c.preset == "tiny":
    c.dpo.update(common.loop(batch_size=8, log_every=1, checkpoint_every=5))
  return c
