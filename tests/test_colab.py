"""The quickstart notebook runs top to bottom on the tiny preset."""

import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # Every test here runs stages or processes.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _before_ppo(tiny_run, tmp_path) -> str:
  """A workdir holding the tiny run's finished stages before PPO (the notebooks reuse them)."""
  workdir = tmp_path / "run"
  shutil.copytree(
    tiny_run[0].workdir, workdir, ignore=shutil.ignore_patterns("ppo", "eval", "report*", "plots")
  )
  return str(workdir)


def test_quickstart_notebook_runs(tiny_run, tmp_path):
  """Top to bottom on tiny. The stages before PPO come from the tiny run (the notebook reuses
  finished stages, as a rerun would); PPO trains and the evaluation runs in the kernel."""
  nb = nbformat.read(os.path.join(ROOT, "colabs", "quickstart.ipynb"), as_version=4)
  params = nb.cells[1]
  assert 'PRESET = "small"' in params.source
  params.source = f'PRESET = "tiny"\nWORKDIR = {_before_ppo(tiny_run, tmp_path)!r}'
  os.environ.pop("MPLBACKEND", None)  # The kernel's inline backend renders the figures.
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}
  )
  client.execute()
  assert os.path.exists(tmp_path / "run" / "report.json")
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if "image/png" in o.get("data", {})
  ]
  assert len(images) >= 2


def test_ppo_step_by_step_notebook_runs(tiny_run, tmp_path):
  """The notebook that opens the PPO iteration runs on tiny; its rollout check holds and the
  update's metrics are finite. It starts from the tiny run's SFT policy and reward model (it
  reuses finished stages)."""
  nb = nbformat.read(os.path.join(ROOT, "colabs", "ppo_step_by_step.ipynb"), as_version=4)
  params = nb.cells[1]
  assert 'PRESET = "tiny"' in params.source
  params.source = f'PRESET = "tiny"\nWORKDIR = {_before_ppo(tiny_run, tmp_path)!r}'
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}
  )
  client.execute()
  # A cell's stdout may arrive in several chunks that split a line (print writes its pieces
  # one by one, and stderr's warnings come between): join its stdout chunks as they came.
  text = "\n".join(
    "".join(
      o.get("text", "")
      for o in c.get("outputs", [])
      if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    for c in nb.cells
    if c.cell_type == "code"
  )
  assert "reward = -beta * kl + score at the end: True" in text
  assert "response:" in text and "RM score:" in text
  last = [line for line in text.splitlines() if line.startswith("2 {")]
  assert last and "nan" not in last[0], text[-2000:]
