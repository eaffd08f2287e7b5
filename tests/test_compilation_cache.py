"""`config.compilation_cache`: compiled programs kept in the workdir, and a cache copied to
another path (or shared by a sweep) is hit, not rebuilt."""

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # Runs the entry point twice in subprocesses.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pretrain(workdir, *overrides):
  # Without the suite's own cache (conftest.py), so the config decides where programs go.
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  args = ["--config=configs/pretrain.py:tiny", f"--workdir={workdir}", "--config.pretrain.steps=2"]
  p = subprocess.run(
    [sys.executable, "-m", "instructgpt_jax.main", *args, *overrides],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]


def test_a_copied_cache_serves_another_workdir(tmp_path):
  _pretrain(tmp_path / "a")
  entries = sorted(os.listdir(tmp_path / "a" / "jax_cache"))  # The default: in the workdir.
  assert entries
  shared = tmp_path / "elsewhere" / "cache"
  shutil.copytree(tmp_path / "a" / "jax_cache", shared)
  _pretrain(tmp_path / "b", f"--config.compilation_cache={shared}")
  # Every program the first run kept was found under its key at the new path: the second run
  # wrote no program of those names again. (It may write one the first run did not keep: the
  # cache keeps programs that took over 0.5 s to compile, and under load a small one can.)
  written = set(os.listdir(shared)) - set(entries)
  name = lambda entry: entry.rsplit("-", 2)[0]  # noqa: E731 ("jit_train_step-<key>-cache")
  assert set(entries) <= set(os.listdir(shared))
  assert not {name(e) for e in written} & {name(e) for e in entries}, written
  assert not (tmp_path / "b" / "jax_cache").exists()
