"""Every test process sees 8 simulated CPU devices, so each sharding path runs on a real mesh,
and every test process (the workers, and the runs and notebooks they start) shares one
persistent compilation cache: the same tiny programs are compiled once per suite run."""

import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Spare XLA CPU client threads for collectives across the 8 devices (instructgpt_jax/xla_cpu.py),
# set on import and before any test makes JAX's CPU client.
import instructgpt_jax  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import

# The first pytest process (the xdist controller, or the only one) makes the directory; the
# workers and everything they start inherit it, and it goes when that process ends.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="instructgpt_jax_jit_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  # XLA's GPU caches would put the directory's path into every key; the CPU has none to keep.
  os.environ["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] = "none"


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(Workspace, {stage: summary}) of the tiny pipeline through eval, built once per session and
  shared by the xdist workers: tests read it or copy its finished stages."""
  # pylint: disable=import-outside-toplevel (JAX is imported after the settings above)
  from instructgpt_jax import pipeline
  from instructgpt_jax.workspace import Workspace
  from tests import helpers

  build = lambda path: pipeline.run(Workspace(helpers.config("ppo"), str(path)), "ppo")
  ws = Workspace(
    helpers.config("ppo"), str(helpers.built_once(tmp_path_factory, "tiny_run", build))
  )
  return ws, pipeline.run(ws, "ppo")  # Every stage is finished: their summaries, read back.
