"""Multi-process runs: `jax.distributed.initialize()` when the runtime says so.

One program runs as one process (a laptop, one GPU, a one-host TPU VM) or as
one process per host (a TPU pod slice, a CPU/GPU cluster). The process group
comes from, in this order:

    config.distributed.{coordinator_address, num_processes, process_id}
    the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    LRJAX_DISTRIBUTED=1 (or a TPU_WORKER_HOSTNAMES list of several hosts):
      JAX's own cluster detection (TPU pod metadata, SLURM, Open MPI) fills
      in whatever the two above leave unset

and nothing of these means one process. `maybe_initialize_distributed` must
run before JAX touches a backend (the first `jax.devices()`); `Run.create`
calls it first.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def _int(value: Any, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"distributed: {name} must be an integer, got {value!r}") from None


def settings(dist_cfg: Any = None, environ: Mapping[str, str] | None = None) -> dict:
  """{coordinator_address, num_processes, process_id, auto}: the config's fields where
  set ('' / 0 / -1 = unset), else the environment's; `auto` = JAX's cluster detection
  was asked for (LRJAX_DISTRIBUTED=1) or a TPU pod lists several workers."""
  env = os.environ if environ is None else environ
  get = lambda k, unset: getattr(dist_cfg, k, unset) if dist_cfg is not None else unset
  addr = get("coordinator_address", "") or env.get(_ENV["coordinator_address"], "")
  n = _int(get("num_processes", 0) or env.get(_ENV["num_processes"], "") or 0,
           "num_processes (config.distributed.num_processes / JAX_NUM_PROCESSES)")
  pid = _int(get("process_id", -1), "config.distributed.process_id")
  if pid < 0 and env.get(_ENV["process_id"], "") != "":
    pid = _int(env[_ENV["process_id"]], "JAX_PROCESS_ID")
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  auto = env.get("LRJAX_DISTRIBUTED", "") == "1" or len(hosts) > 1
  return {"coordinator_address": addr, "num_processes": n, "process_id": pid, "auto": auto}


def initialize_args(s: dict) -> dict | None:
  """The keyword arguments of `jax.distributed.initialize` for `settings` `s`, or None
  for a single process; a ValueError names what is missing or out of range."""
  addr, n, pid = s["coordinator_address"], s["num_processes"], s["process_id"]
  if n < 0:
    raise ValueError(f"distributed: num_processes must be >= 1, got {n}")
  if n and not -1 <= pid < n:
    raise ValueError(f"distributed: process id {pid} is out of range for {n} processes "
                     f"(0..{n - 1})")
  if pid < -1:
    raise ValueError(f"distributed: process id must be >= 0, got {pid}")
  if s["auto"]:  # JAX detects what is unset
    return {"coordinator_address": addr or None, "num_processes": n or None,
            "process_id": None if pid < 0 else pid}
  if n == 1 or (n == 0 and not addr and pid < 0):
    return None
  missing = [what for what, bad in (
      ("a coordinator address (config.distributed.coordinator_address or "
       "JAX_COORDINATOR_ADDRESS, host:port of process 0)", not addr),
      ("the number of processes (config.distributed.num_processes or JAX_NUM_PROCESSES)", n == 0),
      ("this process's id (config.distributed.process_id or JAX_PROCESS_ID)", pid < 0)) if bad]
  if missing:
    raise ValueError("distributed: a multi-process run needs " + "; ".join(missing) +
                     " (or LRJAX_DISTRIBUTED=1 to let JAX detect the cluster)")
  return {"coordinator_address": addr, "num_processes": n, "process_id": pid}


def maybe_initialize_distributed(dist_cfg: Any = None) -> bool:
  """Joins the process group the config / environment describe (module doc); True if
  this call initialised it. A single process, or a group already joined, is left as is."""
  if jax.distributed.is_initialized():
    return False
  args = initialize_args(settings(dist_cfg))
  if args is None:
    return False
  try:
    jax.distributed.initialize(**args)
  except RuntimeError as e:
    if "before" in str(e).lower():  # a backend is already up: too late to join a group
      raise ValueError("distributed: jax.distributed.initialize must run before JAX uses a "
                       f"device; start the process with the settings instead ({e})") from e
    raise
  return True
