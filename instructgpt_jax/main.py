"""Entry point: `python -m instructgpt_jax.main --config=configs/ppo.py[:preset] [--workdir=DIR]`.

The config's `stage` selects what to run; every earlier stage missing from the workdir runs
first. Overrides: `--config.ppo.kl_coef=0.05`, `--config.model.num_layers=2`, ...
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/ppo.py or configs/ppo.py:tiny.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the report (default: runs/<preset>)."
)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/ppo.py")
  # Import JAX-heavy modules after flag parsing so `--help` is instant.
  import jax  # pylint: disable=import-outside-toplevel

  from instructgpt_jax import loop, pipeline, sharding, workspace  # pylint: disable=import-outside-toplevel

  try:
    pipeline.check_stage(config.stage)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if config.dry_run:
    # Compile the stage's train step on abstract arrays over the configured mesh and report
    # parameters, FLOPs and bytes per device; nothing is allocated or trained.
    from instructgpt_jax import dry_run  # pylint: disable=import-outside-toplevel

    print(json.dumps(dry_run.dry_run(config), indent=1, default=str))
    return 0
  workdir = _WORKDIR.value or os.path.join("runs", config.preset)
  sharding.maybe_initialize_distributed(config.sharding.distributed)
  if config.compilation_cache:
    # A second run of the same config reuses compiled programs instead of paying XLA again.
    jax.config.update(
      "jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache")
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.info("Config:\n%s", config)
  ws = workspace.Workspace(config, workdir)
  try:
    with loop.PreemptionGuard():  # SIGTERM: save at the next step boundary, exit 0.
      summaries = pipeline.run(ws, config.stage)
  except loop.Preempted as e:
    print(str(e), flush=True)
    return 0
  print(json.dumps({k: v for k, v in summaries.items()}, indent=1, default=str)[:4000])
  return 0


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a mistyped `--config.a.b=...` key reported in one line, not a trace."""
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    cause: Any = e
    while isinstance(cause, BaseException) and cause.args:
      cause = cause.args[0]
    msg = str(cause).replace("\n", " ")
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    sys.stderr.write(
      f"FATAL Flags parsing error: unknown config key {msg} in the overrides "
      f"{overrides}. Valid keys are the fields of the config file (see "
      f"instructgpt_jax/presets.py).\n"
    )
    sys.exit(1)


def run() -> None:
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
