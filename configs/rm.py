"""Stage "rm". Usage: --config=configs/rm.py[:preset], presets: tiny, small (default), gpt2,
gpt3_1.3b, gpt3_6b, gpt3_175b. Every field is documented in instructgpt_jax/presets.py."""

from instructgpt_jax import presets


def get_config(preset=None):
  return presets.stage_config("rm", preset)
