"""Faults of real clusters: corrupted or missing checkpoint files at resume, non-finite
updates, and SIGTERM.

The newest checkpoint's data files are overwritten (as a node dying mid-write or
a full disk leaves them): resume reports the bad step and path, moves it aside
(never deletes it), restores the previous step and keeps saving afterwards;
every checkpoint bad is a one-line error naming the folder; a checkpoint of
another structure is an error naming the tensor and moves nothing.
"""
import glob
import json
import os
import re
import signal
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax import faults
from lrjax.checkpoint import Checkpointer
from lrjax.config_utils import ConfigError
from lrjax.phases.workdir import try_resume
from tests import e2e_runs as e2e
from tests import forkserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Metrics:
  def __init__(self):
    self.truncated = []

  def truncate(self, phase, step):
    self.truncated.append((phase, step))


def _state(scale):
  return {"params": {"w": jnp.full((4, 3), float(scale)), "b": jnp.zeros(3)},
          "key": jax.random.key(scale)}


def _run(tmp_path):
  return types.SimpleNamespace(workdir=str(tmp_path), metrics=_Metrics())


def _corrupt(directory, step):
  files = [p for p in glob.glob(os.path.join(directory, str(step), "state", "**"), recursive=True)
           if os.path.isfile(p) and f"{os.sep}d{os.sep}" in p]
  assert files
  for p in files:
    with open(p, "wb") as f:
      f.write(b"garbage")


def _saved(tmp_path, steps=(4, 8, 12)):
  d = str(tmp_path / "ckpt")
  with Checkpointer(d, max_to_keep=3, async_save=False) as c:
    for s in steps:
      c.save(s, _state(s), {"data_position": s})
  return d


def test_corrupted_newest_checkpoint_falls_back_and_saving_continues(tmp_path, capsys):
  d = _saved(tmp_path)
  _corrupt(d, 12)
  run = _run(tmp_path)
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  state, step, meta = try_resume(run, "sft", ckpt, _state(0))
  assert step == 8 and meta["data_position"] == 8
  np.testing.assert_array_equal(state["params"]["w"], np.full((4, 3), 8.0))
  assert jax.random.key_data(state["key"]).tolist() == jax.random.key_data(
      jax.random.key(8)).tolist()
  out = capsys.readouterr().out
  assert "step 12" in out and os.path.join(d, "12") in out and "moved aside" in out
  assert os.path.isdir(os.path.join(d, "12.corrupt-0"))  # kept, not deleted
  assert run.metrics.truncated == [("sft", 8)]
  ckpt.save(12, _state(12), {"data_position": 12})  # the resumed run saves again
  ckpt.wait()
  assert ckpt.latest_step() == 12
  restored, _ = ckpt.restore(jax.tree.map(lambda x: x, _state(0)), 12)
  np.testing.assert_array_equal(restored["params"]["w"], np.full((4, 3), 12.0))
  ckpt.close()


def test_missing_files_count_as_corrupt(tmp_path):
  d = _saved(tmp_path, steps=(4, 8))
  for p in glob.glob(os.path.join(d, "8", "state", "**"), recursive=True):
    if os.path.isfile(p) and "manifest" in p:
      os.remove(p)
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  _, step, _ = try_resume(_run(tmp_path), "rl", ckpt, _state(0))
  assert step == 4
  ckpt.close()


def test_every_checkpoint_corrupt_is_one_error_naming_the_folder(tmp_path):
  d = _saved(tmp_path, steps=(4, 8))
  _corrupt(d, 4)
  _corrupt(d, 8)
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  with pytest.raises(ConfigError, match="no checkpoint of phase 'sft'") as e:
    try_resume(_run(tmp_path), "sft", ckpt, _state(0))
  assert d in str(e.value) and "\n" not in str(e.value)
  assert sorted(os.listdir(d)) == ["4.corrupt-0", "8.corrupt-0"]
  ckpt.close()


