"""`python -m lrjax...` and `python -c ...` commands forked from a warm interpreter, for the
end-to-end tests.

A short run of a tiny config spends about 1.5 s of CPU importing jax, flax, optax, orbax
and transformers before it does anything; the suite starts dozens of them. A server
process imports those libraries once (no JAX backend initialised, no lrjax module
imported) and forks one child per command. The child takes the command's environment,
working directory, argv and output files and runs the module as `python -m` does
(`runpy.run_module(..., run_name="__main__", alter_sys=True)`, the working directory
first on `sys.path`), or a script as `python -c` does (a fresh `__main__` module, `''`
first on `sys.path`, `sys.argv[0] == "-c"`), then ends through the interpreter's normal
exit (atexit hooks, non-daemon threads joined). Its exit code, signal (a segfault is
-11) and output are its own. XLA reads `XLA_FLAGS` when the child first builds a
backend, so a command's own XLA flags and device count apply.

`spawn` (`python -m`) and `spawn_code` (`python -c`) return a `subprocess.Popen`-like
handle. A command whose environment differs from the server's in anything read at
import (every variable but `XLA_FLAGS`, `LRJAX_*` and `PYTEST_*`) gets a server of its
own environment. `LRJAX_TEST_FORK=0` makes both a plain `subprocess.Popen`.

Run as a script, this file is the server: `python tests/forkserver.py SOCKET`.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile

# Read after the fork (by XLA at backend creation, by lrjax at run time; pytest's name of the
# current test): may differ per command.
PER_COMMAND = ("XLA_FLAGS",)
PER_COMMAND_PREFIXES = ("LRJAX_", "PYTEST_")
ENABLED = os.environ.get("LRJAX_TEST_FORK", "1") != "0"


def _import_env(env: dict) -> tuple:
  return tuple(sorted((k, v) for k, v in env.items()
                      if k not in PER_COMMAND and not k.startswith(PER_COMMAND_PREFIXES)))


# --- the client (the test process) -------------------------------------------------------

class _Server:
  def __init__(self, env: dict):
    # a Unix socket's path is limited to ~100 bytes: a long $TMPDIR falls back to /tmp
    base = tempfile.gettempdir() if len(tempfile.gettempdir()) < 60 else "/tmp"
    self.dir = tempfile.mkdtemp(prefix="lrjax-fork-", dir=base)
    self.path = os.path.join(self.dir, "socket")
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.path],
                                 env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    ready = self.proc.stdout.readline()
    if ready.strip() != "ready":
      raise RuntimeError(f"the fork server did not start (said {ready!r})")


_SERVERS: dict[tuple, _Server] = {}


class ForkedRun:
  """A forked command, with the part of `subprocess.Popen`'s interface the tests use."""

  def __init__(self, server: _Server, target: dict, args: list[str], cwd: str, env: dict,
               text: bool):
    fd, self._out = tempfile.mkstemp(prefix="out-", dir=server.dir)
    os.close(fd)
    fd, self._err = tempfile.mkstemp(prefix="err-", dir=server.dir)
    os.close(fd)
    self.args, self.text, self.returncode = [sys.executable, *_flag(target), *args], text, None
    self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    self._conn.connect(server.path)
    request = {**target, "args": list(args), "cwd": os.path.abspath(cwd), "env": env,
               "out": self._out, "err": self._err}
    self._conn.sendall((json.dumps(request) + "\n").encode())
    self._reader = self._conn.makefile("r")
    self.pid = int(self._reader.readline())

  def poll(self):
    if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
      self._finish()
    return self.returncode

  def wait(self, timeout: float | None = None):
    if self.returncode is None:
      if not select.select([self._conn], [], [], timeout)[0]:
        raise subprocess.TimeoutExpired(self.args, timeout)
      self._finish()
    return self.returncode

  def communicate(self, timeout: float | None = None):
    self.wait(timeout)
    outs = []
    for path in (self._out, self._err):
      with open(path, "r" if self.text else "rb") as f:
        outs.append(f.read())
      os.unlink(path)
    return tuple(outs)

  def send_signal(self, sig: int) -> None:
    if self.returncode is None:
      os.kill(self.pid, sig)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def _finish(self):
    line = self._reader.readline()
    self.returncode = int(line) if line.strip() else -signal.SIGKILL
    self._reader.close()
    self._conn.close()


