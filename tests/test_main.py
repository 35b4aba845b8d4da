"""The entrypoint end to end: config errors, SIGKILL + resume = uninterrupted run."""
import json
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

from tests import e2e_runs as e2e
from tests import forkserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run small enough for a test: 1-layer tiny model, short SFT, greedy eval on 32 problems.
FAST = ["--config.sft.steps=24", "--config.sft.batch_size=16", "--config.sft.log_every=4",
        "--config.sft.eval_every=12", "--config.checkpoint.every=4", "--config.eval.num_problems=32",
        "--config.eval.batch_size=32", "--config.eval.sampled=False", "--config.eval.max_new=24",
        "--config.data.train_size=2000", "--config.sft.warmup_steps=2"]


def _main(workdir, *args, wait=True, cwd=ROOT, devices=1):
  """lrjax.main on configs/sft.py with FAST; workdir None = lrjax.main's default."""
  env = e2e.env(f"--xla_force_host_platform_device_count={devices}" if devices > 1 else "")
  proc = forkserver.spawn("lrjax.main", [
      "--config=configs/sft.py", *([f"--workdir={workdir}"] if workdir is not None else []),
      *FAST, *args], cwd=str(cwd), env=env)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


@pytest.mark.parametrize("flag, field", [
    ("--config.data.task=nosuchtask", "data.task"),
    ("--config.model.preset=gpt5", "model.preset"),
    ("--config.rule.name=telepathy", "rule.name"),
    ("--config.sft.nosuchfield=1", "nosuchfield"),
    ("--config.sft.steps=many", "sft.steps"),
])
def test_config_errors_name_the_field(tmp_path, flag, field):
  rc, out, err = _main(tmp_path / "w", flag)
  assert rc != 0
  last = [line for line in err.strip().splitlines() if line.strip()][-1]
  assert field in last, err[-2000:]


def test_an_old_rule_flag_sets_the_new_field_with_a_note(tmp_path):
  """`--config.rule.top_k` (the flat layout) sets `lepo.top_k` under configs/lepo.py and
  says so in one line; the run then stops at the next config error, before any phase."""
  rc, out, err = forkserver.run("lrjax.main", [
      "--config=configs/lepo.py", f"--workdir={tmp_path / 'w'}", "--config.rule.top_k=5",
      "--config.sft.steps=-1"], ROOT, e2e.env())
  assert rc != 0
  assert ("[lrjax] --config.rule.top_k is deprecated: use --config.lepo.top_k (set to 5)"
          in out.splitlines()), out + err[-2000:]
  assert err.strip().splitlines()[-1].startswith("lrjax: config error: config.sft.steps")


