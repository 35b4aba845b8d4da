"""Worker processes: each unit of a compare (`lrjax.compare.plan.Unit`) runs as
`python -m lrjax.compare --workdir=W --group=<unit>`, at most `jobs` at a time,
each pinned to a core of its own when there are enough."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lrjax.compare.plan import ROOT, Unit
from lrjax.compare.workdir import CONFIG_FILE


class WorkerFailed(RuntimeError):
  """A (task, seed) worker exited with an error (its log names it)."""


def worker_cpus(jobs: int) -> list[int] | None:
  """One core per worker slot when there are enough; None (no pinning) otherwise."""
  try:
    cpus = sorted(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return None
  return cpus[:jobs] if len(cpus) >= jobs else None


def run_workers(cfg, workdir: str, units: list[Unit], jobs: int) -> None:
  """Runs each unit in a worker process (`lrjax.compare` with `--group`), at most `jobs`
  at a time, longest first. Raises WorkerFailed naming the units whose worker
  failed, after the others finished."""
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(cfg.to_json(indent=2))
  os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
  # largest first (each method trains a phase of its own); stable: task, seed order kept
  pending = sorted(units, key=lambda u: -len(u.methods))
  cpus = worker_cpus(jobs)
  free = list(range(jobs))
  running: dict = {}  # Popen -> (unit, slot, start, log file)
  failed = []
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

  def stop(signum, frame):
    del frame
    for p in running:
      p.send_signal(signal.SIGTERM)
    for p in running:
      p.wait()
    sys.exit(128 + signum)

  previous = signal.signal(signal.SIGTERM, stop)
  try:
    while pending or running:
      while pending and free:
        unit, slot = pending.pop(0), free.pop(0)
        log_path = os.path.join(workdir, "logs", f"{unit.name}.log")
        log = open(log_path, "a")
        wenv = dict(env)
        if cpus is not None:
          wenv["LRJAX_COMPARE_CPU"] = str(cpus[slot])
        argv = [sys.executable, "-m", "lrjax.compare", f"--workdir={workdir}",
                f"--group={unit.flag}"]
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=wenv, cwd=ROOT)
        running[p] = (unit, slot, time.time(), log)
        where = f" on cpu {cpus[slot]}" if cpus is not None else ""
        print(f"[lrjax.compare] worker {unit.name}{where} started; log {log_path}", flush=True)
      time.sleep(0.5)
      for p in [p for p in running if p.poll() is not None]:
        unit, slot, start, log = running.pop(p)
        log.close()
        free.append(slot)
        status = "finished" if p.returncode == 0 else f"FAILED (exit {p.returncode})"
        print(f"[lrjax.compare] worker {unit.name} {status} after {time.time() - start:.0f} s",
              flush=True)
        if p.returncode != 0:
          failed.append(f"{unit.name} (exit {p.returncode}, log "
                        f"{os.path.join(workdir, 'logs', unit.name + '.log')})")
  except KeyboardInterrupt:
    stop(signal.SIGINT, None)
  finally:
    signal.signal(signal.SIGTERM, previous)
  if failed:
    raise WorkerFailed("lrjax.compare: these workers failed: " + "; ".join(failed) +
                       "; re-run the same command to retry them")