def _flag(target: dict) -> list[str]:
  return ["-m", target["module"]] if "module" in target else ["-c", target["code"]]


def _spawn(target: dict, args: list[str], cwd: str, env: dict, text: bool):
  if not ENABLED:
    return subprocess.Popen([sys.executable, *_flag(target), *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=text)
  key = _import_env(env)
  server = _SERVERS.get(key)
  if server is None or server.proc.poll() is not None:
    server = _SERVERS[key] = _Server(dict(env))
  return ForkedRun(server, target, args, cwd, env, text)


def spawn(module: str, args: list[str], cwd: str, env: dict, text: bool = True):
  """`python -m module *args` in `cwd` with environment `env` (stdout and stderr captured)."""
  return _spawn({"module": module}, args, cwd, env, text)


def spawn_code(code: str, args: list[str], cwd: str, env: dict, text: bool = True):
  """`python -c code *args` in `cwd` with environment `env` (stdout and stderr captured)."""
  return _spawn({"code": code}, args, cwd, env, text)


def run(module: str, args: list[str], cwd: str, env: dict, timeout: float = 600):
  """(returncode, stdout, stderr) of `spawn(...)`; the command is killed past `timeout`."""
  return _communicate(spawn(module, args, cwd, env), timeout)


def run_code(code: str, args: list[str], cwd: str, env: dict, timeout: float = 600):
  """(returncode, stdout, stderr) of `spawn_code(...)`; killed past `timeout`."""
  return _communicate(spawn_code(code, args, cwd, env), timeout)


def _communicate(proc, timeout: float):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    raise
  return proc.returncode, out, err


# --- the server ---------------------------------------------------------------------------

def _status(wait_status: int) -> int:
  return (-os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status)
          else os.WEXITSTATUS(wait_status))


def _run_command(req: dict) -> int:
  """In the forked child: become the command, run it, return its exit code."""
  import runpy
  os.chdir(req["cwd"])
  os.environ.clear()
  os.environ.update(req["env"])
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)
  for fd, path in ((1, req["out"]), (2, req["err"])):
    f = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.dup2(f, fd)
    os.close(f)
  try:
    if "code" in req:  # as `python -c` runs it
      import types
      sys.path[0] = ""
      sys.argv = ["-c", *req["args"]]
      main = sys.modules["__main__"] = types.ModuleType("__main__")
      exec(compile(req["code"], "<string>", "exec"), main.__dict__)  # noqa: S102
    else:
      sys.path[0] = os.getcwd()  # as `python -m` puts it
      sys.argv = [req["module"], *req["args"]]
      runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    return 0
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)
    return 1
  except BaseException:  # noqa: BLE001  (reported as the interpreter would)
    sys.excepthook(*sys.exc_info())
    return 1


def _wait_and_report(conn: socket.socket, pid: int) -> None:
  """In the per-command waiter: the child's pid, then its exit status."""
  conn.sendall(f"{pid}\n".encode())
  _, status = os.waitpid(pid, 0)
  try:
    conn.sendall(f"{_status(status)}\n".encode())
  except OSError:
    pass  # the test has gone


def serve(path: str) -> int:
  import jax  # noqa: F401  (imports only: no backend is initialised before the fork)
  import jax.numpy  # noqa: F401
  import flax.linen  # noqa: F401
  import optax  # noqa: F401
  import chex  # noqa: F401
  import orbax.checkpoint  # noqa: F401
  import transformers  # noqa: F401
  from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
  import ml_collections.config_flags  # noqa: F401
  import absl.app  # noqa: F401
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(path)
  listener.listen(64)
  signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
  print("ready", flush=True)
  while True:
    ready = select.select([listener, sys.stdin], [], [])[0]
    if sys.stdin in ready and not sys.stdin.readline():  # the test process has ended
      import shutil
      shutil.rmtree(os.path.dirname(path), ignore_errors=True)
      return 0
    if listener not in ready:
      continue
    conn, _ = listener.accept()
    if os.fork() == 0:  # the waiter
      listener.close()
      signal.signal(signal.SIGCHLD, signal.SIG_DFL)
      req = json.loads(conn.makefile("r").readline())
      pid = os.fork()
      if pid == 0:  # the command
        conn.close()
        return _run_command(req)
      _wait_and_report(conn, pid)
      os._exit(0)
    conn.close()


if __name__ == "__main__":
  sys.exit(serve(sys.argv[1]))
