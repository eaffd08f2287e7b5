"""The benchmark and the dry run: no recompilation across PPO iterations, dry-run memory that
shrinks with FSDP, and a quick smoke run of bench.py. Nothing here asserts on a timing."""

import json

import jax
import numpy as np
import pytest

from instructgpt_jax import model_configs, sharding
from instructgpt_jax.tools import bench, dry_run
from tests import helpers


class _CompileCounter:
  """Counts programs built through jax.monitoring: one event per program, compiled by XLA or
  loaded from the persistent compilation cache the test session shares (conftest.py)."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count = 0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if self.active and event == self.EVENT:
      self.count += 1


_COUNTER = _CompileCounter()


@pytest.mark.slow  # Compiles and runs whole programs: the full suite runs it.
def test_ppo_iteration_compiles_once():
  p = dict(bench.PRESETS["tiny"], **bench.QUICK)
  s, mesh, state, shardings, batch, ref_params, rm_params = bench.ppo_setup(p)
  step = bench.jit_ppo_iteration(s, shardings, mesh)
  compiles = []
  with jax.set_mesh(mesh):
    dev_batch = sharding.shard_batch(batch, mesh, sharding.DEFAULT_RULES)
    for i in range(3):
      _COUNTER.count, _COUNTER.active = 0, True
      try:
        state, metrics = step(state, dev_batch, jax.random.key(i), ref_params, rm_params)
        jax.block_until_ready(metrics)
      finally:
        _COUNTER.active = False
      compiles.append(_COUNTER.count)
  assert compiles[0] >= 1, compiles  # the listener works
  assert compiles[1:] == [0, 0], compiles  # later iterations reuse the program
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert np.isfinite(float(metrics["kl"]))


@pytest.mark.slow  # Compiles and runs whole programs: the full suite runs it.
def test_dry_run_bytes_per_device_shrink_with_fsdp():
  config = helpers.config("pretrain")
  devices = jax.devices()
  assert len(devices) == 8
  results = {}
  for fsdp in (1, 2, 8):
    mesh = sharding.make_mesh((1, fsdp, 1), devices[:fsdp])
    results[fsdp] = dry_run.dry_run(config, mesh=mesh)
  for r in results.values():
    assert r["compiled"] and r["flops_per_step"] > 0
    assert r["params"] == 145152
  args = [results[f]["bytes_per_device"]["argument"] for f in (1, 2, 8)]
  state = [results[f]["state_bytes_per_device"] for f in (1, 2, 8)]
  peak = [results[f]["bytes_per_device"]["peak_estimate"] for f in (1, 2, 8)]
  assert args[0] > args[1] > args[2], args
  assert state[0] > state[1] > state[2], state
  assert peak[0] > peak[1] > peak[2], peak


def test_dry_run_ppo_lowers_on_8_devices():
  config = helpers.config("ppo")
  info = dry_run.dry_run(config, compile=False)
  assert info["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert info["params"]["policy"] > 0 and info["params"]["value"] > 0
  assert info["compiled"] is False and info["state_bytes_per_device"] > 0


def test_dry_run_rm_base_lowers_the_rm_shaped_model():
  config = helpers.config("rm_base")
  info = dry_run.dry_run(config, compile=False)
  rm_params = model_configs.resolve(config).rm_trunk.num_params()
  assert info["stage"] == "rm_base" and info["params"] == rm_params
  assert info["params"] > model_configs.resolve(config).policy.num_params()
  assert info["seq"] == config.data.seq_len


@pytest.mark.slow  # Compiles and runs whole programs: the full suite runs it.
def test_bench_quick_smoke(capsys):
  records = bench.main(["--preset=tiny", "--quick", "--skip=ppo"])
  names = {r["metric"] for r in records}
  for name in (
    "matmul_fp32_peak_jax",
    "train_tokens_per_s",
    "mfu_6N_attn_lmhead_vs_jax_peak",
    "generate_new_tokens_per_s",
    "train_compile_time",
    "generate_compile_time",
  ):
    assert name in names, sorted(names)
  for r in records:
    assert set(r) >= {"preset", "metric", "value", "unit"} and r["preset"] == "tiny"
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == len(records)  # one JSON object per line per figure


def test_forward_flops_agree_with_xla_cost_analysis():
  """The FLOP accounting behind the MFU and the RL work figures, against XLA's own count of the
  compiled forward pass (which also counts the elementwise ops, hence the tolerance)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from instructgpt_jax import model as model_lib  # pylint: disable=import-outside-toplevel

  p = dict(bench.PRESETS["tiny"], **bench.QUICK)
  cfg = bench.model_config(p)
  params = jax.jit(lambda r: nn.meta.unbox(model_lib.boxed_params(cfg, r)))(jax.random.key(0))
  tokens = jnp.zeros((4, p["seq"]), jnp.int32)
  fwd = jax.jit(lambda pr, t: model_lib.Transformer(cfg).apply({"params": pr}, t, jnp.ones_like(t)))
  cost = fwd.lower(params, tokens).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  ours = bench._forward_flops(cfg, 4, p["seq"], p["seq"])  # pylint: disable=protected-access
  assert cost["flops"] == pytest.approx(ours, rel=0.05)
  ours_gflop, peer_gflop = bench.rl_step_gflop(p)
  assert ours_gflop > peer_gflop > 0  # ours adds the value, reward and ptx work to the RLOO step's
  # At ptx_coef 0 the program has no ptx term, and neither does the count: 3 ptx forwards less.
  no_ptx, _ = bench.rl_step_gflop(p, ptx_coef=0.0)
  ptx_fwd = bench._forward_flops(
    cfg, 8, p["ppo_prompt"] + p["ppo_new"], p["ppo_prompt"] + p["ppo_new"]
  )  # pylint: disable=protected-access
  assert ours_gflop - no_ptx == pytest.approx(3 * ptx_fwd / 1e9)