def test_misspelled_rl_loss_fails_before_any_phase(tmp_path):
  """A typo in an RL field of an 'sft,rl' run is refused up front, not after the SFT phase."""
  w = tmp_path / "w"
  rc, out, err = _main(w, "--config.mode=sft,rl", "--config.rl.loss=ppo_clp")
  assert rc != 0
  last = [line for line in err.strip().splitlines() if line.strip()][-1]
  assert last.startswith("lrjax: config error: config.rl.loss='ppo_clp' is not one of: "), err[-2000:]
  assert "Traceback" not in err
  assert not w.exists()  # no workdir, no task, no model: nothing ran
  assert "[lrjax] sft" not in out


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _params(workdir):
  from safetensors.numpy import load_file
  return load_file(os.path.join(workdir, "sft", "export", "model.safetensors"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted, finished FAST run (read-only: copy it to change it)."""
  full = tmp_path_factory.mktemp("finished") / "w"
  rc, out, err = _main(full)
  assert rc == 0, err[-3000:]
  return full


def test_sigkill_and_resume_reproduces_uninterrupted_run(tmp_path, finished):
  full, cut = finished, tmp_path / "cut"

  proc = _main(cut, wait=False)
  ckpt = cut / "sft" / "ckpt"
  deadline = time.time() + 300
  while time.time() < deadline and not (ckpt / "8").exists():
    time.sleep(0.2)
  assert (ckpt / "8").exists(), "the run never wrote its step-8 checkpoint"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (cut / "sft" / "DONE").exists(), "killed too late: the run had finished"

  rc, out, err = _main(cut)
  assert rc == 0, err[-3000:]
  assert "resuming phase 'sft'" in out + err

  a, b = _params(full), _params(cut)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  ev_a = [r for r in _metrics(full) if "eval/accuracy" in r]
  ev_b = [r for r in _metrics(cut) if "eval/accuracy" in r]
  assert [r["step"] for r in ev_a] == [r["step"] for r in ev_b] == [0, 12, 24]
  assert ev_a[-1]["eval/accuracy"] == ev_b[-1]["eval/accuracy"]
  # the resumed file reads as one run: train steps strictly increasing, no duplicates
  steps = [r["step"] for r in _metrics(cut) if "train/loss" in r]
  assert steps == sorted(set(steps))


def test_rerun_of_a_finished_run_changes_nothing(tmp_path, finished):
  w = tmp_path / "w"
  shutil.copytree(finished, w)
  before = _params(w)
  rc, out, err = _main(w)
  assert rc == 0
  assert "reusing the finished SFT model" in out + err
  after = _params(w)
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])
  # the README's `--config.mode=eval --config.init=runs/sft` (no --workdir) on the finished
  # run reproduces its final (greedy) evaluation in runs/sft-eval, and leaves runs/sft as it was
  sft = tmp_path / "runs" / "sft"
  shutil.copytree(finished, sft)
  files = lambda d: {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.rglob("*") if p.is_file()}
  untouched = files(sft)
  rc, out, err = _main(None, "--config.mode=eval", "--config.init=runs/sft", cwd=tmp_path)
  assert rc == 0, err[-3000:]
  assert files(sft) == untouched
  e = tmp_path / "runs" / "sft-eval"
  ev = [r for r in _metrics(e) if r["phase"] == "eval"]
  assert len(ev) == 1 and ev[0]["step"] == 0
  final = [r for r in _metrics(w) if "eval/accuracy" in r][-1]
  for key in ("eval/accuracy", "eval/format_rate", "eval/response_tokens"):
    assert ev[0][key] == final[key], key
  # asked for more steps (and allowed to differ), the finished phase trains on from step 24
  rc, out, err = _main(w, "--config.sft.steps=28", "--config.allow_config_mismatch=True")
  assert rc == 0, err[-3000:]
  assert "continuing the finished SFT phase" in out and "from step 24 to 28" in out
  assert "reusing the finished SFT model" not in out
  assert json.load(open(w / "sft" / "DONE"))["steps"] == 28
  assert [r["step"] for r in _metrics(w) if "train/loss" in r][-2:] == [24, 28]
  assert any((after[k] != _params(w)[k]).any() for k in after)
  # ... and asked for fewer, it stops with one line naming the field
  rc, out, err = _main(w, "--config.sft.steps=20", "--config.allow_config_mismatch=True")
  assert rc != 0 and "Traceback" not in err
  assert "config.sft.steps=20" in err.strip().splitlines()[-1] and "cannot be shortened" in err


def test_changed_config_is_refused_with_the_field_listed(tmp_path):
  w = tmp_path / "w"
  assert _main(w, "--config.sft.steps=4")[0] == 0
  rc, out, err = _main(w, "--config.sft.steps=4", "--config.sft.lr=0.5")
  assert rc != 0
  assert "sft.lr" in err and "allow_config_mismatch" in err


def test_resume_on_another_mesh_and_logging_cadence(tmp_path, finished):
  """A run cut after its step-20 checkpoint resumes on 2 devices with fsdp=2 and another
  log_every (neither is a config difference: said, not refused) and ends where the
  1-device run ended, in values (another mesh reorders float sums: not bit-identical)."""
  w = tmp_path / "w"
  shutil.copytree(finished, w)
  shutil.rmtree(w / "sft" / "ckpt" / "24"), shutil.rmtree(w / "sft" / "export")
  os.remove(w / "sft" / "DONE")
  rc, out, err = _main(w, "--config.mesh.fsdp=2", "--config.sft.log_every=2", devices=2)
  assert rc == 0, err[-3000:]
  assert "resuming phase 'sft'" in out + err and "at step 20" in out + err
  assert "another mesh or logging cadence" in out
  assert "mesh.fsdp: 1 (stored) != 2 (now)" in out and "sft.log_every: 4 (stored)" in out
  assert json.load(open(w / "config.json"))["mesh"]["fsdp"] == 2
  a, b = _params(finished), _params(w)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
  assert [r["step"] for r in _metrics(w) if "train/loss" in r][-3:] == [20, 22, 24]


def test_config_path_resolves_from_any_directory(tmp_path, monkeypatch):
  """`configs/<m>.py` from another directory is the installed `configs` package's file
  (here: the checkout's, on the import path); a local file of that path wins, and a
  file in a `configs/` package folder reads its own siblings."""
  from lrjax.main import resolve_config_args, resolve_config_path
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  want = os.path.join(ROOT, "configs", "grpo.py") + ":prosqa"
  assert resolve_config_path("configs/grpo.py:prosqa") == want
  # both spellings of the flag (absl reads `--config PATH` as `--config=PATH`)
  assert resolve_config_args(["m", "--config=configs/grpo.py:prosqa", "--workdir=w"]) == [
      "m", f"--config={want}", "--workdir=w"]
  assert resolve_config_args(["m", "--config", "configs/grpo.py:prosqa", "--config.seed=1"]) == [
      "m", "--config", want, "--config.seed=1"]
  assert resolve_config_path("configs/nope.py") == "configs/nope.py"  # the flag reports it
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "__init__.py").write_text("")
  (tmp_path / "configs" / "grpo.py").write_text("")
  assert resolve_config_path("configs/grpo.py:prosqa") == "configs/grpo.py:prosqa"
  assert sys.path[0] == str(tmp_path)
