"""Run metrics: a JSONL file, TensorBoard events and a console progress line.

    writer = MetricsWriter(workdir)
    writer.truncate("rl", restored_step)        # after a resume: one run on file
    writer.write("rl", step, {"train/reward": r, "eval/accuracy": acc})
    last(workdir, "eval/accuracy", phase="rl")

`<workdir>/metrics.jsonl` holds one JSON object per line,
`{"phase": "sft", "step": 100, "train/loss": 1.25, ...}`, flushed as written.
Values are Python floats; non-finite values (NaN, +-inf) are written as `null`
so the file is strict JSON, and `read_metrics` returns them as NaN. A phase is a
training stage (`sft`, `rl`) with its own step counter; evaluation results go in
the phase being trained, under `eval/` keys. TensorBoard events go to
`<workdir>/tb/<phase>/` with the phase's own step (one TensorBoard run per
phase). Only process 0 writes, so every host may call the writer.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping, TextIO

from absl import logging

METRICS_FILE = "metrics.jsonl"
_RESERVED = ("phase", "step")


def _to_float(name: str, value: Any) -> float:
  """A Python float from a number or a one-element numpy / jax array."""
  try:
    if hasattr(value, "item"):
      value = value.item()
    return float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"metric {name!r} is not a scalar number: {value!r}") from e


def _is_primary() -> bool:
  import jax  # deferred: reading and plotting metrics needs no JAX
  return jax.process_index() == 0


def say(text: str) -> None:
  """Prints a console line of the run: once per run (process 0), not once per host."""
  if _is_primary():
    print(text, flush=True)


def _summary_writer_class() -> type:
  """tensorboardX's `SummaryWriter`, imported without torch unless torch is loaded.

  tensorboardX imports torch at import time when it is installed (a second or
  more of CPU per run) only to accept torch tensors; lrjax logs Python floats.
  """
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard (tensorboardX)."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard = tensorboard
    self._active = _is_primary()
    self._tb: dict[str, Any] = {}
    self._purge_step: dict[str, int] = {}
    if self._active:
      os.makedirs(workdir, exist_ok=True)
      self._end_partial_line()

  def _end_partial_line(self) -> None:
    """A process killed mid-write leaves a line without newline: close it, so
    the next record starts a line (readers skip the unparsable fragment)."""
    if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
      with open(self.path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
          f.write(b"\n")

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one line `{"phase", "step", **metrics}` and logs it to TensorBoard."""
    if not self._active:
      return
    values = {}
    for k, v in metrics.items():
      if k in _RESERVED:
        raise ValueError(f"metric name {k!r} is reserved")
      values[k] = _to_float(k, v)
    record = {"phase": phase, "step": int(step),
              **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record, allow_nan=False) + "\n")
      f.flush()
    if self.tensorboard:
      tb = self._tb_writer(phase)
      for k, v in values.items():
        tb.add_scalar(k, v, int(step))
      tb.flush()

  def _tb_writer(self, phase: str) -> Any:
    if phase not in self._tb:
      self._tb[phase] = _summary_writer_class()(
          os.path.join(self.workdir, "tb", phase), purge_step=self._purge_step.pop(phase, None))
    return self._tb[phase]

  def truncate(self, phase: str, step: int) -> None:
    """Drops what a run resumed at `step` of `phase` will write again.

    Keeps lines of phases that first appear before `phase` in the file and
    lines of `phase` with step <= `step`; drops the rest (later steps, and
    every line of the phases after it) and unparsable lines. If `phase` is
    not in the file nothing is dropped. The file is replaced atomically.
    TensorBoard events of `phase` after `step` are purged (hidden) and the
    event dirs of later phases deleted.
    """
    if not self._active or not os.path.exists(self.path):
      return
    records = _read_records(self.path)
    order = list(dict.fromkeys(r["phase"] for r in records))
    if phase not in order:
      return
    later = order[order.index(phase) + 1:]
    keep = [r for r in records
            if r["phase"] not in later and (r["phase"] != phase or r["step"] <= step)]
    fd, tmp = tempfile.mkstemp(dir=self.workdir, prefix=".metrics.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      for r in keep:
        f.write(json.dumps(r, allow_nan=False) + "\n")
    os.replace(tmp, self.path)
    if len(keep) < len(records):
      logging.info("metrics: dropped %d lines after %s step %d", len(records) - len(keep), phase, step)
    for p in [phase, *later]:
      if p in self._tb:
        self._tb.pop(p).close()
    self._purge_step[phase] = int(step) + 1
    for p in later:
      shutil.rmtree(os.path.join(self.workdir, "tb", p), ignore_errors=True)

  def close(self) -> None:
    """Flushes and closes the TensorBoard writers."""
    for tb in self._tb.values():
      tb.close()
    self._tb.clear()


def _read_records(path: str) -> list[dict]:
  """Parsed lines (raw: non-finite values are None); skips unparsable ones."""
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        logging.warning("%s:%d: skipping an unparsable line", path, n)
        continue
      if isinstance(r, dict) and "phase" in r and "step" in r:
        out.append(r)
  return out


def read_metrics(workdir: str) -> list[dict]:
  """Every record of `<workdir>/metrics.jsonl` in file order (null -> NaN)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  return [{k: (math.nan if v is None and k not in _RESERVED else v) for k, v in r.items()}
          for r in _read_records(path)]


def last(workdir: str, key: str, phase: str | None = None) -> float | None:
  """The latest value of `key` (in `phase` if given), or None if never written."""
  for r in reversed(read_metrics(workdir)):
    if key in r and (phase is None or r["phase"] == phase):
      return r[key]
  return None


def _fmt(v: Any) -> str:
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


class Progress:
  """A console progress line on stderr.

  On a terminal the line is redrawn in place (`\\r`, at most every 0.1 s);
  otherwise (CI logs, files) one full line is printed every `interval` seconds
  and at the last step, so logs stay short.
  """

  def __init__(self, desc: str = "", interval: float = 30.0, stream: TextIO | None = None):
    self.desc = desc
    self.interval = interval
    self.stream = stream if stream is not None else sys.stderr
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self._start: tuple[float, int] | None = None
    self._last_print = -math.inf
    self._pending: str | None = None
    self._width = 0
    if stream is None and not _is_primary():  # one progress line per run, not per host
      self.stream, self.tty = open(os.devnull, "w"), False

  def _line(self, step: int, total: int | None, now: float, scalars: dict[str, Any]) -> str:
    parts = [self.desc] if self.desc else []
    parts.append(f"{step}/{total}" if total else f"{step}")
    t0, s0 = self._start
    if now > t0 and step > s0:
      rate = (step - s0) / (now - t0)
      parts.append(f"{rate:.3g} it/s")
      if total:
        eta = max(total - step, 0) / rate
        parts.append(f"eta {int(eta // 60)}:{int(eta % 60):02d}")
    parts += [f"{k}={_fmt(v)}" for k, v in scalars.items()]
    return " ".join(parts)

  def update(self, step: int, total: int | None = None, **scalars: Any) -> None:
    """Reports `step` of `total` with scalars such as reward=0.51, kl=1e-3."""
    now = time.monotonic()
    if self._start is None:
      self._start = (now, step)
    line = self._line(step, total, now, scalars)
    final = total is not None and step >= total
    if self.tty:
      if final or now - self._last_print >= 0.1:
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width, self._last_print, self._pending = len(line), now, None
      else:
        self._pending = line
    elif final or now - self._last_print >= self.interval:
      self.stream.write(line + "\n")
      self.stream.flush()
      self._last_print, self._pending = now, None
    else:
      self._pending = line

  def close(self) -> None:
    """Prints the last unprinted update and ends the line."""
    if self._pending is not None:
      self.stream.write(("\r" + self._pending.ljust(self._width)) if self.tty else self._pending + "\n")
    if self.tty and self._width:
      self.stream.write("\n")
    self.stream.flush()
    self._pending, self._width = None, 0
