"""Integration: every stage on the tiny preset, through the same entry point users run."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types

import matplotlib.image
import numpy as np
import pytest
from flax import traverse_util

from instructgpt_jax import data as data_lib
from instructgpt_jax import hf, inputs, loop, pipeline
from instructgpt_jax import metrics as metrics_lib
from instructgpt_jax.tools import upstream
from instructgpt_jax.workspace import Workspace, ppo_snapshot_stage, ppo_snapshot_steps
from tests import helpers

pytestmark = pytest.mark.slow  # Every test here runs stages or processes.

STAGE_DIRS = ("pretrain", "sft", "label", "rm_base", "rm", "ppo", "eval")


def tiny_config(**overrides):
  config = helpers.config("ppo")
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def test_every_stage_finishes_and_records(tiny_run):
  ws, summaries = tiny_run
  assert list(summaries) == list(STAGE_DIRS)
  for stage in STAGE_DIRS:
    assert loop.stage_done(ws.stage_dir(stage)) is not None, stage
  for stage in (
    "pretrain",
    "sft",
    "rm_base/pretrain",
    "rm_base/nlp",
    "rm_base/sft",
    "rm",
    "ppo/ppo",
    "ppo/ppo_ptx",
  ):
    rows = metrics_lib.read_metrics(os.path.join(ws.stage_dir(stage), "metrics.jsonl"))
    assert rows and all("step" in r and "loss" in r or "score" in r for r in rows), stage
    assert os.path.isdir(os.path.join(ws.stage_dir(stage), "tensorboard")), stage
  sft_rows = metrics_lib.read_metrics(os.path.join(ws.stage_dir("sft"), "metrics.jsonl"))
  assert np.isfinite(sft_rows[-1]["loss"])


def test_report_has_every_policy_and_metric(tiny_run):
  ws, _ = tiny_run
  with open(os.path.join(ws.workdir, "report.json")) as f:
    report = json.load(f)
  assert set(report["rm"]) >= {"accuracy", "labeler_agreement", "likelihood_baseline"}
  # Both are scored on the held-out comparisons (none when a tiny run has no held-out users).
  assert (report["rm"]["likelihood_baseline"] is None) == (report["rm"]["accuracy"] is None)
  best_of_n = {f"bon{n}_{by}" for n in (4, 16) for by in ("rm", "gold")}
  assert set(report["policies"]) == {
    "base",
    "base_fewshot",
    "rm_base",
    "rm_base_fewshot",
    "sft",
    "sft_t0.7",
    "ppo",
    "ppo_ptx",
    *best_of_n,
  }
  categories = {r["category"] for s in data_lib.SPLITS for r in ws.records("eval_prompts", s)}
  for name, row in report["policies"].items():
    for key in (
      "win_rate_vs_sft",
      "win_rate_vs_sft_se",
      "gold_score",
      "rm_score",
      "kl_vs_sft",
      "pretrain_loss",
      "hallucination_rate",
      "constraint_rate",
      "inappropriate_rate",
      "eos_rate",
      "per_category",
    ):
      assert key in row, (name, key)
    assert 0.0 <= row["win_rate_vs_sft"] <= 1.0
    assert 0.0 <= row["win_rate_vs_sft_se"] <= 0.5
    assert 0.0 <= row["inappropriate_rate"] <= 1.0  # The paper world judges it.
    assert set(row["per_category"]) <= categories
    assert sum(c["n"] for c in row["per_category"].values()) == report["num_prompts"]
    assert all(0.0 <= c["win_rate"] <= 1.0 for c in row["per_category"].values())
  rows = report["policies"]
  assert rows["sft"]["win_rate_vs_sft"] == 0.5 and rows["sft"]["win_rate_vs_sft_se"] == 0.0
  assert rows["sft"]["kl_vs_sft"] == 0.0
  assert rows["sft_t0.7"]["kl_vs_sft"] > 0.0
  # Rows made from SFT's parameters share its pretraining loss.
  for name in ("sft_t0.7", *best_of_n):
    assert rows[name]["pretrain_loss"] == rows["sft"]["pretrain_loss"], name
  for name in best_of_n:
    n = rows[name]["best_of_n"]
    assert rows[name]["kl_vs_sft"] == pytest.approx(np.log(n) - (n - 1) / n)
  # Best-of-n by the RM picks the highest reward of n samples: above SFT's own mean reward.
  assert rows["bon16_rm"]["rm_score"] >= rows["bon4_rm"]["rm_score"] > rows["sft"]["rm_score"]
  assert report["judged"] is True
  # The oracle picks the highest gold score among 16 samples, so it beats best-of-4's.
  assert rows["bon16_gold"]["gold_score"] >= rows["bon4_gold"]["gold_score"]
  assert rows["bon16_gold"]["gold_score"] >= rows["bon16_rm"]["gold_score"]
  assert report["settings"] == {
    "temperature": 1.0,
    "control_temperature": 0.7,
    "best_of_n": [4, 16],
  }


def test_comparisons_file_has_the_user_format(tiny_run):
  ws, _ = tiny_run
  with open(os.path.join(ws.stage_dir("label"), "comparisons.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows
  names = {inputs.source_name(*inputs.parse_source(s)) for s in ws.config.label.sources}
  for row in rows:
    assert set(row) == {"prompt", "responses", "ranking", "user_id", "sources"}
    assert 2 <= len(row["responses"]) <= 9 and len(row["ranking"]) == len(row["responses"])
    assert all(r.strip() for r in row["responses"])
    assert len(row["sources"]) == len(row["responses"]) and set(row["sources"]) <= names


def test_label_draws_responses_from_every_source(tiny_run):
  ws, summaries = tiny_run
  with open(os.path.join(ws.stage_dir("label"), "comparisons.jsonl")) as f:
    sources = [s for line in f for s in json.loads(line)["sources"]]
  counts = {name: sources.count(name) for name in set(sources)}
  assert set(counts) == {"sft:1.0", "sft:0.7", "base_fewshot:1.0"}, counts
  assert summaries["label"]["responses_by_source"] == counts
  # Weights 0.5 / 0.25 / 0.25: SFT at temperature 1 gives the most responses.
  assert max(counts, key=counts.get) == "sft:1.0"
  # The sources pass through the data layer to the RM's arrays.
  arrays = inputs.comparison_arrays(ws, "train")
  assert len(arrays["sources"]) == arrays["tokens"].shape[0]
  sft_only = inputs.ranks_among(arrays, "sft:1.0")
  assert ((sft_only >= 0) <= (arrays["ranks"] >= 0)).all() and (sft_only >= 0).any()


def test_rm_starts_from_rm_base_with_the_rm_shape(tiny_run):
  ws, summaries = tiny_run
  rm_lm, policy = ws.models.rm_trunk, ws.models.policy
  assert ws.config.rm.init_from == "rm_base" and summaries["rm"]["init_from"] == "rm_base"
  assert rm_lm.num_layers == policy.num_layers + 1  # tiny's rm.model: one more layer.
  base = summaries["rm_base"]
  assert base["pretrain_steps"] == ws.config.rm_base.steps and base["nlp_steps"] > 0
  assert np.isfinite(base["nlp_final_loss"]) and "nlp_skipped" not in base
  assert base["sft_steps"] > 0 and np.isfinite(base["sft_validation_loss"])  # Paper 3.5.
  rm_params = ws.load_params("rm", ws.models.reward)
  assert len([k for k in rm_params if k.startswith("layer")]) == rm_lm.num_layers, list(rm_params)
  # The value function is the RM's model (it starts from the RM's parameters).
  from instructgpt_jax import ppo  # pylint: disable=import-outside-toplevel

  s = ppo.make_settings(ws.config, ws.models, eos_id=1, pad_id=0)
  assert s.value_cfg == ws.models.reward != ws.models.policy


def test_sft_mixes_in_pretraining_rows(tiny_run):
  ws, summaries = tiny_run
  sft = summaries["sft"]
  mix = ws.config.sft.pretrain_mix
  assert mix > 0
  assert sft["pretrain_rows"] == round(sft["examples"] * mix / (1 - mix))


def test_nlp_tasks_hold_no_eval_prompt_or_user(tiny_run):
  ws, _ = tiny_run
  nlp = [r for s in ("train", "validation", "test") for r in ws.records("nlp_tasks", s)]
  evals = [r for s in ("train", "validation", "test") for r in ws.records("eval_prompts", s)]
  assert nlp and evals
  assert not {r["prompt"] for r in nlp} & {r["prompt"] for r in evals}
  assert not {r["user_id"] for r in nlp} & {r["user_id"] for r in evals}


def test_preference_pretraining_pairs_hold_no_eval_prompt_or_user(tiny_run):
  """The pairs are the pretraining text's train paragraphs only: no prompt of any prompt file
  and no user id of the eval prompts is in them."""
  from instructgpt_jax import preference_pretraining  # pylint: disable=import-outside-toplevel

  ws, _ = tiny_run
  arrays = preference_pretraining.comparison_arrays(ws, seed=0)
  n = arrays["tokens"].shape[0]
  assert n > 0 and arrays["tokens"].shape[1] == 3
  tok = ws.tokenizer()
  texts = {
    tok.decode([int(t) for t, m in zip(arrays["tokens"][i, k], arrays["mask"][i, k]) if m])
    for i in range(n)
    for k in range(3)
  }
  corpus = " ".join(r["text"] for r in ws.records("pretraining", "train"))
  prompts = {
    r["prompt"]
    for kind in ("eval_prompts", "prompts", "rm_prompts")
    for s in data_lib.SPLITS
    for r in ws.records(kind, s)
  }
  users = {r["user_id"] for s in data_lib.SPLITS for r in ws.records("eval_prompts", s)}
  assert prompts and users
  for text in texts:
    assert not any(p in text for p in prompts)
    assert not any(f" {u} " in f" {text} " for u in users)
  # Every original (rank 0) is the corpus's own text.
  originals = [
    tok.decode([int(t) for t, m in zip(arrays["tokens"][i, 0], arrays["mask"][i, 0]) if m])
    for i in range(min(n, 20))
  ]
  assert all(o.split(" ", 1)[-1][:20] in corpus for o in originals)


def test_rm_with_preference_pretraining_and_likelihood_term(tiny_run, tmp_path):
  """Both methods beyond the paper on: the corpus phase runs first in `rm/pmp`, the reward's
  learned scale is reported, and the demonstrations still score mean 0 under the full reward."""
  from instructgpt_jax import scoring  # pylint: disable=import-outside-toplevel

  ref, ref_summaries = tiny_run
  workdir = str(tmp_path / "rm_variants")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("rm", "ppo", "eval"))
  config = tiny_config(
    **{"rm.likelihood": "mean", "rm.likelihood_init": 0.5, "rm.comparisons_fraction": 0.5}
  )
  config.rm.pmp.steps = 3
  ws = Workspace(config, workdir)
  summary = pipeline.run(ws, "rm")["rm"]
  # Half of the comparisons, a fixed subset (the accuracy-against-data curve).
  assert summary["comparisons"] == round(0.5 * ref_summaries["rm"]["comparisons"])
  assert summary["likelihood"] == "mean" and summary["pmp_steps"] == 3
  assert summary["pmp_comparisons"] > 0
  assert loop.stage_done(ws.stage_dir("rm")) is not None
  assert os.path.isdir(os.path.join(ws.stage_dir("rm"), "pmp", "ckpt"))
  params = ws.load_reward_model()[0]
  assert float(params["likelihood_scale"]) == pytest.approx(summary["likelihood_scale"])
  assert float(params["likelihood_scale"]) != 0.5  # Learned.
  demos = inputs.sft_arrays(ws, "train")
  rewards = scoring.score_with(
    ws, scoring.reward_fn(ws, ws.models.reward), params, demos["tokens"], demos["mask"]
  )
  assert abs(float(np.mean(rewards))) < 1e-3
  # The curve's head-only selector: the reward less likelihood_scale x the mean response
  # log-prob under the RM's own tied LM head, computed here from the logits.
  from instructgpt_jax import evaluate  # pylint: disable=import-outside-toplevel

  P = ws.config.data.prompt_len
  tokens, mask = demos["tokens"][:6], demos["mask"][:6]
  enc = types.SimpleNamespace(tokens=tokens[:, :P], mask=mask[:, :P])
  response = np.stack([tokens[:, P:], mask[:, P:]])
  head = evaluate._head_reward(ws, [params], enc, response, 1)  # pylint: disable=protected-access
  lm_cfg = dataclasses.replace(ws.models.reward, head="lm", reward_likelihood="none")
  lp = np.asarray(helpers.token_logprobs(params, lm_cfg, tokens, mask))[:, P:]
  valid = (mask[:, P:] != 0) & (mask[:, P - 1 : -1] != 0)
  mean_lp = (lp * valid).sum(1) / valid.sum(1)
  np.testing.assert_allclose(
    head + float(params["likelihood_scale"]) * mean_lp, rewards[:6], atol=2e-4, rtol=1e-4
  )


def test_dpo_stage_trains_from_sft_and_joins_the_report(tiny_run, tmp_path):
  """configs/dpo.py on a finished workdir: DPO runs after SFT and the labels (no other stage
  reruns), and the evaluation reports it as a policy and as a point of the curve."""
  ref, _ = tiny_run
  workdir = str(tmp_path / "dpo")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("eval", "report*.json"))
  ws = Workspace(helpers.config("dpo"), workdir)
  summaries = pipeline.run(ws, "dpo")
  assert list(summaries) == ["pretrain", "sft", "label", "dpo", "eval"]
  dpo = summaries["dpo"]
  assert dpo["loss_type"] == "sigmoid" and dpo["steps"] > 0 and dpo["beta"] == 0.1
  params, sft = ws.load_params("dpo", ws.models.policy), ws.load_params("sft", ws.models.policy)
  assert not np.allclose(params["token_embed"]["embedding"], sft["token_embed"]["embedding"])
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["policies"]["dpo"]["win_rate_vs_sft"] is not None
  assert "ppo_ptx" in report["policies"]  # The workdir's other policies stay in the report.
  (point,) = report["overoptimization"]["dpo"]
  # 16 prompts: the KL estimate's sign is noise; the point must be a real measurement.
  assert point["step"] == dpo["steps"] and np.isfinite(point["kl"]) and 0 < point["gold"] <= 1


def test_rloo_estimator_trains_its_own_policy_and_joins_the_report(tiny_run, tmp_path):
  """--config.ppo.estimator=rloo on a finished workdir: the PPO stage trains rloo_ptx into
  ppo/rloo_ptx (no value updates), and the evaluation reports it and its curve."""
  ref, _ = tiny_run
  workdir = str(tmp_path / "rloo")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("ppo", "eval", "report*"))
  # Group of 2: the 8 prompts per rollout split over the tests' 8 devices.
  config = tiny_config(
    **{"ppo.estimator": "rloo", "ppo.group_size": 2, "ppo.variants": ("ppo_ptx",)}
  )
  ws = Workspace(config, workdir)
  summaries = pipeline.run(ws, "ppo")
  assert "rloo_ptx" in summaries["ppo"] and "ppo_ptx" not in summaries["ppo"]
  assert summaries["ppo"]["rloo_ptx"]["estimator"] == "rloo"
  rows = metrics_lib.read_metrics(os.path.join(ws.stage_dir("ppo"), "rloo_ptx", "metrics.jsonl"))
  assert rows and "vf_loss" not in rows[-1] and "ptx_loss" in rows[-1]
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["policies"]["rloo_ptx"]["win_rate_vs_sft"] is not None
  assert "ppo_ptx" not in report["policies"]
  assert [p["step"] for p in report["overoptimization"]["rloo_ptx"]] == ppo_snapshot_steps(
    ws.config.ppo
  )


def test_own_demonstrations_comparisons_and_eval_prompts_with_the_world_for_the_rest(
  tiny_run, tmp_path, capsys
):
  """Your demonstrations, comparisons and eval prompts; the world's pretraining text and PPO
  prompts: SFT trains on your demonstrations, the RM on your comparisons (nothing is labelled),
  and the evaluation, which cannot judge prompts of yours, reports the RM's score and the KL
  with no gold score or win rate, and the curve on the world's PPO prompts."""
  ref, ref_summaries = tiny_run
  own = tmp_path / "data"
  own.mkdir()
  with open(ref.jsonl("demonstrations"), encoding="utf-8") as f:
    (own / "demos.jsonl").write_text("".join(f.readlines()[:300]), encoding="utf-8")
  with open(ref.jsonl("eval_prompts"), encoding="utf-8") as f:
    (own / "eval.jsonl").write_text("".join(f.readlines()[:24]), encoding="utf-8")
  shutil.copy(os.path.join(ref.workdir, "label", "comparisons.jsonl"), own / "comparisons.jsonl")
  workdir = str(tmp_path / "run")
  # Pretraining stays; rm_base's last phase read the world's demonstrations, so it is redone.
  redo = ("sft", "label", "rm_base", "rm", "ppo", "eval", "report*", "data")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns(*redo))
  config = tiny_config(
    **{
      "data.demonstrations_jsonl": str(own / "demos.jsonl"),
      "data.comparisons_jsonl": str(own / "comparisons.jsonl"),
      "data.eval_prompts_jsonl": str(own / "eval.jsonl"),
      "ppo.variants": ("ppo_ptx",),
    }
  )
  ws = Workspace(config, workdir)
  assert ws.from_world("prompts") and not ws.from_world("demonstrations")
  summaries = pipeline.run(ws, "ppo")
  assert 0 < summaries["sft"]["examples"] < ref_summaries["sft"]["examples"]
  assert summaries["label"]["source"] == config.data.comparisons_jsonl
  assert summaries["rm"]["comparisons"] > 0
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["judged"] is False and 0 < report["num_prompts"] <= 24
  for name, row in report["policies"].items():
    assert np.isfinite(row["rm_score"]) and np.isfinite(row["kl_vs_sft"]), name
    assert "gold_score" not in row and "win_rate_vs_sft" not in row, name
  assert {"bon4_rm", "bon16_rm"} <= set(report["policies"]) and "bon4_gold" not in report[
    "policies"
  ]
  assert report["overoptimization"]["best_of_n_rm"]  # The world's PPO prompts have a gold score.
  assert "no gold score or judged win rate" in capsys.readouterr().out