def test_compare_pairs_the_iteration_with_trl_ppo(monkeypatch):
  out = []
  monkeypatch.setattr(bench, "_EMIT", out.append)
  ours = [
    {"metric": "ppo_iteration_time", "value": 2.0},
    {"metric": "ppo_iteration_gflops", "value": 150.0},
  ]
  peer = [
    {"metric": "trl_ppo_step_time", "value": 3.0},
    {"metric": "trl_ppo_step_gflops", "value": 100.0},
    {"metric": "trl_rloo_step_time", "value": 1.0},
  ]
  bench.compare(ours, peer)
  got = {r["metric"]: r["value"] for r in out}
  assert got["ratio_ppo_iteration_time_vs_trl_ppo"] == pytest.approx(2 / 3)
  assert got["ratio_ppo_gflops_vs_trl_ppo"] == pytest.approx(1.5)
  assert got["ratio_ppo_iteration_time"] == pytest.approx(2.0)  # Against the RLOO step.


def test_ablation_table_means_spreads_and_costs(tmp_path):
  """Two fake seeds of PPO-ptx and RLOO-ptx: the table's means, half-ranges, loop seconds from
  metrics.jsonl, and the cost per 0.01 of gold over SFT; RLOO's FLOPs lack the value model's."""
  from instructgpt_jax.tools import ablation  # pylint: disable=import-outside-toplevel

  config = helpers.config("ppo")
  done = {"iterations": 3, "ptx_coef": 1.0}
  for seed, (gold, sft) in enumerate(((0.80, 0.70), (0.84, 0.72))):
    run = tmp_path / f"s{seed}"
    policies = {"sft": {"gold_score": sft}}
    for name, estimator in (("ppo_ptx", "gae"), ("rloo_ptx", "rloo")):
      stage = run / "ppo" / name
      stage.mkdir(parents=True)
      (stage / "DONE.json").write_text(json.dumps(dict(done, estimator=estimator)))
      (stage / "metrics.jsonl").write_text(json.dumps({"step": 3, "steps_per_s": 0.1}) + "\n")
      policies[name] = {"gold_score": gold, "win_rate_vs_sft": 0.6 + seed / 10}
    (run / "report.json").write_text(json.dumps({"policies": policies}))
  table = ablation.collect(config, [str(tmp_path / "s0"), str(tmp_path / "s1")])
  row = table["rows"]["ppo_ptx"]
  assert row["seconds"] == [pytest.approx(30.0)] * 2
  rloo = table["rows"]["rloo_ptx"]["flops"][0]
  assert 0 < rloo < row["flops"][0]
  text = ablation.format_table(table)
  ppo_line = next(line for line in text.splitlines() if line.startswith("| ppo_ptx"))
  cells = [c.strip() for c in ppo_line.split("|")[1:-1]]
  assert cells[1] == "0.650 ± 0.050" and cells[2] == "0.820 ± 0.020"
  # Gold gain 0.820 - 0.710 = 0.11, so 30 s / 11 per 0.01.
  assert cells[-2] == f"{30 / 11:.0f}" and cells[-1] == f"{row['flops'][0] / 1e12 / 11:.1f}"
