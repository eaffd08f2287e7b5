"""Exports a finished stage of a run as a Hugging Face directory (hf.export_stage).

  python -m instructgpt_jax.tools.export_hf --config=configs/ppo.py:small --workdir=runs/small \
      --stage=ppo/ppo_ptx --out=/tmp/ppo_ptx_hf

Give the same --config and overrides as the run (they fix the model's shape and tokenizer).
--stage is a stage directory: pretrain, sft, rm (a sequence-classification model with one label),
ppo/ppo or ppo/ppo_ptx. The directory loads with transformers' from_pretrained, its tokenizer
with AutoTokenizer (docs/hf.md). Library INFO logs are off, as in the main command (--verbosity=0
shows them).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from instructgpt_jax import console, hf
from instructgpt_jax.workspace import Workspace

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.", required=True)
_STAGE = flags.DEFINE_string("stage", None, "Stage to export, e.g. sft or rm.", required=True)
_OUT = flags.DEFINE_string("out", None, "Directory to write.", required=True)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/ppo.py:small")
  console.quiet_libraries()
  ws = Workspace(_CONFIG.value, _WORKDIR.value)
  print(hf.export_stage(ws, _STAGE.value, _OUT.value))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
