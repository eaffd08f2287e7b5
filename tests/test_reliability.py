"""Preemption, crashes, numerical faults, bad input and full disks (the README's reliability section).

The end-to-end tests run `python -m instructgpt_jax.main` on the tiny preset in subprocesses
(one CPU device each, for speed) and kill them; the rest run in-process on a small model.
A reference workdir is built once per test session (shared by the xdist workers via a lock)
and earlier stages are copied from it, so each test trains only the stage it checks.
"""

from __future__ import annotations

import glob
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from instructgpt_jax import (
  checkpoint,
  evaluate,
  label,
  loop,
  objectives,
  pipeline,
  sharding,
  train_state,
  workspace,
)
from instructgpt_jax import data as data_lib
from instructgpt_jax.sim import labelers as labelers_lib
from tests import helpers

pytestmark = pytest.mark.slow  # Every test here runs stages or processes.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(
  os.environ,
  XLA_FLAGS="--xla_force_host_platform_device_count=1",
  JAX_PLATFORMS="cpu",
  PYTHONUNBUFFERED="1",
)
# Small, frequent checkpoints and a log row per step, so every step's metrics are compared;
# enough labelled prompts that the RM runs several steps whatever the samples look like.
OVERRIDES = [
  "--config.pretrain.steps=10",
  "--config.sft.checkpoint_every=2",
  "--config.sft.log_every=1",
  "--config.label.num_prompts=128",
  "--config.rm.batch_size=4",
  "--config.rm.checkpoint_every=1",
  "--config.rm.log_every=1",
  "--config.ppo.iterations=4",
  "--config.ppo.checkpoint_every=1",
  "--config.ppo.variants=('ppo',)",
  "--config.eval.num_prompts=8",
]
SHARED = ("world", "data", "tokenizer.model")


def _cmd(workdir, stage, *extra):
  # A stage's config holds the sections of the stages it runs (configs/sft.py has no ppo).
  sections = pipeline.stages_to_run(stage)
  overrides = [o for o in OVERRIDES if o.split(".")[1] in sections]
  return [
    sys.executable,
    "-m",
    "instructgpt_jax.main",
    f"--config=configs/{stage}.py:tiny",
    f"--workdir={workdir}",
    *overrides,
    *extra,
  ]


