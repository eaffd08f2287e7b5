"""Settings: a bad value of any stage is refused in one line before any stage starts, and a
finished stage knows the settings it was built with (settings.py, pipeline.plan)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from instructgpt_jax import pipeline, settings, sharding
from instructgpt_jax.workspace import Workspace
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (stage run, key, bad value, what the message says): one of each kind per stage, ranges,
# divisibility (the tests' mesh has 8 data-parallel shards), lengths and names.
BAD = [
  ("pretrain", "pretrain.steps", 0, "config.pretrain.steps=0: must be a number > 0"),
  ("pretrain", "pretrain.optim.lr", -1e-3, "config.pretrain.optim.lr=-0.001: must be a number > 0"),
  ("pretrain", "pretrain.batch_size", 12, "must be a positive multiple of 8"),
  ("pretrain", "model.init", "foo:/x", 'valid: "" (the pipeline\'s own base model) or "hf:/dir"'),
  ("pretrain", "data.seq_len", 500, "config.data.seq_len=500: must be <= model.max_len=192"),
  ("sft", "sft.dropout", 1.0, "config.sft.dropout=1.0: must be in [0, 1)"),
  ("sft", "sft.optim.schedule", "cosin", "valid: ['cosine', 'constant', 'linear']"),
  ("sft", "data.response_len", 160, "must fit the policy model's context (model.max_len=192)"),
  ("sft", "sft.lora.rank", -2, "sft.lora.rank=-2 must be >= 0"),
  ("label", "label.k_max", 12, "need 2 <= k_min <= k_max <= 9"),
  ("label", "label.sources", ("sft:0",), "a temperature > 0"),
  ("rm_base", "rm_base.nlp.prompt_len", 170, "must fit the reward model's context"),
  ("rm_base", "rm_base.sft.optim.b2", 1.0, "config.rm_base.sft.optim.b2=1.0: must be in [0, 1)"),
  ("rm", "rm.comparisons_fraction", 0.0, "config.rm.comparisons_fraction=0.0: must be in (0, 1]"),
  ("rm", "rm.batch_size", 4, "config.rm.batch_size=4: must be a positive multiple of 8"),
  ("rm", "rm.on_nonfinite", "ignore", "valid: ['stop', 'skip']"),
  ("ppo", "ppo.kl_coef", -1.0, "config.ppo.kl_coef=-1.0: must be a number >= 0"),
  ("ppo", "ppo.clip_eps", 1.5, "config.ppo.clip_eps=1.5: must be in (0, 1)"),
  ("ppo", "ppo.temperature", 0.0, "config.ppo.temperature=0.0: must be a number > 0"),
  ("ppo", "ppo.rollout_batch_size", 12, "must be a positive multiple of 8 (ppo.minibatch_size=8)"),
  ("ppo", "ppo.estimator", "reinforce", "valid: ['gae', 'rloo', 'grpo']"),
  ("ppo", "ppo.variants", ("ppo", "ppo_ptxx"), "every entry must be one of ['ppo', 'ppo_ptx']"),
  ("ppo", "eval.temperature", 0.0, "config.eval.temperature=0.0: must be a number > 0"),
  ("ppo", "eval.best_of_n", (4, 0), "every entry must be an integer >= 1"),
  ("ppo", "eval.prompts", "test", "valid: ['eval', 'ppo_heldout']"),
  ("dpo", "dpo.beta", 0.0, "config.dpo.beta=0.0: must be a number > 0"),
  ("dpo", "dpo.loss", "kto", "valid: ['sigmoid', 'ipo']"),
]


def _set(config, key, value):
  *path, leaf = key.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value


@pytest.mark.parametrize("stage,key,value,message", BAD, ids=[b[1] for b in BAD])
def test_a_bad_value_is_refused_before_any_stage_starts(tmp_path, stage, key, value, message):
  config = helpers.config(stage)
  _set(config, key, value)
  ws = Workspace(config, str(tmp_path / "wd"))
  t0 = time.perf_counter()
  with pytest.raises(settings.SettingError) as e:
    pipeline.run(ws, stage)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert time.perf_counter() - t0 < 10
  # Nothing ran: no stage directory, no world, no tokenizer.
  assert sorted(os.listdir(ws.workdir)) == [], os.listdir(ws.workdir)


@pytest.mark.slow
def test_main_refuses_a_bad_value_in_one_line(tmp_path):
  """The whole chain's last stage is checked before the first one: exit 1, one line, no trace."""
  t0 = time.perf_counter()
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.main",
      "--config=configs/ppo.py:tiny",
      f"--workdir={tmp_path / 'wd'}",
      "--config.ppo.kl_coef=-1",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: config.ppo.kl_coef=-1.0: must be a number >= 0."], p.stderr
  assert "[pretrain] running" not in p.stdout
  assert not (tmp_path / "wd" / "pretrain").exists()
  assert time.perf_counter() - t0 < 60
  # An unknown preset: one line, not absl's message with the config file's traceback.
  p = subprocess.run(
    [sys.executable, "-m", "instructgpt_jax.main", "--config=configs/ppo.py:tinyy"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  assert p.stderr.startswith("error: --config=configs/ppo.py:tinyy: Unknown preset 'tinyy'")


def test_recorded_settings_leave_out_what_cannot_change_a_result():
  config = helpers.config("ppo")
  recorded = pipeline.stage_settings(config, "sft")
  assert recorded["sft.epochs"] == config.sft.epochs and recorded["seed"] == config.seed
  assert "sft.log_every" not in recorded and "sft.checkpoint_every" not in recorded
  assert not any(k.startswith(("ppo.", "rm.", "sharding.")) for k in recorded)
  assert "compilation_cache" not in recorded and "data.prompts_jsonl" not in recorded
  assert "data.demonstrations_jsonl" in recorded  # A file SFT reads.
  changed = dict(recorded, **{"sft.epochs": 9})
  assert settings.differences(recorded, changed) == {"sft.epochs": (config.sft.epochs, 9)}
  assert settings.differences(None, changed) == {}  # Older workdirs are trusted.
  assert settings.describe({"sft.epochs": (1, 2)}) == "sft.epochs=1 (now 2)"


def _fake_runs(monkeypatch, calls):
  """Stages that record that they ran (and, for ppo, which policies it found finished)."""

  def runner(name):
    def run(ws):
      calls.append(name)
      return {"ok": 1}

    return run

  monkeypatch.setattr(pipeline, "_runners", lambda: {s: runner(s) for s in pipeline.STAGES})


def test_a_changed_setting_of_a_finished_stage(tmp_path, monkeypatch):
  calls = []
  _fake_runs(monkeypatch, calls)
  mesh = sharding.make_mesh((1, 1, 1))
  pipeline.run(Workspace(helpers.config("ppo"), str(tmp_path), mesh=mesh), "ppo")
  calls.clear()

  def run(**changes):
    config = helpers.config("ppo")
    for key, value in changes.items():
      _set(config, key.replace("__", "."), value)
    return pipeline.run(Workspace(config, str(tmp_path), mesh=mesh), "ppo")

  # Logging and checkpoint cadence change nothing: every stage is reused.
  run(sft__log_every=3, sft__checkpoint_every=7, rm__log_every=2)
  assert calls == []
  # A setting that shapes SFT: refused in one line naming the key and both values, nothing run.
  with pytest.raises(settings.SettingError) as e:
    run(sft__epochs=3)
  assert "[sft] sft.epochs=1 (now 3)" in str(e.value) and "--config.overwrite=True" in str(e.value)
  assert calls == []
  # With overwrite: SFT is redone, and so is everything built on it (rm_base reads only data).
  run(sft__epochs=3, overwrite=True)
  assert calls == ["sft", "label", "rm", "ppo", "eval"]
  calls.clear()
  # Another estimator only adds policies: ppo is extended in place, eval re-evaluates.
  (tmp_path / "ppo" / "kept.txt").write_text("x")
  run(sft__epochs=3, ppo__estimator="rloo")
  assert calls == ["ppo", "eval"] and (tmp_path / "ppo" / "kept.txt").exists()
  calls.clear()
  # A changed eval setting re-evaluates in place (its saved policies carry fingerprints).
  (tmp_path / "eval" / "kept.txt").write_text("x")
  run(sft__epochs=3, ppo__estimator="rloo", eval__num_prompts=16)
  assert calls == ["eval"] and (tmp_path / "eval" / "kept.txt").exists()


@pytest.mark.slow
def test_rloo_then_grpo_in_one_workdir_reports_both(tiny_run, tmp_path):
  """Another estimator on a finished workdir trains its policies beside the finished ones and
  the report holds every row; the finished policies' samples are reused, not redrawn."""
  ref, _ = tiny_run
  workdir = tmp_path / "wd"
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("jax_cache"))

  def run(estimator):
    config = helpers.config("ppo")
    config.ppo.estimator = estimator
    config.ppo.variants = ("ppo",)
    config.ppo.group_size = 2  # 16 / 2 prompts per rollout split over the 8 devices.
    ws = Workspace(config, str(workdir))
    pipeline.run(ws, "ppo")
    with open(workdir / "report.json", encoding="utf-8") as f:
      return json.load(f)["policies"]

  saved = (workdir / "eval" / "policies" / "ppo_ptx.json").read_text()
  rows = run("rloo")
  assert {"ppo", "ppo_ptx", "rloo"} <= set(rows) and "grpo" not in rows
  rows = run("grpo")
  assert {"ppo", "ppo_ptx", "rloo", "grpo"} <= set(rows)
  assert (workdir / "eval" / "policies" / "ppo_ptx.json").read_text() == saved
  done = json.loads((workdir / "ppo" / "DONE.json").read_text())
  assert done["settings"]["ppo.estimator"] == "grpo"
  # Back to rloo with another group size: the finished rloo policy was trained with 2, so it
  # is not reused as if it were the new one (one device, so that 16 / 4 prompts split).
  config = helpers.config("ppo")
  config.ppo.update(dict(estimator="rloo", variants=("ppo",), group_size=4))
  ws = Workspace(config, str(workdir), mesh=sharding.make_mesh((1, 1, 1)))
  with pytest.raises(settings.SettingError, match=r"\[ppo\] ppo/rloo: ppo.group_size=2 \(now 4\)"):
    pipeline.run(ws, "ppo")