def test_lora_in_every_policy_stage_saves_the_merged_model(tiny_run, tmp_path):
  """SFT, DPO and PPO-ptx with `<stage>.lora.rank=4` on a finished workdir: each saves a plain
  model in which only the adapted kernels moved from the model it started from (the embedding
  and the norms are that model's own), and PPO's kept snapshots are merged models too."""
  from instructgpt_jax import dpo, ppo, sft  # pylint: disable=import-outside-toplevel

  ref, _ = tiny_run
  workdir = str(tmp_path / "lora")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("ppo", "eval", "report*"))
  config = helpers.config("dpo")
  for section in (config.sft, config.dpo, config.ppo):
    section.lora.rank = 4
  config.ppo.variants = ("ppo_ptx",)
  ws = Workspace(config, workdir)
  cfg = ws.models.policy
  steps = (("sft", sft, "pretrain"), ("dpo", dpo, "sft"), ("ppo/ppo_ptx", ppo, "sft"))
  for stage, module, start in steps:
    if stage == "sft":
      shutil.rmtree(ws.stage_dir("sft"))
    summary = module.run(ws)
    before, after = ws.load_params(start, cfg), ws.load_params(stage, cfg)
    flat_b, flat_a = (traverse_util.flatten_dict(p) for p in (before, after))
    for path, value in flat_b.items():
      if path[-1] == "kernel" and path[-2] in config.sft.lora.targets:
        continue  # An adapted kernel.
      np.testing.assert_array_equal(flat_a[path], value, err_msg=f"{stage} {path}")
    wo = ("layer_1", "mlp", "wo", "kernel")
    assert not np.allclose(flat_a[wo], flat_b[wo]), stage
    if stage != "ppo/ppo_ptx":
      assert summary["lora_rank"] == 4
  # A kept snapshot loads as the policy's own shape (a plain model, not adapters).
  first = ppo_snapshot_stage("ppo_ptx", ppo_snapshot_steps(ws.config.ppo)[0])
  np.testing.assert_array_equal(
    ws.load_params(first, cfg)["token_embed"]["embedding"], before["token_embed"]["embedding"]
  )


