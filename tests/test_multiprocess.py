"""Two processes on localhost (4 fake CPU devices each, gloo collectives) = one process with 8.

tests/multiprocess_worker.py takes one RL step (rollout, per-process rewards,
plain SGD) on a (data 2, fsdp 2, tensor 2) mesh. Run as 2 processes, each feeds
and scores its own 4 of the 8 rows; run as 1 process with 8 devices it sees them
all. The sampled tokens and rewards must be identical and the updated
parameters equal to float32 reduction-order noise (1e-5 relative); the Orbax
checkpoint the two processes wrote together must restore in the single process
onto its own 8 devices, bit for bit.
"""
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
             JAX_PLATFORMS="cpu", **extra)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _check(procs):
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, (out + err)[-3000:]


def test_two_processes_match_one_and_share_a_checkpoint(tmp_path):
  two, one = tmp_path / "two", tmp_path / "one"
  two.mkdir(), one.mkdir()
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(two), str(two / "ckpt")], cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      env=_env(JAX_NUM_CPU_DEVICES="4", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))) for i in range(2)]
  _check(procs)
  assert sorted(os.listdir(two)) == ["ckpt", "result.npz"]  # process 0 alone wrote the result
  _check([subprocess.Popen([sys.executable, WORKER, str(one), str(one / "ckpt"), str(two / "ckpt")],
                           cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=_env(JAX_NUM_CPU_DEVICES="8"))])
  a, b, restored = (np.load(two / "result.npz"), np.load(one / "result.npz"),
                    np.load(one / "restored.npz"))
  assert a["rows"].tolist() == [0, 4] and b["rows"].tolist() == [0, 8]  # process 0's rows
  np.testing.assert_array_equal(a["ids"], b["ids"])
  np.testing.assert_array_equal(a["rewards"], b["rewards"])
  assert len(set(a["rewards"].tolist())) > 1  # the advantages are not all zero
  params = [k for k in a.files if k.startswith("param")]
  assert params and int(restored["processes"]) == 2
  moved = 0.0
  for k in params:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b[k]).max()),
                               err_msg=k)
    np.testing.assert_array_equal(restored[k], a[k], err_msg=k)
    moved = max(moved, float(np.abs(b[k] - b["start" + k[len("param"):]]).max()))
  assert moved > 1e-3  # the step really moved the parameters (the comparison is not vacuous)