def test_other_structure_names_the_tensor_and_moves_nothing(tmp_path):
  d = _saved(tmp_path, steps=(4,))
  other = {"params": {"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)}, "key": jax.random.key(0)}
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  with pytest.raises(ConfigError, match=r"params/w has shape \(4, 3\)"):
    try_resume(_run(tmp_path), "sft", ckpt, other)
  assert os.listdir(d) == ["4"]
  ckpt.close()


def test_guarded_update_is_the_plain_update_or_nothing():
  import optax
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.asarray([1.0, -2.0, 0.0])}
  state = opt.init(params)
  updates, new_state = opt.update(grads, state, params)
  want = optax.apply_updates(params, updates)
  p, s, norm, ok = faults.guarded_update(opt, grads, state, params, jnp.asarray(1.5))
  assert bool(ok) and float(norm) == pytest.approx(float(optax.tree.norm(grads)))
  jax.tree.map(np.testing.assert_array_equal, (p, s), (want, new_state))
  for loss, g, poison in ((jnp.nan, grads, False), (1.0, {**grads, "b": grads["b"] * jnp.inf}, False),
                          (1.0, grads, True)):
    p, s, _, ok = faults.guarded_update(opt, g, state, params, jnp.asarray(loss), poison)
    assert not bool(ok)
    jax.tree.map(np.testing.assert_array_equal, (p, s), (params, state))


# --- non-finite updates and SIGTERM, on the tiny SFT run of tests/test_main.py -----------

def _metrics_of(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_injected_nan_is_skipped_counted_and_stops_after_the_limit(tmp_path):
  from safetensors.numpy import load_file
  from tests.test_main import _main
  w = tmp_path / "w"
  # max_nonfinite 1: the run stops at the injected step, one line naming it and the checkpoint
  rc, out, err = _main(w, "--config.train.inject_nan_step=10", "--config.train.max_nonfinite=1")
  assert rc == 1 and "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("lrjax: sft stopped at step 10: 1 consecutive non-finite updates")
  assert "the last checkpoint is step 8" in last
  ckpt = Checkpointer(str(w / "sft" / "ckpt"), async_save=False)
  assert ckpt.latest_step() == 8  # intact: the resumed run starts from it
  ckpt.close()
  # resumed with a limit of 10: step 10 is poisoned again, skipped, counted, and training goes on
  rc, out, err = _main(w, "--config.train.inject_nan_step=10", "--config.train.max_nonfinite=10",
                       "--config.allow_config_mismatch=True")
  assert rc == 0 and "resuming phase 'sft' from its checkpoint at step 8" in out, err[-3000:]
  assert "step 10: non-finite loss or gradient, update skipped (1 in a row)" in out
  logged = {r["step"]: r for r in _metrics_of(w) if "train/nonfinite_skipped" in r}
  assert logged[8]["train/nonfinite_skipped"] == 0 and logged[12]["train/nonfinite_skipped"] == 1
  assert logged[24]["train/nonfinite_skipped"] == 1  # one skip, then finite updates again
  assert np.isfinite(logged[24]["train/loss"])
  assert all(np.isfinite(v).all() for v in load_file(str(w / "sft" / "export" /
                                                         "model.safetensors")).values())


# An Orbax save finalises (renames its tmp folder) only once lrjax waits for it
# (`Checkpointer.wait` / `close`), or after 60 s: a phase that raises after a save is
# then always left with that save in flight, as it sometimes is in a real run.
_SAVE_IN_FLIGHT = """
import asyncio, runpy, sys, threading
from lrjax import checkpoint
waited = threading.Event()
for name in ("wait", "close"):
  def gated(self, _orig=getattr(checkpoint.Checkpointer, name)):
    waited.set()
    return _orig(self)
  setattr(checkpoint.Checkpointer, name, gated)
to_thread = asyncio.to_thread
async def gated_to_thread(func, *a, **k):
  if getattr(func, "__name__", "") == "rename":
    waited.wait(60)
  return await to_thread(func, *a, **k)
asyncio.to_thread = gated_to_thread
sys.argv = ["lrjax.main", *sys.argv[1:]]
runpy.run_module("lrjax.main", run_name="__main__")
"""


def test_error_with_a_save_in_flight_stays_one_line(tmp_path):
  """A phase that stops while its last checkpoint is still being written (here the
  non-finite guard, one step after an async save) prints its one line and nothing else
  (no Orbax background-thread traceback), and the checkpoint that line names is there."""
  from tests.test_main import FAST
  w = tmp_path / "w"
  rc, _, stderr = forkserver.run_code(
      _SAVE_IN_FLIGHT, ["--config=configs/sft.py", f"--workdir={w}", *FAST,
                        "--config.eval.num_problems=8", "--config.eval.batch_size=8",
                        "--config.eval.max_new=8", "--config.train.inject_nan_step=5",
                        "--config.train.max_nonfinite=1"], ROOT, e2e.env(), timeout=300)
  assert rc == 1, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("lrjax: sft stopped at step 5"), stderr[-3000:]
  assert "the last checkpoint is step 4" in lines[-1]
  # before it only the progress line (no Orbax traceback, no RuntimeError)
  assert all(re.fullmatch(r"sft \d+/24 loss=\S+ stage=0", x) for x in lines[:-1]), \
      stderr[-3000:]
  ckpt = Checkpointer(str(w / "sft" / "ckpt"), async_save=False)
  assert ckpt.latest_step() == 4  # finalised before the process exited
  ckpt.close()


# --- SIGTERM and SIGKILL across the SFT and RL phases of configs/hrpo.py -----------------

# HRPO's default, shortened: 16 SFT steps, 12 RL steps of 4 prompts x 4, a checkpoint every 2.
HRPO_SHORT = ["--config=configs/hrpo.py", "--config.sft.steps=16", "--config.sft.batch_size=16",
              "--config.sft.log_every=4", "--config.sft.eval_every=16",
              "--config.checkpoint.every=2", "--config.eval.num_problems=16",
              "--config.eval.batch_size=16", "--config.eval.sampled=False",
              "--config.eval.max_new=24", "--config.data.train_size=2000",
              "--config.sft.warmup_steps=2", "--config.rl.steps=12", "--config.rl.num_prompts=4",
              "--config.rl.group_size=4", "--config.rl.max_new=24", "--config.rl.eval_every=12",
              "--config.rl.log_every=1"]


def _hrpo(workdir, *args, wait=True):
  # unbuffered (e2e.env): a killed run's lines up to the kill are still read
  proc = forkserver.spawn("lrjax.main", [f"--workdir={workdir}", *HRPO_SHORT, *args], ROOT,
                          e2e.env())
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def _signal_when(workdir, checkpoint, sig):
  """Starts the run, sends `sig` once `checkpoint` (a folder) exists; (rc, out, err)."""
  proc = _hrpo(workdir, wait=False)
  deadline = time.time() + 300
  while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before the signal: " + proc.communicate()[1][-2000:]
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def _exports(workdir):
  from safetensors.numpy import load_file
  d = workdir / "rl" / "export"
  return {f: load_file(str(d / f)) for f in ("model.safetensors", "lrjax_rule.safetensors")}


def test_sigterm_and_sigkill_in_sft_and_rl_resume_bit_identical(tmp_path):
  """SIGTERM in SFT, SIGKILL in RL, SIGTERM in RL, each followed by the same command:
  every exported tensor (backbone and gate sidecar), the last eval/accuracy and the
  train/loss of every RL step equal the uninterrupted run's. Then the finished RL
  phase asked for more steps continues from its last checkpoint."""
  full, cut = tmp_path / "full", tmp_path / "cut"
  rc, _, err = _hrpo(full)
  assert rc == 0, err[-3000:]
  # SIGTERM during SFT: exit 143, a checkpoint at the last completed step
  rc, out, err = _signal_when(cut, cut / "sft" / "ckpt" / "4", signal.SIGTERM)
  assert rc == faults.EXIT_PREEMPTED, err[-3000:]
  saved = int(re.search(r"preempted: sft saved at step (\d+)", out).group(1))
  assert 4 <= saved < 16 and (cut / "sft" / "ckpt" / str(saved)).exists()
  # the re-run continues SFT from there, then is killed during RL
  rc, out, err = _signal_when(cut, cut / "rl" / "ckpt" / "2", signal.SIGKILL)
  assert rc == -signal.SIGKILL and not (cut / "rl" / "DONE").exists()
  assert f"resuming phase 'sft' from its checkpoint at step {saved}" in out, out[-3000:]
  last_rl = max(int(p.name) for p in (cut / "rl" / "ckpt").iterdir() if p.name.isdigit())
  # SIGTERM during the resumed RL phase
  rc, out, err = _signal_when(cut, cut / "rl" / "ckpt" / str(last_rl + 2), signal.SIGTERM)
  assert rc == faults.EXIT_PREEMPTED, err[-3000:]
  assert f"resuming phase 'rl' from its checkpoint at step {last_rl}" in out, out[-3000:]
  saved = int(re.search(r"preempted: rl saved at step (\d+)", out).group(1))
  assert last_rl + 2 <= saved < 12 and (cut / "rl" / "ckpt" / str(saved)).exists()
  rc, out, err = _hrpo(cut)
  assert rc == 0 and f"resuming phase 'rl' from its checkpoint at step {saved}" in out, err[-3000:]

  a, b = _exports(full), _exports(cut)
  for f in a:
    assert a[f].keys() == b[f].keys() and a[f]
    for k in a[f]:
      np.testing.assert_array_equal(a[f][k], b[f][k], err_msg=f"{f}: {k}")
  rl_lines = lambda w, key: [(r["step"], r[key]) for r in _metrics_of(w)  # noqa: E731
                             if r["phase"] == "rl" and key in r]
  assert len(rl_lines(full, "train/loss")) == 12
  assert rl_lines(full, "train/loss") == rl_lines(cut, "train/loss")
  assert rl_lines(full, "eval/accuracy") == rl_lines(cut, "eval/accuracy")

  # a finished RL phase asked for more steps trains on from its last checkpoint
  rc, out, err = _hrpo(cut, "--config.rl.steps=14", "--config.allow_config_mismatch=True")
  assert rc == 0, err[-3000:]
  assert "continuing the finished RL phase" in out and "from step 12 to 14" in out
  assert [s for s, _ in rl_lines(cut, "train/loss")][-3:] == [12, 13, 14]
  assert (cut / "rl" / "DONE").exists() and (cut / "rl" / "ckpt" / "14").exists()


def test_start_hashes_name_the_changed_tensor():
  """The RL reference is rebuilt on resume and checked against per-tensor digests."""
  from lrjax.phases.resume import check_start, tree_hashes
  tree = {"model": {"embed": np.arange(6, dtype=np.float32).reshape(2, 3)},
          "rule": {"lambda": np.ones(3, np.float32)}, "heads": {}}
  stored = tree_hashes(tree)
  assert set(stored) == {"model/embed", "rule/lambda"}
  check_start(stored, tree_hashes(jax.tree.map(np.copy, tree)), "W/rl")  # same bytes: passes
  check_start(None, stored, "W/rl")  # a checkpoint from before digests were stored
  changed = jax.tree.map(np.copy, tree)
  changed["rule"]["lambda"][1] = np.nextafter(np.float32(1), np.float32(2))  # one ulp
  with pytest.raises(ConfigError, match=r"in W/rl changed .*tensor rule/lambda has digest"):
    check_start(stored, tree_hashes(changed), "W/rl")
  recast = {**tree, "rule": {"lambda": tree["rule"]["lambda"].astype(np.float64)}}
  assert tree_hashes(recast)["rule/lambda"] != stored["rule/lambda"]  # dtype counts
  with pytest.raises(ConfigError, match="tensor model/extra is new"):
    check_start(stored, {**stored, "model/extra": "0"}, "W/rl")