def test_dropped_comparisons_are_one_readable_line(tiny_run, tmp_path, caplog):
  """Responses too long for data.response_len are counted in words, with the setting named."""
  ref, _ = tiny_run
  workdir = str(tmp_path / "short")
  stages = ("pretrain", "sft", "rm_base", "rm", "ppo", "eval", "report*")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns(*stages))
  config = helpers.config("rm")
  config.data.response_len = 6
  with caplog.at_level("WARNING"):
    inputs.comparison_arrays(Workspace(config, workdir), "train")
  (line,) = [r.getMessage() for r in caplog.records if "responses of" in r.getMessage()]
  assert (
    line.startswith("[comparisons/train] ") and "longer than 6 tokens (data.response_len)" in line
  )
  assert "{" not in line


def test_likelihood_baseline_matches_an_independent_count(tiny_run):
  ws, _ = tiny_run
  from instructgpt_jax import inputs, scoring  # pylint: disable=import-outside-toplevel

  cfg = ws.models.policy
  params = ws.load_params("sft", cfg)
  arrays = inputs.comparison_arrays(ws, "train")
  n, k, length = arrays["tokens"].shape
  lp = np.asarray(
    helpers.token_logprobs(
      params, cfg, arrays["tokens"].reshape(n * k, length), arrays["mask"].reshape(n * k, length)
    )
  )
  loglik = lp[:, ws.config.data.prompt_len :].sum(axis=1).reshape(n, k)
  right = total = 0
  for row_ll, ranks in zip(loglik, arrays["ranks"]):
    for i in range(k):
      for j in range(k):
        if ranks[i] >= 0 and ranks[j] >= 0 and ranks[i] < ranks[j]:
          right += row_ll[i] > row_ll[j]
          total += 1
  assert total > 0
  accuracy = scoring.pairwise_accuracy(ws, scoring.loglik_fn(ws, cfg), params, arrays)["accuracy"]
  assert accuracy == pytest.approx(right / total, abs=1e-6)


