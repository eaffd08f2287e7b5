"""Entry point: `python -m instructgpt_jax.main --config=configs/ppo.py[:preset] [--workdir=DIR]`.

The config's `stage` selects what to run; every earlier stage missing from the workdir runs
first. Overrides: `--config.ppo.kl_coef=0.05`, `--config.model.num_layers=2`, ...
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from instructgpt_jax import console

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/ppo.py or configs/ppo.py:tiny.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the report (default: runs/<preset>)."
)
_PRINT_CONFIG = flags.DEFINE_bool(
  "print_config",
  False,
  "Print every setting the run would use (the config files' chain and the overrides, resolved) "
  "and exit.",
)


def _use_compilation_cache(directory: str, workdir: str) -> None:
  """Points JAX's persistent compilation cache at `directory` (relative: inside the workdir;
  "": off), so a rerun, or another run that points at the same directory, loads compiled
  programs instead of paying XLA again. A cache the user gave JAX itself (the
  JAX_COMPILATION_CACHE_DIR environment variable) is left as it is."""
  import jax  # pylint: disable=import-outside-toplevel

  if not directory or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if jax.default_backend() == "cpu":
    # XLA's own caches are GPU autotuning files; naming them puts the cache's path into every
    # key, so a cache copied or shared under another path would never hit.
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/ppo.py")
  if _PRINT_CONFIG.value:
    print(config.copy_and_resolve_references(), end="")
    return 0
  # Import JAX-heavy modules after flag parsing so `--help` is instant.
  from instructgpt_jax import checkpoint, loop  # pylint: disable=import-outside-toplevel

  console.quiet_libraries()
  # A user's mistake (a config value, a data file, a checkpoint, a run that diverged) is told in
  # its own words and exits 1; `--verbosity=1` shows the traceback. Other errors show theirs.
  user_errors = (ValueError, FileNotFoundError, checkpoint.CheckpointError, loop.NonFiniteError)
  try:
    return _run(config)
  except user_errors as e:
    if flags.FLAGS["verbosity"].present:
      raise
    print(f"error: {e}\n(rerun with --verbosity=1 for the traceback)", file=sys.stderr, flush=True)
    return 1


def _run(config: Any) -> int:
  """Runs the configured stage after every earlier stage the workdir lacks."""
  import jax  # pylint: disable=import-outside-toplevel

  from instructgpt_jax import loop, multihost, pipeline, workspace  # pylint: disable=import-outside-toplevel

  try:
    pipeline.check_stage(config.stage)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if config.dry_run:
    # Compile the stage's train step on abstract arrays over the configured mesh and report
    # parameters, FLOPs and bytes per device; nothing is allocated or trained.
    from instructgpt_jax.tools import dry_run  # pylint: disable=import-outside-toplevel

    print(json.dumps(dry_run.dry_run(config), indent=1, default=str))
    return 0
  workdir = _WORKDIR.value or os.path.join("runs", config.preset)
  multihost.initialize(config.sharding)  # Before any other JAX call.
  if not multihost.is_main():
    # Process 0 prints the run's lines; the others print only errors and preemption.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's lifetime)
  _use_compilation_cache(config.compilation_cache, workdir)
  logging.info("Config:\n%s", config)
  ws = workspace.Workspace(config, workdir)
  print(config_summary(config, ws), flush=True)
  multihost.on_main(
    "config.json",
    lambda: loop.write_json(
      os.path.join(ws.workdir, "config.json"), json.loads(config.to_json()), indent=1
    ),
  )
  try:
    with loop.PreemptionGuard():  # SIGTERM: save at the next step boundary, exit 0.
      pipeline.run(ws, config.stage)
  except loop.Preempted as e:
    if jax.process_count() > 1:  # Every process says where it stopped (the others on stderr).
      e = f"process {jax.process_index()}: {e}"
    print(e, file=sys.stdout if multihost.is_main() else sys.stderr, flush=True)
    return 0
  print(f"Done. Stage summaries: {ws.workdir}/<stage>/DONE.json", flush=True)
  return 0


def config_summary(config: Any, ws: Any) -> str:
  """The few lines of the config that say what will run, for the top of the terminal."""
  from instructgpt_jax import pipeline  # pylint: disable=import-outside-toplevel

  m = ws.models.policy  # An imported checkpoint's shape with `model.init = "hf:/dir"`.
  return "\n".join(
    [
      f"instructgpt_jax: stage {config.stage} (preset {config.preset}) in {ws.workdir}",
      f"  stages: {' -> '.join(pipeline.stages_to_run(config.stage))}",
      f"  model: {m.family}, {m.num_layers} layers x {m.d_model}, {m.num_heads} heads, "
      f"vocab {m.vocab_size}, {m.num_params() / 1e6:.2f}M parameters, {m.dtype}",
      f"  mesh: {dict(ws.mesh.shape)} on {ws.mesh.size} {ws.mesh.devices.flat[0].platform} "
      f"device(s); data: {ws.data_summary()}",
      f"  full config: {ws.workdir}/config.json; library logs: --verbosity=0",
    ]
  )


def _config_spec(argv: list[str]) -> str | None:
  """The value of `--config=...` (or `--config ...`) in `argv`."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_config_file(argv: list[str]) -> None:
  """Loads the `--config` file once before absl does, so that a missing file or a bad preset
  (`configs/ppo.py:tinyy`) is one line, not absl's message with the config's traceback in it."""
  spec = _config_spec(argv)
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  try:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no config file {path!r}")
    runpy.run_path(path)["get_config"](arg or None)
  except Exception as e:  # pylint: disable=broad-except
    sys.stderr.write(f"error: --config={spec}: {e}\n")
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a mistyped `--config.a.b=...` key reported in one line that lists the
  valid keys at that level, not a trace."""
  _check_config_file(argv)
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    cause: Any = e
    while isinstance(cause, BaseException) and cause.args:
      cause = cause.args[0]
    overrides = [a.split("=")[0][len("--config.") :] for a in argv[1:] if a.startswith("--config.")]
    sys.stderr.write(
      f"FATAL Flags parsing error: unknown config key {' '.join(str(cause).split())} in the overrides "
      f"{overrides}. {_valid_keys(argv, overrides)}\n"
    )
    sys.exit(1)


def _valid_keys(argv: list[str], overrides: list[str]) -> str:
  """ "Valid keys under <section>: ..." for the first override that the config file lacks."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return ""
  path, _, arg = spec.partition(":")
  try:
    config = runpy.run_path(path)["get_config"](arg or None)
  except Exception:  # pylint: disable=broad-except
    return f"The valid keys are the fields of {path}."
  for key in overrides:
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(parts[:depth]) or "the top level"
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        return f"Valid keys under {where} of {path}: {valid}."
      node = node[part]
  return f"The valid keys are the fields of {path}."


def run() -> None:
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
