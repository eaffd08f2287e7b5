"""Metrics to `<dir>/metrics.jsonl` (one object per logged step) and TensorBoard, plus progress."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from instructgpt_jax import multihost


def _to_python(v: Any) -> Any:
  if isinstance(v, (np.ndarray, np.generic)) or hasattr(v, "__array__"):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()
  return v


class MetricWriter:
  """Appends metrics to JSONL and TensorBoard event files under `logdir`.

  With `resume_step`, lines for later steps (written before a preemption, then redone) are
  dropped first, so the file reads like one uninterrupted run. With `write=False` (every process
  but the first of a multi-process run) nothing is written; `write` still returns the row.
  """

  def __init__(self, logdir: str, resume_step: int | None = None, write: bool = True):
    self.path = os.path.join(logdir, "metrics.jsonl")
    self._file = self._tb = None
    if not write:
      return
    os.makedirs(logdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      _truncate_after(self.path, resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      self._tb = SummaryWriter(os.path.join(logdir, "tensorboard"), flush_secs=30)
    except ImportError:  # TensorBoard output is optional; the JSONL file is the record.
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in metrics.items()})
    if self._file is None:
      return row
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
    return row

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  with open(path, encoding="utf-8") as f:
    rows = [line for line in f if line.strip()]
  keep = [line for line in rows if json.loads(line).get("step", 0) <= step]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(keep)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All rows of a metrics.jsonl file ([] when there is none yet)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


_HEADLINE = ["loss", "score", "kl", "accuracy", "ptx_loss", "eos_rate"]


class Progress:
  """A periodic log line: stage, step/total, steps per second, ETA and a few metrics (process 0
  prints it; the other processes of a multi-process run stay quiet)."""

  def __init__(
    self, name: str, total: int, start: int = 0, every_s: float = 10.0, unit: str = "step"
  ):
    self.name, self.total, self.start, self.unit = name, total, start, unit
    self.every_s = every_s
    self._t0 = self._last = time.perf_counter()
    self._printed = False
    self.done = start
    self.what = ""  # What is being done now, shown after the name (e.g. the policy sampled).

  def advance(self, n: int) -> None:
    """Counts `n` more units done (e.g. responses sampled) and reports like `update`."""
    self.done += n
    self.update(self.done)

  def update(
    self, step: int, metrics: Mapping[str, Any] | None = None, force: bool = False
  ) -> None:
    now = time.perf_counter()
    if not force and now - self._last < self.every_s and step < self.total:
      return
    if not multihost.is_main():
      return
    self._last = now
    done = step - self.start
    rate = done / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    shown = ""
    if metrics:
      # The headline metrics first, then the rest alphabetically, at most six.
      keys = sorted(
        metrics, key=lambda k: (k not in _HEADLINE, _HEADLINE.index(k) if k in _HEADLINE else 0, k)
      )[:6]
      shown = " ".join(f"{k}={_fmt(metrics[k])}" for k in keys)
    pct = 100.0 * step / max(self.total, 1)
    what = f" {self.what}:" if self.what else ""
    line = (
      f"[{self.name}]{what} {self.unit} {step:,}/{self.total:,} ({pct:.0f}%) "
      f"{rate:.2f} {self.unit}/s ETA {_fmt_time(eta)} {shown}"
    )
    print(line, file=sys.stderr, flush=True)


def _fmt(v: Any) -> str:
  v = _to_python(v)
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s" if m else f"{s}s"