def test_rm_demonstrations_score_mean_zero(tiny_run):
  ws, _ = tiny_run
  from instructgpt_jax import inputs, scoring  # pylint: disable=import-outside-toplevel

  cfg = ws.models.reward
  params = ws.load_params("rm", cfg)
  demos = inputs.sft_arrays(ws, "train")
  rewards = scoring.score_with(
    ws, scoring.reward_fn(ws, cfg), params, demos["tokens"], demos["mask"]
  )
  assert abs(float(np.mean(rewards))) < 1e-3


def test_finished_stages_are_reused_not_overwritten(tiny_run):
  ws, _ = tiny_run
  done = os.path.join(ws.stage_dir("sft"), loop.DONE_FILE)
  before = os.path.getmtime(done)
  summaries = pipeline.run(Workspace(ws.config, ws.workdir), "sft")
  assert os.path.getmtime(done) == before
  assert summaries["sft"] == loop.stage_done(ws.stage_dir("sft"))


def test_rm_breakdown_covers_every_pair_with_a_gold_difference(tiny_run):
  ws, _ = tiny_run
  from instructgpt_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from instructgpt_jax import inputs
  from instructgpt_jax.tools import breakdown as rm_breakdown

  table = rm_breakdown.breakdown(ws, ["train"])  # Tiny has no held-out comparisons.
  world, d = ws.world(), ws.config.data
  expected = right = 0
  for rec in ws.records("comparisons", "train", path=inputs.comparisons_path(ws)):
    fits = set(
      data_lib.encode_sft(
        ws.tokenizer(),
        [rec["prompt"]] * len(rec["responses"]),
        rec["responses"],
        d.prompt_len,
        d.response_len,
      )["kept"]
    )
    gold = [world.gold_score(rec["prompt"], t) for t in rec["responses"]]
    for i in fits:
      for j in fits:
        if i < j and gold[i] != gold[j]:
          expected += 1
          order = (gold[i] - gold[j]) * (rec["ranking"][j] - rec["ranking"][i])
          right += 1.0 if order > 0 else 0.5 if order == 0 else 0.0
  assert expected > 0 and table["all"]["pairs"] == expected
  assert table["all"]["labelers"] == pytest.approx(right / expected)
  assert sum(row["pairs"] for group, row in table.items() if group != "all") == expected
  for row in table.values():
    assert all(0.0 <= row[j] <= 1.0 for j in rm_breakdown.JUDGES)

  # The command line writes the same table next to the RM.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.tools.breakdown",
      "--config=configs/rm.py:tiny",
      f"--workdir={ws.workdir}",
      "--splits=train",
    ],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  written = json.loads(open(os.path.join(ws.stage_dir("rm"), "breakdown.json")).read())
  assert written["all"]["pairs"] == expected and "reward_model" in p.stdout


