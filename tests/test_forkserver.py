"""The fork server runs a module as `python -m` would: argv, sys.path, working directory,
environment, a command's own XLA device count, exit codes, uncaught errors, signals."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests import e2e_runs as e2e
from tests import forkserver

PROBE = '''
import json, os, sys
import jax
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(),
                  "name": __name__, "devices": jax.device_count(),
                  "stdin": sys.stdin.read(), "marker": os.environ.get("LRJAX_PROBE")}))
what = sys.argv[1] if len(sys.argv) > 1 else ""
if what == "raise":
  raise ValueError("probe raised")
if what == "sleep":
  import time; time.sleep(600)
if what == "atexit":
  import atexit; atexit.register(lambda: print("atexit ran", flush=True))
sys.exit(int(what) if what.isdigit() else 0)
'''


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("probe")
  (d / "lrjax_probe.py").write_text(PROBE)
  return str(d)


def _both(args, cwd, env):
  plain = subprocess.run([sys.executable, "-m", "lrjax_probe", *args], cwd=cwd, env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
  rc, out, err = forkserver.run("lrjax_probe", args, cwd, env, timeout=120)
  return (plain.returncode, json.loads(plain.stdout.splitlines()[0]), plain), \
      (rc, json.loads(out.splitlines()[0]), (out, err))


@pytest.mark.skipif(not forkserver.ENABLED, reason="LRJAX_TEST_FORK=0: spawn is subprocess.Popen")
def test_a_forked_command_sees_what_python_dash_m_sees(probe_dir):
  env = dict(e2e.env("--xla_force_host_platform_device_count=3"), LRJAX_PROBE="a")
  (prc, plain, _), (frc, forked, _) = _both(["7"], probe_dir, env)
  assert prc == frc == 7
  assert forked == plain
  assert forked["devices"] == 3 and forked["marker"] == "a" and forked["name"] == "__main__"
  assert forked["path0"] == os.path.realpath(probe_dir) == forked["cwd"]
  # the next command on the same server: its own XLA flags and variables
  env = dict(e2e.env("--xla_force_host_platform_device_count=2"), LRJAX_PROBE="b")
  rc, out, _ = forkserver.run("lrjax_probe", [], probe_dir, env)
  assert rc == 0 and json.loads(out)["devices"] == 2 and json.loads(out)["marker"] == "b"


@pytest.mark.skipif(not forkserver.ENABLED, reason="LRJAX_TEST_FORK=0: spawn is subprocess.Popen")
def test_a_forked_script_sees_what_python_dash_c_sees(probe_dir):
  """`spawn_code` runs a `-c` script as `python -c` does: argv[0] "-c", '' first on
  sys.path, a fresh `__main__`, the exit code and the uncaught error its own."""
  env = dict(e2e.env("--xla_force_host_platform_device_count=3"), LRJAX_PROBE="c")
  code = PROBE.replace("what = ", "print(sorted(k for k in globals() if k[0] != '_'))\nwhat = ")
  plain = subprocess.run([sys.executable, "-c", code, "5", "x"], cwd=probe_dir, env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
  rc, out, err = forkserver.run_code(code, ["5", "x"], probe_dir, env, timeout=120)
  assert rc == plain.returncode == 5, (err, plain.stderr)
  assert out.splitlines() == plain.stdout.splitlines()
  assert out.splitlines()[1] == "['jax', 'json', 'os', 'sys']"  # a fresh module's globals
  forked = json.loads(out.splitlines()[0])
  assert forked["argv"] == ["-c", "5", "x"] and forked["path0"] == "" and forked["devices"] == 3
  assert forked["name"] == "__main__" and forked["marker"] == "c"
  rc, out, err = forkserver.run_code(code, ["raise"], probe_dir, env)
  assert rc == 1 and err.strip().splitlines()[-1] == "ValueError: probe raised", err


@pytest.mark.skipif(not forkserver.ENABLED, reason="LRJAX_TEST_FORK=0: spawn is subprocess.Popen")
def test_errors_exits_and_signals_are_the_commands_own(probe_dir):
  env = e2e.env()
  rc, out, err = forkserver.run("lrjax_probe", ["raise"], probe_dir, env)
  assert rc == 1 and err.strip().splitlines()[-1] == "ValueError: probe raised", err
  assert "Traceback" in err
  rc, out, err = forkserver.run("lrjax_probe", ["atexit"], probe_dir, env)
  assert rc == 0 and out.splitlines()[-1] == "atexit ran", out
  proc = forkserver.spawn("lrjax_probe", ["sleep"], probe_dir, env)
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGTERM
  # what is read at import picks the server; what is read later does not
  key = forkserver._import_env(env)
  assert forkserver._import_env(dict(env, XLA_FLAGS="--x", LRJAX_A="1", PYTEST_B="2")) == key
  assert forkserver._import_env(dict(env, HF_HUB_OFFLINE="0")) != key
  assert forkserver._import_env(dict(env, JAX_ENABLE_X64="1")) != key
