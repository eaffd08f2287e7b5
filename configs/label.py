"""Stage "label": K = 4..9 samples per prompt, ranked by the simulated training labelers.

The paper's comparisons came from several models' outputs; each response here comes from one of
`label.sources` ("policy:temperature", policy sft | base | base_fewshot), drawn per response with
`label.source_weights`. The RM stage reports its accuracy on SFT-only pairs as well.

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
      # Half the responses from SFT at temperature 1 (what PPO starts from), the rest from
      # SFT at 0.7 and the few-shot base model, so the RM sees better and worse policies.
      sources=("sft:1.0", "sft:0.7", "base_fewshot:1.0"),
      source_weights=(0.5, 0.25, 0.25),
      fewshot_examples=3,  # Demonstrations in the base model's few-shot prompt (as eval).
      fewshot_prompt_len=96,  # Extra prompt tokens the few-shot prefix may take.
      batch_size=128,  # Prompts sampled at once.
      chunk_prompts=480,  # Saved after each chunk; a rerun resumes there.
    )
  )
  if c.preset == "tiny":
    c.label.update(dict(num_prompts=32, batch_size=32, chunk_prompts=16))
  return c