def _export_hf(ws, stage: str, out: str) -> subprocess.CompletedProcess:
  """`python -m instructgpt_jax.tools.export_hf` of the tiny run's `stage` to `out`."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.tools.export_hf",
      "--config=configs/ppo.py:tiny",
      f"--workdir={ws.workdir}",
      f"--stage={stage}",
      f"--out={out}",
    ],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def test_export_hf_writes_the_rm_in_its_own_shape(tiny_run, tmp_path):
  """`export_hf --stage=rm` on a run whose RM is shaped unlike the policy (tiny's rm.model: one
  more layer) writes the RM's own shape, and transformers scores as the project's reward."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from instructgpt_jax import model as model_lib  # pylint: disable=import-outside-toplevel
  from instructgpt_jax import scoring  # pylint: disable=import-outside-toplevel

  ws, _ = tiny_run
  rm_cfg = ws.models.reward
  assert rm_cfg.num_layers != ws.models.policy.num_layers
  out = str(tmp_path / "rm_hf")
  _export_hf(ws, "rm", out)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert model.config.n_layer == rm_cfg.num_layers and model.config.num_labels == 1
  demos = inputs.sft_arrays(ws, "train")
  tokens, mask = demos["tokens"][:8], demos["mask"][:8]
  tokens = np.where(mask == 1, tokens, ws.tokenizer().pad_id)  # transformers finds the last
  ours = scoring.score_with(  # real token by the pad id.
    ws, scoring.reward_fn(ws, rm_cfg), ws.load_reward_model()[0], tokens, mask
  )
  with torch.no_grad():
    theirs = model(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(np.asarray(model_lib.positions_from_mask(mask))),
    ).logits[:, 0]
  # tiny is the "gpt" family: the head's bias is folded into ln_f, so the logit is the reward.
  np.testing.assert_allclose(theirs.numpy(), ours, atol=1e-4, rtol=1e-4)


