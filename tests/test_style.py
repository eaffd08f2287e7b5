"""The code keeps one style: `ruff format` (2-space indent) and `ruff check`, settings in pyproject.toml."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args: str) -> subprocess.CompletedProcess:
  exe = shutil.which("ruff")
  cmd = [exe, *args] if exe else [sys.executable, "-m", "ruff", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
  "args", [("format", "--check", "."), ("check", ".")], ids=["format", "lint"]
)
def test_ruff_clean(args):
  out = _ruff(*args)
  assert out.returncode == 0, f"ruff {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