def _run(workdir, stage, *extra, check=True):
  p = subprocess.run(
    _cmd(workdir, stage, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400
  )
  if check and p.returncode != 0:
    raise AssertionError(f"exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
  return p


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """An uninterrupted run of every stage (ppo variant only), shared by all workers."""

  def build(ref):
    p = _run(ref, "ppo")
    (ref.parent / "reliability_reference.log").write_text(p.stderr)

  return helpers.built_once(tmp_path_factory, "reliability_reference", build)


def _copy_stages(ref, dst, stages):
  os.makedirs(dst, exist_ok=True)
  for name in (*SHARED, *stages):
    src = os.path.join(ref, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dst, name))
    else:
      shutil.copy(src, os.path.join(dst, name))


def _rows(path):
  """metrics.jsonl without the wall-clock column."""
  return [
    {k: v for k, v in r.items() if k != "steps_per_s"}
    for r in (json.loads(line) for line in open(path, encoding="utf-8") if line.strip())
  ]


def _steps(ckpt_dir):
  return (
    sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
  )


def _arrays(step_dir):
  """Every array of a checkpoint's state, read without a target (flattened by path)."""
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"))
  return {
    jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def _assert_same_arrays(a_dir, b_dir):
  a, b = _arrays(a_dir), _arrays(b_dir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _kill_after_checkpoint(workdir, stage, ckpt_dir, min_steps=1, sig=signal.SIGKILL):
  """Starts the stage, waits until `min_steps` checkpoints exist, then sends `sig`."""
  proc = subprocess.Popen(
    _cmd(workdir, stage),
    cwd=ROOT,
    env=ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300
  while len(_steps(ckpt_dir)) < min_steps:
    assert proc.poll() is None, proc.communicate()[1][-4000:]
    assert time.time() < deadline
    time.sleep(0.05)
  time.sleep(random.uniform(0.0, 0.4))
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


def _check_resumed_run(ref, workdir, stage_sub, err):
  assert "resumed from" in err, err[-3000:]
  ref_dir, dir_ = os.path.join(ref, stage_sub), os.path.join(workdir, stage_sub)
  assert _rows(os.path.join(dir_, "metrics.jsonl")) == _rows(os.path.join(ref_dir, "metrics.jsonl"))
  last = _steps(os.path.join(ref_dir, "ckpt"))[-1]
  assert _steps(os.path.join(dir_, "ckpt"))[-1] == last
  assert len(_steps(os.path.join(dir_, "ckpt"))) <= 3  # keep_checkpoints
  _assert_same_arrays(
    os.path.join(ref_dir, "ckpt", str(last)), os.path.join(dir_, "ckpt", str(last))
  )
  if os.path.isdir(os.path.join(ref_dir, "final")):
    _assert_same_arrays(os.path.join(ref_dir, "final", "0"), os.path.join(dir_, "final", "0"))


# End to end: SIGKILL / SIGTERM / damaged checkpoints --------------------------------------------


def test_sft_sigkill_resume_is_exact(reference, tmp_path):
  wd = tmp_path / "wd"
  _copy_stages(reference, wd, ["pretrain"])
  _kill_after_checkpoint(wd, "sft", wd / "sft" / "ckpt")
  assert not (wd / "sft" / "DONE.json").exists(), "killed too late to test a resume"
  p = _run(wd, "sft")
  _check_resumed_run(reference, wd, "sft", p.stderr)
  assert (wd / "pretrain" / "DONE.json").exists()


def test_rm_sigkill_then_damaged_newest_checkpoint(reference, tmp_path):
  """Killed mid-run; the newest checkpoint is then truncated and a half-written one added: the
  resume warns, uses the checkpoint before, and still ends bit-identical."""
  wd = tmp_path / "wd"
  _copy_stages(reference, wd, ["pretrain", "sft", "label"])
  ckpt = wd / "rm" / "ckpt"
  _kill_after_checkpoint(wd, "rm", ckpt, min_steps=2)
  assert not (wd / "rm" / "DONE.json").exists()
  steps = _steps(ckpt)
  newest = ckpt / str(steps[-1])
  for f in glob.glob(str(newest / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(f) and os.path.getsize(f) > 64:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  # The kill may already have left this half-written step behind; either way one is there.
  (ckpt / f"{steps[-1] + 1}.orbax-checkpoint-tmp" / "state").mkdir(parents=True, exist_ok=True)
  p = _run(wd, "rm")
  assert f"checkpoint {steps[-1]} in" in p.stdout + p.stderr and "unreadable" in p.stderr
  assert "resumed from" in p.stderr and f"{ckpt}/{steps[-2]}" in p.stderr
  assert (wd / "rm" / "ckpt_damaged").is_dir()
  _check_resumed_run(reference, wd, "rm", p.stderr)


def test_ppo_sigkill_resume_is_exact(reference, tmp_path):
  wd = tmp_path / "wd"
  _copy_stages(reference, wd, ["pretrain", "sft", "label", "rm"])
  _kill_after_checkpoint(wd, "ppo", wd / "ppo" / "ppo" / "ckpt")
  assert not (wd / "ppo" / "ppo" / "DONE.json").exists()
  p = _run(wd, "ppo")
  _check_resumed_run(reference, wd, "ppo/ppo", p.stderr)
  ref_done = json.loads((reference / "ppo" / "DONE.json").read_text())
  done = json.loads((wd / "ppo" / "DONE.json").read_text())
  # Summaries (first_score too) do not see the restart; only the run's own id differs.
  drop = lambda d: {k: v for k, v in d.items() if k != "run_id"}  # noqa: E731
  assert drop(done["ppo"]) == drop(ref_done["ppo"])


def test_label_resumes_at_the_last_finished_chunk(reference, tmp_path, monkeypatch):
  """A crash in the second chunk, plus rows of a chunk written but never recorded: the rerun
  starts at the second chunk and writes what an uninterrupted run writes."""
  config = helpers.config("label")
  config.label.num_prompts = 64  # Four chunks of 16.
  whole, crashed = tmp_path / "whole", tmp_path / "crashed"
  for wd in (whole, crashed):
    _copy_stages(reference, wd, ["pretrain", "sft"])
  whole_summary = label.run(workspace.Workspace(config, str(whole)))

  ws = workspace.Workspace(config, str(crashed))
  real_rank, calls = labelers_lib.rank, iter(range(10**6))

  def rank_then_crash(*args, **kwargs):
    if next(calls) == 20:
      raise RuntimeError("simulated crash")
    return real_rank(*args, **kwargs)

  monkeypatch.setattr(labelers_lib, "rank", rank_then_crash)
  with pytest.raises(RuntimeError, match="simulated crash"):
    label.run(ws)
  monkeypatch.setattr(labelers_lib, "rank", real_rank)
  out = crashed / "label" / "comparisons.jsonl"
  progress = json.loads((crashed / "label" / "comparisons.jsonl.progress.json").read_text())
  assert progress["prompts_done"] == 16 and not out.exists()
  with open(str(out) + ".partial", "a", encoding="utf-8") as f:
    f.write('{"prompt": "half of an unrecorded chunk"}\n')

  summary = label.run(ws)
  assert out.read_text() == (whole / "label" / "comparisons.jsonl").read_text()
  assert not os.path.exists(str(out) + ".partial")
  assert not os.path.exists(str(out) + ".progress.json")
  assert summary["labeler_agreement"] == whole_summary["labeler_agreement"]
  assert summary["dropped_empty_responses"] == whole_summary["dropped_empty_responses"]


def test_eval_resumes_at_the_next_policy(reference, tmp_path, monkeypatch):
  """A crash while evaluating the third policy: the rerun samples only the policies not yet
  saved and writes the report an uninterrupted evaluation wrote."""
  config = helpers.config("eval")
  config.eval.num_prompts = 8
  whole, wd = tmp_path / "whole", tmp_path / "wd"
  for d in (whole, wd):
    _copy_stages(reference, d, ["pretrain", "sft", "label", "rm", "ppo"])
  evaluate.run(workspace.Workspace(config, str(whole)))
  ws = workspace.Workspace(config, str(wd))
  real_sample, sampled, crashed = evaluate._sample, [], []

  def sample_then_crash(*args, **kwargs):
    sampled.append(args)
    if len(sampled) == 3 and not crashed:  # Once: the rerun samples three sets too.
      crashed.append(True)
      raise RuntimeError("simulated crash")
    return real_sample(*args, **kwargs)

  monkeypatch.setattr(evaluate, "_sample", sample_then_crash)
  with pytest.raises(RuntimeError, match="simulated crash"):
    evaluate.run(ws)
  assert sorted(os.listdir(wd / "eval" / "policies")) == ["base.json", "base_fewshot.json"]
  sampled.clear()
  evaluate.run(ws)
  # sft, sft_t0.7, ppo, the best-of-n pool and the over-optimisation curve's pool only.
  assert len(sampled) == 5
  report = json.loads((wd / "report.json").read_text())
  assert report == json.loads((whole / "report.json").read_text())

  # A policy retrained since it was saved is evaluated again.
  done = json.loads((wd / "pretrain" / "DONE.json").read_text())
  (wd / "pretrain" / "DONE.json").write_text(json.dumps({**done, "run_id": "another run"}))
  sampled.clear()
  evaluate.run(ws)
  assert len(sampled) == 2  # base and base_fewshot.


def test_sft_sigterm_saves_and_exits_zero(reference, tmp_path):
  wd = tmp_path / "wd"
  _copy_stages(reference, wd, ["pretrain"])
  rc, out, err = _kill_after_checkpoint(wd, "sft", wd / "sft" / "ckpt", sig=signal.SIGTERM)
  assert rc == 0, err[-3000:]
  assert "preempted: checkpoint for step" in out, out + err[-2000:]
  step = int(out.split("checkpoint for step ")[1].split()[0])
  assert step in _steps(wd / "sft" / "ckpt")
  assert not (wd / "sft" / "DONE.json").exists()
  p = _run(wd, "sft")
  assert f"resumed from {wd / 'sft' / 'ckpt'}/{step}" in p.stderr
  _check_resumed_run(reference, wd, "sft", p.stderr)


def test_second_sigterm_exits_at_once():
  code = (
    "import os, signal, time\nfrom instructgpt_jax import loop\n"
    "with loop.PreemptionGuard() as g:\n"
    "  os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
    "  assert g.requested and loop.preemption_requested()\n"
    "  os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
    "print('not reached')\n"
  )
  p = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
  )
  assert p.returncode == 143 and "not reached" not in p.stdout, p.stderr


# Bad input ---------------------------------------------------------------------------------------


def test_bad_comparisons_file_fails_early_and_keeps_earlier_stages(reference, tmp_path):
  wd = tmp_path / "wd"
  _copy_stages(reference, wd, ["pretrain", "sft", "label"])
  good = (wd / "label" / "comparisons.jsonl").read_text().splitlines()
  bad = json.loads(good[2])
  bad["ranking"] = bad["ranking"][:-1]  # One rank short of the responses.
  path = tmp_path / "comparisons.jsonl"
  path.write_text("\n".join(good[:2] + [json.dumps(bad)] + good[3:]) + "\n")
  before = _arrays(wd / "sft" / "ckpt" / str(_steps(wd / "sft" / "ckpt")[-1]))
  t0 = time.time()
  p = _run(wd, "rm", f"--config.data.comparisons_jsonl={path}", check=False)
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert f"{path}:3:" in p.stderr and "ranking" in p.stderr, p.stderr[-3000:]
  assert "--verbosity=1" in p.stderr.splitlines()[-1]
  assert time.time() - t0 < 120
  assert not (wd / "rm").exists() or not (wd / "rm" / "DONE.json").exists()
  for stage in ("pretrain", "sft", "label"):
    assert (wd / stage / "DONE.json").exists()
  after = _arrays(wd / "sft" / "ckpt" / str(_steps(wd / "sft" / "ckpt")[-1]))
  assert before.keys() == after.keys()


@pytest.mark.parametrize(
  "line,cause",
  [
    ("{not json", "invalid JSON"),
    ('{"prompt": "p", "user_id": "u", "category": "c"}', "missing field 'response'"),
    ('{"prompt": "", "response": "r", "user_id": "u", "category": "c"}', "'prompt' is empty"),
    ('{"prompt": "p", "response": "", "user_id": "u", "category": "c"}', "'response' is empty"),
  ],
)
def test_malformed_demonstrations_name_file_and_line(tmp_path, line, cause):
  path = tmp_path / "demos.jsonl"
  ok = '{"prompt": "p", "response": "r", "user_id": "u", "category": "c"}'
  path.write_text(ok + "\n" + line + "\n")
  with pytest.raises(data_lib.DataError) as e:
    data_lib.read_jsonl(str(path), "demonstrations")
  assert f"{path}:2:" in str(e.value) and cause in str(e.value)


@pytest.mark.parametrize(
  "rec,cause",
  [
    ({"responses": ["a", "b", "c"], "ranking": [0, 1]}, "ranking"),
    ({"responses": ["a", "b"], "ranking": [0, 5]}, "outside"),
    ({"responses": ["a", ""], "ranking": [0, 1]}, "responses[1] is empty"),
  ],
)
def test_rankings_must_match_responses(tmp_path, rec, cause):
  path = tmp_path / "cmp.jsonl"
  path.write_text(json.dumps({"prompt": "p", "user_id": "u", **rec}) + "\n")
  with pytest.raises(data_lib.DataError) as e:
    data_lib.read_jsonl(str(path), "comparisons")
  assert f"{path}:1:" in str(e.value) and cause in str(e.value)


def test_too_long_prompts_are_dropped_counted_and_printed(reference):
  log = (reference.parent / "reliability_reference.log").read_text()
  assert "sft/train: dropped" in log and "longer than the context" in log


def test_tokenizer_vocab_mismatch(reference):
  cfg = helpers.config("sft")
  cfg.model.vocab_size = 256
  ws = workspace.Workspace(cfg, str(reference), mesh=sharding.make_mesh((1, 1, 1)))
  with pytest.raises(ValueError, match=r"tokenizer.model.*vocab_size=512.*vocab_size=256"):
    ws.tokenizer()


def test_checkpoint_of_another_model_shape_names_the_parameters(reference):
  cfg = helpers.config("rm")
  ws = workspace.Workspace(cfg, str(reference), mesh=sharding.make_mesh((1, 1, 1)))
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    ws.load_params("sft", ws.models.policy.replace(d_model=32))
  msg = str(e.value)
  assert "sft/ckpt" in msg and "made for another model" in msg
  assert "layer_0/attn/query/kernel: model (32, 4, 8), checkpoint (64, 4, 16)" in msg, msg
  with pytest.raises(checkpoint.CheckpointMismatchError, match="not in the model.*layer_1"):
    ws.load_params("sft", ws.models.policy.replace(num_layers=1))


def test_resume_with_another_model_shape_is_refused(tmp_path):
  mesh = sharding.make_mesh((1, 1, 1))
  tx = train_state.make_optimizer(helpers.optim_config(), 10)
  state, sh = train_state.create_train_state(
    helpers.tiny_model(), tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0)
  )
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(1, state, {"data": {}}, force=True)
  ckpt.close()
  other, other_sh = train_state.create_train_state(
    helpers.tiny_model(d_ff=64), tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0)
  )
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"mlp/wi/kernel: model \(64, 64\)"):
    ckpt.restore(checkpoint.abstract_like(other, other_sh))
  ckpt.close()
  assert _steps(tmp_path / "ckpt") == [1]  # Nothing moved or deleted.


def test_mesh_that_does_not_divide_the_devices():
  with pytest.raises(ValueError, match=r"mesh_shape=\(3, -1, 1\).*does not divide the 8"):
    sharding.make_mesh((3, -1, 1))


def test_mistyped_config_key_and_unknown_stage():
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.main",
      "--config=configs/sft.py:tiny",
      "--config.sft.epochz=2",
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert "unknown config key 'epochz'" in p.stderr and 'Did you mean "epochs"' in p.stderr
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.main",
      "--config=configs/sft.py:tiny",
      "--config.stage=sfft",
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode != 0 and "Unknown stage 'sfft'; valid stages:" in p.stderr


def test_finished_stages_are_reused_unless_overwrite(tmp_path, monkeypatch):
  calls = []

  def runner(name):
    def run(ws):
      calls.append((name, os.path.exists(os.path.join(ws.stage_dir(name), "old.txt"))))
      return {"ok": 1}

    return run

  monkeypatch.setattr(pipeline, "_runners", lambda: {s: runner(s) for s in pipeline.STAGES})
  cfg = helpers.config("ppo")
  ws = workspace.Workspace(cfg, str(tmp_path), mesh=sharding.make_mesh((1, 1, 1)))
  pipeline.run(ws, "ppo")
  assert [c[0] for c in calls] == ["pretrain", "sft", "label", "rm_base", "rm", "ppo", "eval"]
  (tmp_path / "sft" / "old.txt").write_text("x")
  calls.clear()
  pipeline.run(ws, "ppo")
  assert not calls  # Everything reused.
  ws.config.unlock()
  ws.config.overwrite = True
  pipeline.run(ws, "sft")
  assert calls == [("sft", False)]  # Redone from scratch; nothing else touched.
  calls.clear()
  pipeline.run(ws, "ppo")
  # Everything built on the old SFT policy is redone; pretraining and the RM's base model
  # (which reads only the data) are not.
  assert calls == [("label", False), ("rm", False), ("ppo", False), ("eval", False)]
  assert pipeline.changed_upstream({"ok": 1}, {"sft": "x"}) == []  # Records of older versions.


# Numerical faults and full disks (in-process, small model) ---------------------------------------


def _loop_cfg(**kw):
  base = dict(keep_checkpoints=3, checkpoint_every=1, log_every=1, on_nonfinite="stop")
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _scaled_step(state, batch, rng):
  """pretrain.train_step with the loss scaled per row by batch["scale"] (a NaN there poisons it)."""

  def loss_fn(params):
    loss, m = objectives.lm_loss_fn(params, state.apply_fn, batch)
    return loss * jnp.mean(batch["scale"]), m

  (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  import optax  # pylint: disable=import-outside-toplevel

  return state.apply_gradients(grads=grads), dict(m, loss=loss, grad_norm=optax.global_norm(grads))


def _small_run(
  tmp_path, *, skip=False, nan_step=None, steps=8, step_fn=_scaled_step, batches_hook=None, **cfg_kw
):
  cfg = helpers.tiny_model()
  mesh = sharding.make_mesh((1, 1, 1))
  rng = np.random.default_rng(0)
  arrays = helpers.lm_batch(rng, 4 * steps, 16, cfg.vocab_size)
  arrays["scale"] = np.ones((4 * steps,), np.float32)
  if nan_step is not None:
    arrays["scale"][4 * (nan_step - 1)] = np.nan  # A row of the batch of step `nan_step`.
  tx = train_state.make_optimizer(helpers.optim_config(1e-3), steps, skip)
  state, sh = train_state.create_train_state(
    cfg, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0)
  )
  batches = data_lib.make_batches(arrays, 4, seed=0, shuffle=False)
  if batches_hook is not None:
    batches = batches_hook(batches)
  return loop.train(
    name="t",
    stage_dir=str(tmp_path),
    state=state,
    state_shardings=sh,
    step_fn=step_fn,
    batches=batches,
    total_steps=steps,
    mesh=mesh,
    rules=sharding.DEFAULT_RULES,
    seed=1,
    loop_cfg=_loop_cfg(on_nonfinite="skip" if skip else "stop", **cfg_kw),
  )


def test_nan_loss_stops_before_the_bad_state_is_saved(tmp_path):
  with pytest.raises(loop.NonFiniteError) as e:
    _small_run(tmp_path, nan_step=5)
  msg = str(e.value)
  assert "at step 5" in msg and "loss=nan" in msg and "grad_norm=nan" in msg
  assert f"last good checkpoint is {tmp_path}/ckpt/4" in msg
  assert _steps(tmp_path / "ckpt")[-1] == 4  # Step 5 never written (checkpoint_every=1).
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert rows[-1]["step"] == 4


def test_nan_updates_skipped_and_counted(tmp_path):
  state, rows = _small_run(tmp_path, skip=True, nan_step=5)
  assert [r["skipped_updates"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1]
  assert np.isnan(rows[4]["loss"])
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))
  assert _steps(tmp_path / "ckpt")[-1] == 8


def test_nonfinite_state_with_finite_metrics_is_never_saved(tmp_path):
  def poison_params(state, batch, rng):
    new, m = _scaled_step(state, batch, rng)
    bad = jax.tree.map(lambda p: p * jnp.where(new.step >= 3, jnp.inf, 1.0), new.params)
    return new.replace(params=bad), m

  with pytest.raises(loop.NonFiniteError, match=r"state became non-finite at step 3.*ckpt/2"):
    _small_run(tmp_path, step_fn=poison_params)
  assert _steps(tmp_path / "ckpt")[-1] == 2


def test_full_disk_fails_the_save_and_keeps_the_last_checkpoint(tmp_path):
  """A real write failure: the file-size limit makes the checkpoint data write fail (EFBIG),
  as a full disk would (ENOSPC); both are reported as a full disk."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

  class FillDiskAt:
    def __init__(self, it):
      self.it, self.n = it, 0

    def __next__(self):
      self.n += 1
      if self.n == 4:  # Before step 4: checkpoints 1..3 are complete.
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))
      return next(self.it)

    def get_state(self):
      return self.it.get_state()

    def set_state(self, s):
      self.it.set_state(s)

  try:
    with pytest.raises(checkpoint.CheckpointError) as e:
      _small_run(tmp_path, batches_hook=FillDiskAt)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  msg = str(e.value)
  assert "disk looks full" in msg and f"{tmp_path}/ckpt" in msg, msg
  last = int(msg.split(f"last complete checkpoint is {tmp_path}/ckpt/")[1].split(";")[0])
  assert last in (2, 3) and _steps(tmp_path / "ckpt")[-1] == last  # 3 may still be in flight.
  # The last good checkpoint restores; the next run resumes from it and finishes.
  _, rows = _small_run(tmp_path)
  assert rows[-1]["step"] == 8 and [r["step"] for r in rows] == list(range(1, 9))


def test_half_written_and_corrupt_checkpoints_fall_back(tmp_path):
  mesh = sharding.make_mesh((1, 1, 1))
  tx = train_state.make_optimizer(helpers.optim_config(), 10)
  state, sh = train_state.create_train_state(
    helpers.tiny_model(), tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0)
  )
  d = tmp_path / "ckpt"
  ckpt = checkpoint.Checkpointer(str(d), keep=5)
  for s in (1, 2, 3):
    ckpt.save(s, state, {"s": s}, force=True)
  ckpt.close()
  (d / "3" / "meta" / "metadata").write_text("{truncated")  # Corrupt JSON.
  for f in glob.glob(str(d / "2" / "state" / "**" / "manifest.ocdbt"), recursive=True):
    os.remove(f)  # Half-written array store.
  (d / "4.orbax-checkpoint-tmp" / "state").mkdir(parents=True)  # Killed mid-write.
  ckpt = checkpoint.Checkpointer(str(d), keep=5)
  assert not (d / "4.orbax-checkpoint-tmp").exists()  # Cleaned when reopened.
  step, _, meta = ckpt.restore(checkpoint.abstract_like(state, sh))
  assert step == 1 and meta == {"s": 1}
  assert ckpt.all_steps() == [1]
  assert len(os.listdir(tmp_path / "ckpt_damaged")) == 2
  assert ckpt.save(2, state, {"s": 2}, force=True)  # The damaged steps can be written again.
  ckpt.close()


def test_print_config_shows_the_resolved_run_and_trains_nothing(tmp_path):
  """One readable file per run: every section of the chain, with the overrides applied."""
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.main",
      "--config=configs/ppo.py:tiny",
      "--config.ppo.kl_coef=0.05",
      f"--workdir={tmp_path}",
      "--print_config",
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 0, p.stderr
  for section in ("model:", "sft:", "rm:", "ppo:", "eval:", "sharding:", "rules:"):
    assert f"\n{section}" in p.stdout or f"\n  {section}" in p.stdout, section
  assert "kl_coef: 0.05" in p.stdout
  assert os.listdir(tmp_path) == []