def test_exported_policy_and_rm_run_in_transformers_as_in_the_project(tiny_run, tmp_path):
  """Issue 22, item 1: the PPO-ptx and SFT policies and the RM, exported, load with
  transformers' AutoTokenizer and AutoModelFor...; greedy `generate` writes the project's greedy
  samples (ids and text), the logits agree, and the RM scores as the project's reward (plus
  config.json's reward_bias, 0 for GPT-2), on the PPO-ptx policy's samples and on demonstrations
  given as text. The export CLI prints the directory and no library log."""
  import re  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from instructgpt_jax import model as model_lib  # pylint: disable=import-outside-toplevel
  from instructgpt_jax import sampling, scoring  # pylint: disable=import-outside-toplevel

  ws, _ = tiny_run
  ours_tok = ws.tokenizer()
  P, R = ws.config.data.prompt_len, ws.config.data.response_len
  prompts = [r["prompt"] for r in ws.records("prompts", "validation")][:8]
  enc = data_lib.encode_prompts(ours_tok, prompts, P)
  assert len(enc.kept) >= 4
  for stage in ("sft", "ppo/ppo_ptx"):  # The RM below scores the last one's samples.
    policy_dir = str(tmp_path / stage.replace("/", "_"))
    if stage == "sft":
      hf.export_stage(ws, stage, policy_dir)
    else:
      p = _export_hf(ws, stage, policy_dir)
      assert p.stdout.strip() == policy_dir
      assert "orbax" not in p.stderr and not re.search(r"^[IW]\d{4} ", p.stderr, re.M), p.stderr
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    cfg = ws.models.for_stage(stage)
    params = ws.load_params(stage, cfg)
    out = sampling.generate_batched(
      params, cfg, enc.tokens, enc.mask, jax.random.key(0), ws.mesh, ws.rules, batch_size=8,
      max_new_tokens=R, eos_id=ours_tok.eos_id, pad_id=ours_tok.pad_id, greedy=True,
    )  # fmt: skip
    for row, k in enumerate(enc.kept):
      ids = tok(prompts[k], return_tensors="pt").input_ids  # BOS + prompt, as encode_prompts.
      assert ids[0].tolist() == enc.tokens[row][enc.mask[row] == 1].tolist()
      with torch.no_grad():
        theirs = policy.generate(ids, max_new_tokens=R, do_sample=False)[0, ids.shape[1] :]
      ours = out["tokens"][row, P:][out["response_mask"][row, P:] == 1]
      assert theirs.tolist() == ours.tolist(), (stage, prompts[k])
      text = tok.decode(theirs, skip_special_tokens=True)
      assert text == ours_tok.decode(ours), (stage, prompts[k], text)
    # Teacher-forced on the samples, the two models' logits agree on every real token.
    tokens, mask = out["tokens"], out["mask"]
    positions = np.asarray(model_lib.positions_from_mask(mask))
    with torch.no_grad():
      theirs = policy(
        input_ids=torch.tensor(tokens, dtype=torch.long),
        attention_mask=torch.tensor(mask),
        position_ids=torch.tensor(positions),
      ).logits.numpy()
    ours = np.asarray(helpers.forward(cfg, jax.device_get(params), tokens, mask))
    real = mask == 1
    assert np.abs(theirs - ours)[real].max() < 1e-4 * max(1.0, np.abs(ours[real]).max())

  # The RM: our greedy samples as ids (right-padded with the pad id, as transformers reads the
  # score at the last token that is not pad), demonstrations as text through the tokenizer.
  rm_cfg = ws.models.reward
  rm_dir = hf.export_stage(ws, "rm", str(tmp_path / "rm"))
  rm = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
  assert transformers.AutoTokenizer.from_pretrained(rm_dir).pad_token_id == ours_tok.pad_id
  bias = json.load(open(os.path.join(rm_dir, "config.json"))).get("reward_bias", 0.0)
  reward = lambda t, m: scoring.score_with(
    ws, scoring.reward_fn(ws, rm_cfg), ws.load_reward_model()[0], t, m
  )
  rows = [t[m == 1] for t, m in zip(tokens, mask)]
  width = max(len(r) for r in rows)
  padded = np.full((len(rows), width), ours_tok.pad_id, np.int64)
  for i, r in enumerate(rows):
    padded[i, : len(r)] = r
  with torch.no_grad():
    scores = rm(
      input_ids=torch.tensor(padded), attention_mask=torch.tensor(padded != ours_tok.pad_id)
    ).logits
  np.testing.assert_allclose(scores[:, 0].numpy() + bias, reward(tokens, mask), atol=1e-4)
  demos = ws.records("demonstrations", "validation")[:8]
  batch = tok(
    [d["prompt"] for d in demos], [d["response"] for d in demos], padding=True, return_tensors="pt"
  )
  sft = data_lib.encode_sft(
    ours_tok, [d["prompt"] for d in demos], [d["response"] for d in demos], P, R
  )
  assert len(sft["kept"]) >= 4
  with torch.no_grad():
    scores = rm(**batch).logits[:, 0].numpy()[sft["kept"]]
  np.testing.assert_allclose(scores + bias, reward(sft["tokens"], sft["mask"]), atol=1e-4)


