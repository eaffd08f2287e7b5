"""The quickstart notebook runs top to bottom on the tiny preset."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "colabs", "quickstart.ipynb"), as_version=4)
  params = nb.cells[1]
  assert 'PRESET = "small"' in params.source
  params.source = f'PRESET = "tiny"\nWORKDIR = {str(tmp_path / "run")!r}'
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
