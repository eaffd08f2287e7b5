"""Odd input files, tried as a new user would: each is refused in one line that names the file
(or accepted, with a warning that counts what was dropped) before any stage starts."""

import json
import logging
import os
import subprocess
import sys

import pytest

from instructgpt_jax import data as data_lib
from instructgpt_jax import pipeline
from instructgpt_jax.workspace import Workspace
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = {"prompt": "write a poem", "response": "a poem", "user_id": "u1", "category": "generation"}


def _cmp(responses, ranking, user="u1", prompt="rank these"):
  return {"prompt": prompt, "responses": responses, "ranking": ranking, "user_id": user}


def _refused(tmp_path, key, path, stage="sft"):
  """pipeline.run's error for `config.data.<key> = path`; nothing may have been written."""
  config = helpers.config(stage)
  config.data[key] = str(path)
  ws = Workspace(config, str(tmp_path / "wd"))
  with pytest.raises(data_lib.DataError) as e:
    pipeline.run(ws, stage)
  assert os.listdir(ws.workdir) == [], os.listdir(ws.workdir)
  message = str(e.value)
  assert "\n" not in message and str(path) in message, message
  return message


def test_deeply_nested_json_names_the_line(tmp_path):
  path = tmp_path / "demos.jsonl"
  path.write_text(json.dumps(DEMO) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
  assert f"{path}:2: JSON nested too deeply to read" in _refused(
    tmp_path, "demonstrations_jsonl", path
  )


def test_a_directory_is_refused(tmp_path):
  assert "is a directory" in _refused(tmp_path, "demonstrations_jsonl", tmp_path)


def test_an_empty_file_is_refused(tmp_path):
  path = tmp_path / "demos.jsonl"
  path.write_text("")
  assert "is an empty file" in _refused(tmp_path, "demonstrations_jsonl", path)


def test_a_file_of_blank_lines_is_refused(tmp_path):
  path = tmp_path / "demos.jsonl"
  path.write_text("\n  \n\t\n")
  assert "holds only blank lines" in _refused(tmp_path, "demonstrations_jsonl", path)


def test_an_empty_comparisons_file_is_refused_before_any_stage(tmp_path):
  path = tmp_path / "cmp.jsonl"
  path.write_text("")
  assert "config.data.comparisons_jsonl" in _refused(tmp_path, "comparisons_jsonl", path, "rm")


def test_comparisons_all_tied_are_refused(tmp_path, caplog):
  path = tmp_path / "cmp.jsonl"
  rows = [_cmp(["a", "b", "c"], [1, 1, 1], user=f"u{i}", prompt=f"p{i}") for i in range(5)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with caplog.at_level(logging.WARNING):
    message = _refused(tmp_path, "comparisons_jsonl", path, "rm")
  assert "every comparison carries no signal" in message
  warnings = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
  assert warnings == [
    f"{path}: 5 comparisons dropped: every response has the same rank (no signal for the "
    "reward model)"
  ]


def test_pairs_without_signal_are_counted_and_dropped(tmp_path, caplog):
  path = tmp_path / "cmp.jsonl"
  rows = [
    _cmp(["same", "same", "other"], [0, 2, 1]),  # A repeated text: its copy goes.
    {"prompt": "p", "chosen": "yes", "rejected": "yes", "user_id": "u2"},  # Chosen = rejected.
    _cmp(["x", "y"], [0, 1]),
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with caplog.at_level(logging.WARNING):
    records = data_lib.read_jsonl(str(path), "comparisons", warn=True)
  assert [r["responses"] for r in records] == [["same", "other"], ["x", "y"]]
  assert records[0]["ranking"] == [0, 1]
  (line,) = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
  assert line == (
    f"{path}: 1 comparisons dropped: every response is the same text (e.g. chosen equals "
    "rejected); 1 responses dropped: the same text as another of their comparison (no signal "
    "for the reward model)"
  )


def test_a_byte_order_mark_is_accepted(tmp_path):
  path = tmp_path / "demos.jsonl"
  path.write_bytes("\ufeff".encode() + (json.dumps(DEMO) + "\n").encode())
  assert data_lib.read_jsonl(str(path), "demonstrations")[0]["prompt"] == DEMO["prompt"]
  data_lib.check_file(str(path), "config.data.demonstrations_jsonl", "demonstrations")


@pytest.mark.slow
def test_main_says_it_in_one_line_without_a_traceback(tmp_path):
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "instructgpt_jax.main",
      "--config=configs/sft.py:tiny",
      f"--workdir={tmp_path / 'wd'}",
      f"--config.data.demonstrations_jsonl={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert errors == [
    f"error: config.data.demonstrations_jsonl={tmp_path} is a directory; give the path of a "
    "JSONL file."
  ]