def test_unknown_stage_lists_valid_ones():
  with pytest.raises(ValueError, match="valid stages"):
    pipeline.stages_to_run("rlhf")


def test_rm_ensemble_trains_each_member_resumes_and_scores_the_mean(tiny_run, tmp_path):
  """`rm.ensemble=2`: two members from their own seeds, each centred on the demonstrations; a
  rerun after a crash reuses the finished member; the ensemble's accuracy is the mean reward's,
  checked against the batched on-device pairwise accuracy."""
  from instructgpt_jax import rm, scoring  # pylint: disable=import-outside-toplevel

  ref, _ = tiny_run
  workdir = str(tmp_path / "ensemble")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("rm", "ppo", "eval"))
  ws = Workspace(tiny_config(**{"rm.ensemble": 2}), workdir)
  summary = pipeline.run(ws, "rm")["rm"]
  assert summary["ensemble"] == 2
  member_dir = ws.stage_dir("rm/member_1")
  record = loop.stage_done(member_dir)
  assert record["seed"] == ws.config.seed + rm.MEMBER_SEED_STRIDE
  assert [m["seed"] for m in summary["members"]] == [ws.config.seed, record["seed"]]
  members = ws.load_reward_model()
  assert len(members) == 2
  cfg = ws.models.reward
  reward = scoring.reward_fn(ws, cfg)
  demos = inputs.sft_arrays(ws, "train")
  for params in members:
    assert (
      abs(float(np.mean(scoring.score_with(ws, reward, params, demos["tokens"], demos["mask"]))))
      < 1e-3
    )
  heads = [np.asarray(p[rm.SCALAR_HEAD]["kernel"]) for p in members]
  assert not np.allclose(heads[0], heads[1])  # Different seeds, different models.

  # Accuracy of the mean reward and of each member, on the train split (tiny has no held-out).
  acc = rm.held_out_accuracy(ws, members, splits=("train",))
  pairs = {
    k: v
    for k, v in inputs.comparison_arrays(ws, "train").items()
    if k in ("tokens", "mask", "ranks")
  }
  expected = scoring.pairwise_accuracy(ws, scoring.ensemble_reward_fn(ws, cfg), members, pairs)
  assert acc["heldout"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
  assert acc["heldout"]["pairs"] == expected["pairs"]
  for got, params in zip(acc["members"], members):
    alone = scoring.pairwise_accuracy(ws, reward, params, pairs)["accuracy"]
    assert got["heldout"]["accuracy"] == pytest.approx(alone, abs=1e-6)

  # A crash after member 1 finished, before the stage did: the rerun reads member 1 back.
  os.remove(os.path.join(ws.stage_dir("rm"), loop.DONE_FILE))
  written = os.path.getmtime(os.path.join(member_dir, loop.DONE_FILE))
  again = pipeline.run(Workspace(ws.config, workdir), "rm")["rm"]
  assert os.path.getmtime(os.path.join(member_dir, loop.DONE_FILE)) == written
  reread = ws.load_reward_model()
  np.testing.assert_array_equal(np.asarray(reread[1][rm.SCALAR_HEAD]["kernel"]), heads[1])
  assert again["ensemble"] == 2


def test_eval_on_ppo_heldout_prompts_leaves_the_report_alone(tiny_run, tmp_path):
  """`eval.prompts=ppo_heldout`: the PPO pool's validation and test prompts (never the report's
  eval prompts), written to its own file; the report stays as it was."""
  ref, _ = tiny_run
  workdir = str(tmp_path / "validation")
  shutil.copytree(ref.workdir, workdir, ignore=shutil.ignore_patterns("eval"))
  report_before = open(os.path.join(workdir, "report.json")).read()
  ws = Workspace(tiny_config(**{"eval.prompts": "ppo_heldout", "eval.best_of_n": ()}), workdir)
  pipeline.run(ws, "eval")
  assert open(os.path.join(workdir, "report.json")).read() == report_before
  with open(os.path.join(workdir, "report_ppo_heldout.json")) as f:
    report = json.load(f)
  heldout = {r["prompt"] for s in ("validation", "test") for r in ws.records("prompts", s)}
  evals = {r["prompt"] for s in data_lib.SPLITS for r in ws.records("eval_prompts", s)}
  asked = {ex["prompt"] for ex in report["examples"]["sft"]}
  assert report["prompts"] == "ppo_heldout" and asked and asked <= heldout - evals
  # Prompts too long for the few-shot prefix are dropped (with a warning), as for the report.
  assert 0 < report["num_prompts"] <= min(len(heldout), ws.config.eval.num_prompts)
  assert "ppo_ptx" in report["policies"]

  bad = Workspace(tiny_config(**{"eval.prompts": "test", "eval.best_of_n": ()}), workdir)
  with pytest.raises(ValueError, match="ppo_heldout"):
    pipeline.stage_module("eval").check_settings(bad)


def test_overoptimization_curve_and_plots(tiny_run):
  ws, _ = tiny_run
  with open(os.path.join(ws.workdir, "report.json")) as f:
    curves = json.load(f)["overoptimization"]
  bon = curves["best_of_n_rm"]
  assert [p["n"] for p in bon] == list(ws.config.eval.curve_best_of_n)
  assert bon[0]["kl"] == 0.0 and all(b["kl"] > a["kl"] for a, b in zip(bon, bon[1:]))
  # Best-of-n by the RM picks the highest reward, so its mean reward never falls with n.
  assert all(b["rm"] >= a["rm"] - 1e-6 for a, b in zip(bon, bon[1:]))
  # The no-feedback control (SFT's own likelihood) picks from the same samples: equal at n = 1.
  control = curves["best_of_n_sft_likelihood"]
  assert [p["n"] for p in control] == [p["n"] for p in bon]
  assert control[0]["gold"] == bon[0]["gold"] and control[0]["rm"] == bon[0]["rm"]
  steps = ppo_snapshot_steps(ws.config.ppo)
  for variant in ws.config.ppo.variants:
    assert [p["step"] for p in curves[variant]] == steps
    assert all(0.0 <= p["gold"] <= 1.0 and p["sqrt_kl"] >= 0.0 for p in curves[variant])
  for name in ("overoptimization", "win_rates", "pretrain", "sft", "rm", "ppo_ppo", "ppo_ppo_ptx"):
    path = os.path.join(ws.workdir, "plots", f"{name}.png")
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 200 <= height <= 2000 and 300 <= width <= 3000, (path, height, width)


def test_upstream_probe_reports_every_rate(tiny_run):
  ws, _ = tiny_run
  result = upstream.probe(ws, 8)
  assert set(result["policies"]) == {"base", "sft", "sft_t0.7"}
  for name, row in result["policies"].items():
    assert 0.0 <= row["nonword_rate"] <= 1.0 and 0.0 <= row["gold_score"] <= 1.0, name
    assert len(result["samples"][name]) == result["num_prompts"] <= 8
  assert result["labeler_agreement"] == loop.stage_done(ws.stage_dir("label"))["labeler_agreement"]
