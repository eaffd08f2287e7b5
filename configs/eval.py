"""Stage "eval": the report of every policy in the workdir (README, "The report").

The evaluation settings live in configs/ppo.py's `eval` section, since `configs/ppo.py` ends
with the evaluation. Usage: `--config=configs/eval.py[:preset]`.
"""

import ml_collections

from configs import ppo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ppo.get_config(arg)
  c.stage = "eval"
  return c
