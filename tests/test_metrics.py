"""MetricsWriter (JSONL + TensorBoard), truncate on resume, Progress, plots."""
import io
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lrjax import metrics, plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(workdir):
  with open(os.path.join(workdir, metrics.METRICS_FILE)) as f:
    return [json.loads(l) for l in f]


def test_write_converts_scalars_and_nan(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  w.write("sft", np.int64(3), {"train/loss": jnp.float32(1.5), "train/acc": np.array([0.25]),
                               "train/n": 4, "eval/kl": float("nan"), "eval/x": float("inf")})
  lines = _lines(tmp_path)
  assert lines == [{"phase": "sft", "step": 3, "train/loss": 1.5, "train/acc": 0.25, "train/n": 4.0,
                    "eval/kl": None, "eval/x": None}]
  assert isinstance(lines[0]["train/n"], float)
  rec = metrics.read_metrics(str(tmp_path))[0]
  assert math.isnan(rec["eval/kl"]) and rec["train/loss"] == 1.5
  with pytest.raises(TypeError, match="train/bad"):
    w.write("sft", 4, {"train/bad": np.ones(3)})
  with pytest.raises(ValueError, match="reserved"):
    w.write("sft", 4, {"step": 1.0})


def test_tensorboard_events_per_phase(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path))
  w.write("sft", 1, {"train/loss": 2.0})
  w.write("rl", 1, {"train/reward": 0.5})
  w.close()
  for phase in ("sft", "rl"):
    files = os.listdir(tmp_path / "tb" / phase)
    assert any(f.startswith("events.out.tfevents") for f in files), files


def _fill(w):
  for s in (1, 2, 3, 4):
    w.write("sft", s, {"train/loss": float(s)})
  for s in (1, 2, 3):
    w.write("rl", s, {"train/reward": float(s)})
  for s in (1, 2):
    w.write("dpo", s, {"train/x": float(s)})


def test_truncate_drops_later_steps_and_later_phases(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path))
  _fill(w)
  with open(tmp_path / metrics.METRICS_FILE, "a") as f:
    f.write('{"phase": "rl", "st')  # a line cut by a kill
  w = metrics.MetricsWriter(str(tmp_path))
  w.truncate("rl", 2)
  assert [(r["phase"], r["step"]) for r in _lines(tmp_path)] == [
      ("sft", 1), ("sft", 2), ("sft", 3), ("sft", 4), ("rl", 1), ("rl", 2)]
  assert not (tmp_path / "tb" / "dpo").exists()  # later phase's events deleted
  w.write("rl", 3, {"train/reward": 30.0})
  assert metrics.last(str(tmp_path), "train/reward") == 30.0
  w.truncate("sft", 2)  # resuming sft: drops its later steps and every rl line
  assert [(r["phase"], r["step"]) for r in _lines(tmp_path)] == [("sft", 1), ("sft", 2)]
  w.truncate("nope", 0)  # unknown phase: nothing dropped
  assert len(_lines(tmp_path)) == 2
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # temp file replaced
  w.close()


def test_truncate_is_atomic(tmp_path, monkeypatch):
  w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  _fill(w)
  before = (tmp_path / metrics.METRICS_FILE).read_text()

  def boom(*args):
    raise OSError("disk full")
  monkeypatch.setattr(metrics.os, "replace", boom)
  with pytest.raises(OSError):
    w.truncate("sft", 1)
  assert (tmp_path / metrics.METRICS_FILE).read_text() == before


def test_partial_line_then_write_keeps_records_parsable(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"phase": "sft", "step": 1, "a": 1.0}\n{"phase": "sft", "st')
  w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  w.write("sft", 2, {"a": 2.0})
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]


def test_last(tmp_path):
  assert metrics.last(str(tmp_path), "a") is None
  w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  w.write("sft", 1, {"eval/acc": 0.1})
  w.write("sft", 2, {"train/loss": 3.0})
  w.write("rl", 1, {"eval/acc": 0.7})
  assert metrics.last(str(tmp_path), "eval/acc") == 0.7
  assert metrics.last(str(tmp_path), "eval/acc", phase="sft") == 0.1
  assert metrics.last(str(tmp_path), "train/loss", phase="rl") is None


class _FakeTTY(io.StringIO):
  def isatty(self):
    return True


def test_progress_not_a_tty_prints_sparse_full_lines(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
  out = io.StringIO()
  p = metrics.Progress("rl", interval=10.0, stream=out)
  for step in range(1, 101):
    clock[0] = step * 0.5  # 2 steps/s: 50 s in all
    p.update(step, 100, reward=0.123456, kl=np.float32(1e-3))
  p.close()
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue()
  assert 5 <= len(lines) <= 7, lines  # first, every 10 s, last: not 100
  assert lines[0].startswith("rl 1/100")
  assert lines[-1].startswith("rl 100/100 2 it/s") and "reward=0.1235" in lines[-1] and "kl=0.001" in lines[-1]


def test_progress_tty_redraws_in_place(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
  out = _FakeTTY()
  p = metrics.Progress(stream=out)
  for step in range(1, 11):
    clock[0] += 0.01
    p.update(step, None, loss=1.0 / step)
  p.close()
  text = out.getvalue()
  assert text.count("\n") == 1 and text.endswith("\n")
  assert text.count("\r") == 2  # first draw, then the pending last update at close
  assert "10 " in text.split("\r")[-1] and "loss=0.1" in text


def _synthetic(workdir):
  w = metrics.MetricsWriter(str(workdir), tensorboard=False)
  for s in range(0, 50, 5):
    w.write("sft", s, {"train/loss": 3.0 / (s + 1), "eval/accuracy": s / 50})
  for s in range(0, 30, 5):
    w.write("rl", s, {"train/reward": s / 30, "eval/accuracy": 0.9, "kl": float("nan") if s == 5 else 0.1})


def test_plot_writes_one_png_per_group(tmp_path):
  _synthetic(tmp_path)
  paths = plot.plot_metrics(str(tmp_path))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["eval.png", "other.png", "train.png"]
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert plot.plot_metrics(str(tmp_path / "empty")) == []


def test_plot_cli(tmp_path):
  _synthetic(tmp_path)
  out = tmp_path / "pngs"
  proc = subprocess.run([sys.executable, "-m", "lrjax.plot", f"--workdir={tmp_path}", f"--out={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(os.listdir(out)) == ["eval.png", "other.png", "train.png"]


def test_tensorboard_does_not_import_torch(tmp_path):
  """tensorboardX imports torch when it is installed; a run logs floats and never
  pays for it (a fresh interpreter: this worker may have loaded torch already)."""
  import subprocess
  import sys
  code = ("import sys; from lrjax import metrics; "
          f"w = metrics.MetricsWriter({str(tmp_path)!r}); w.write('rl', 1, {{'a': 1.0}}); "
          "w.close(); print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False", out.stdout + out.stderr
  assert os.listdir(tmp_path / "tb" / "rl")
