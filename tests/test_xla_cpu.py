"""Collectives across simulated CPU devices get enough client threads (xla_cpu.py): eager ops
on parameters sharded over 8 devices, which aborted XLA with a rendezvous timeout on 2 cores."""

import os
import subprocess
import sys
import textwrap

import pytest

from instructgpt_jax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_spare_threads_for_simulated_devices():
  env = {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"}
  assert xla_cpu.configure(env) == 32 and env["PJRT_NPROC"] == "32"
  assert xla_cpu.configure({"JAX_NUM_CPU_DEVICES": "4"}) == 16
  assert xla_cpu.configure({"XLA_FLAGS": "--xla_force_host_platform_device_count=512"}) == 576
  # One device needs none; a value of the user's own is kept.
  assert xla_cpu.configure({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}) is None
  mine = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "NPROC": "9"}
  assert xla_cpu.configure(mine) is None and "PJRT_NPROC" not in mine


def test_the_test_processes_have_the_spare_threads():
  assert os.environ["PJRT_NPROC"] == "32"  # conftest's 8 devices; set on import of the package.


# Parameters sharded over 8 devices and a batch on one: every eager op of the forward pass is a
# small 8-device program with all-reduces, and many are in flight at once. Before xla_cpu, this
# aborted on every run on a 2-core AMD EPYC (4 of 4; and 1 run of 2 of the aborted test itself).
_EAGER_FORWARD = textwrap.dedent(
  """
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import numpy as np
  import jax
  from tests import helpers
  from instructgpt_jax import sharding, train_state
  cfg = helpers.tiny_model(max_len=128)
  mesh = sharding.make_mesh((1, -1, 1))
  shardings = train_state.param_shardings(cfg, mesh, sharding.DEFAULT_RULES)
  params = jax.device_put(helpers.init_params(cfg), shardings)
  batch = helpers.lm_batch(np.random.default_rng(0), 288, 80, cfg.vocab_size)
  for _ in range(3):
    eager = np.asarray(helpers.token_logprobs(params, cfg, batch["tokens"], batch["mask"]))
  jitted = jax.jit(helpers.token_logprobs, static_argnums=1)(params, cfg, batch["tokens"], batch["mask"])
  np.testing.assert_allclose(eager, np.asarray(jitted), rtol=1e-4, atol=1e-4)
  print("PJRT_NPROC", os.environ["PJRT_NPROC"])
  """
)


@pytest.mark.slow
def test_eager_ops_on_eight_sharded_devices_finish():
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  p = subprocess.run(
    [sys.executable, "-c", _EAGER_FORWARD],
    cwd=ROOT,
    env=dict(env, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert "PJRT_NPROC 32" in p.stdout
