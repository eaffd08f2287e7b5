"""Stage "label": K = 4..9 SFT samples per prompt, ranked by the simulated training labelers.

Writes `<workdir>/label/comparisons.jsonl` in the comparisons format (README). With your own
comparisons, set `data.comparisons_jsonl` and skip this stage.
Usage: `--config=configs/label.py[:preset]`.
"""

import ml_collections

from configs import sft


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sft.get_config(arg)
  c.stage = "label"
  c.label = ml_collections.ConfigDict(
    dict(
      num_prompts=2400,  # RM prompts to label.
      k_min=4,  # Paper: K = 4..9 responses ranked per prompt.
      k_max=9,
      temperature=1.0,  # Sampling temperature of the SFT policy.
      batch_size=128,  # Prompts sampled at once.
      chunk_prompts=480,  # Saved after each chunk; a rerun resumes there.
    )
  )
  if c.preset == "tiny":
    c.label.update(dict(num_prompts=32, batch_size=32, chunk_prompts=16))
  return c
