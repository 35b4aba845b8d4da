"""Two processes on localhost (4 fake CPU devices each, gloo collectives) = one process with 8.

tests/multiprocess_worker.py runs one RL step of the RL phase's own code
(rollout, per-process decoding and rewards, plain SGD) on a (data 2, fsdp 2,
tensor 2) mesh. Run as 2 processes, each feeds, decodes and scores its own 4 of
the 8 rows; run here in the test's own 8-device process (at the same time, on
the cores the two leave idle) it sees them all. The sampled tokens, the
(text, answer) pairs scored and the rewards must be identical, and the exported
parameters equal to float32 reduction-order noise (1e-5 relative); process 0
alone writes the metrics and the export; the Orbax checkpoint the two processes
wrote together must restore in this process onto its own 8 devices, equal bit
for bit to their export.
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import multiprocess_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", **extra)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, out, logs, init):
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(logs / f"process{i}.log", "w")
    procs.append(subprocess.Popen(
        [sys.executable, worker.__file__, str(workdir), str(out), init], cwd=ROOT, text=True,
        stdout=log, stderr=subprocess.STDOUT,
        env=_env(JAX_NUM_CPU_DEVICES="4", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))))
  return procs


def _wait(procs, logs):
  """Waits for both; on a failure or a hang kills both and shows their logs."""
  deadline = time.time() + TIMEOUT
  while time.time() < deadline and any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()
  tails = "\n".join(f"--- process {i} (rc {p.returncode}):\n" +
                    (logs / f"process{i}.log").read_text()[-2500:] for i, p in enumerate(procs))
  assert all(p.returncode == 0 for p in procs), tails


def _exported(workdir):
  from safetensors.numpy import load_file
  return load_file(os.path.join(workdir, "rl", "export", "model.safetensors"))


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.skipif(jax.device_count() != 8, reason="needs the 8 fake CPU devices of conftest")
def test_two_processes_match_one_and_share_a_checkpoint(tmp_path):
  two, one, out, logs = (tmp_path / d for d in ("two", "one", "out", "logs"))
  out.mkdir(), logs.mkdir()
  init = worker.make_init(str(tmp_path / "init"))
  procs = _start(two, out, logs, init)
  try:
    ref = worker.step(str(one), str(tmp_path), init)  # meanwhile: the same step, 1 process x 8
  finally:
    _wait(procs, logs)
  p0, p1 = np.load(out / "process0.npz"), np.load(out / "process1.npz")
  assert p0["rows"].tolist() == [0, 1, 2, 3] and p1["rows"].tolist() == [4, 5, 6, 7]
  assert ref["rows"].tolist() == list(range(8)) and ref["processes"] == 1
  # each process decoded and scored its own rows, each against its own answer
  np.testing.assert_array_equal(np.concatenate([p0["scored"], p1["scored"]]), ref["scored"])
  for p in (p0, p1):
    np.testing.assert_array_equal(p["ids"], ref["ids"])
    np.testing.assert_array_equal(p["rewards"], ref["rewards"])
  assert len(set(ref["rewards"].tolist())) > 1  # the advantages are not all zero
  assert ref["moved"] > 1e-3  # the step moved the parameters: the comparison is not vacuous

  a, b = _exported(two), _exported(one)
  assert sorted(a) == sorted(b)
  for k in b:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b[k]).max()),
                               err_msg=k)
  m2, m1 = _metrics(two), _metrics(one)
  assert [(r["phase"], r["step"]) for r in m2] == [("rl", 1)]  # written once, by process 0
  assert m2[0]["train/reward"] == m1[0]["train/reward"]
  assert m2[0]["train/loss"] == pytest.approx(m1[0]["train/loss"], rel=1e-5, abs=1e-6)

  from lrjax.checkpoint import Checkpointer, abstract_state
  from lrjax.model import load_hf
  with Checkpointer(two / "rl" / "ckpt") as ckpt:
    state, meta = ckpt.restore(abstract_state(ref["state"]))
  assert meta["processes"] == 2
  leaf = state["params"]["model"]["layers"]["mlp"]["up"]["kernel"]
  assert len(leaf.sharding.device_set) == 8 and leaf.is_fully_addressable
  _, exported = load_hf(str(two / "rl" / "export"))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(state["params"]["model"]),
                          jax.tree.leaves(exported)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _args(environ=None, **cfg):
  from lrjax import distributed
  dist = type("Dist", (), cfg)() if cfg else None
  return distributed.initialize_args(distributed.settings(dist, environ or {}))


def test_process_group_settings_config_wins_over_environment():
  assert _args() is None  # nothing set: one process
  assert _args({"JAX_NUM_PROCESSES": "1"}) is None
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert _args(env) == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  assert _args(env, coordinator_address="c:2", num_processes=4, process_id=3) == {
      "coordinator_address": "c:2", "num_processes": 4, "process_id": 3}
  assert _args({"JAX_PROCESS_ID": "0"}, coordinator_address="c:2", num_processes=2,
               process_id=-1)["process_id"] == 0
  # a pod slice: JAX's cluster detection fills in what is unset
  assert _args({"TPU_WORKER_HOSTNAMES": "w0,w1"}) == {
      "coordinator_address": None, "num_processes": None, "process_id": None}
  assert _args({"LRJAX_DISTRIBUTED": "1", "JAX_PROCESS_ID": "1"})["process_id"] == 1
  assert _args({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # one-host TPU VM


@pytest.mark.parametrize("environ, cfg, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, {}, "needs a coordinator address"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, {}, "the number of processes"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, {}, "this process's id"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, {},
     "process id 2 is out of range for 2 processes (0..1)"),
    ({}, {"coordinator_address": "h:1", "num_processes": 4, "process_id": -3},
     "process id -3 is out of range"),
    ({"JAX_NUM_PROCESSES": "two"}, {}, "num_processes (config.distributed.num_processes / "
     "JAX_NUM_PROCESSES) must be an integer, got 'two'"),
    ({}, {"num_processes": -2}, "num_processes must be >= 1, got -2"),
])
def test_bad_process_group_settings_say_what_is_wrong(environ, cfg, message):
  with pytest.raises(ValueError) as e:
    _args(environ, **cfg)
  assert message in str(e.value)
