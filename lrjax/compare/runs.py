"""Training what a compare's plan lists: `Compare` runs each training in this process
(or hands the units to worker processes first, `lrjax.compare.workers`), shares
the warm-ups, and records the actions and wall seconds in the compare workdir."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

import lrjax.methods  # noqa: F401  (registers the shipped methods)
from lrjax.compare import workers
from lrjax.compare.plan import Plan, Row, Training, Unit
from lrjax.compare.workdir import CONFIG_FILE, WALL_FILE, append_log, read_json, read_log


class Compare(Plan):
  """Runs and tabulates one compare config in `workdir`."""

  def __init__(self, cfg, workdir: str, runner=None):
    super().__init__(cfg, workdir)
    self.runner = runner or run_in_process
    os.makedirs(workdir, exist_ok=True)

  def log(self, **rec) -> None:
    append_log(self.workdir, **rec)

  def train(self, t: Training) -> None:
    """Runs `t` unless its last phase is done; records the wall time."""
    if t.done():
      return
    self.log(action=t.action, task=t.task, method=t.method, seed=t.seed, workdir=t.workdir)
    print(f"[lrjax.compare] {t.action}: {t.task} seed {t.seed} {t.method} -> {t.workdir}",
          flush=True)
    wall_path = os.path.join(t.workdir, WALL_FILE)
    spent = read_json(wall_path).get("wall_s", 0.0)
    t0 = time.time()
    try:
      self.runner(t.config, t.workdir)
    finally:
      os.makedirs(t.workdir, exist_ok=True)
      with open(wall_path, "w") as f:
        json.dump({"wall_s": spent + time.time() - t0}, f)

  def run_task_seed(self, task: str, seed: int, only: tuple[str, ...] | None = None) -> list[Row]:
    """The rows of one task and seed (of the methods in `only`, if given), training
    what is missing."""
    rows, todo = self.trainings(task, seed, only)
    for t in todo:
      if t.reuse and not os.path.exists(os.path.join(t.workdir, "sft", "DONE")):
        copy_warmup(t.reuse, t.workdir)
        self.log(action="reuse", task=t.task, method=t.method, seed=t.seed, workdir=t.workdir)
      self.train(t)
    return rows

  def run(self) -> list[Row]:
    """Trains what is missing and returns the rows. The invocation's wall seconds are
    logged (`finished`, or `stopped` when interrupted) when it trained something."""
    t0, logged, done = time.time(), len(read_log(self.workdir)), False
    try:
      if int(self.cfg.get("jobs", 1)) > 1:
        unfinished = [u for u in self.units() if not self.finished(u)]
        if len(unfinished) > 1:
          workers.run_workers(self.cfg, self.workdir, unfinished, int(self.cfg.jobs))
      rows = []
      for task, seed in self.groups():  # after workers: finds every run finished
        rows.extend(self.run_task_seed(task, seed))
      done = True
    finally:
      if len(read_log(self.workdir)) > logged:
        self.log(action="finished" if done else "stopped", wall_s=time.time() - t0)
    return rows

  def finished(self, unit: Unit) -> bool:
    """Whether every training of the unit is done (nothing trains)."""
    return all(t.done() for t in self.trainings(unit.task, unit.seed, unit.methods)[1])


def run_group(workdir: str, group: str) -> None:
  """A worker: one unit ('<task>:<seed>:<method>,<method>...') of the compare config
  in `workdir`."""
  import ml_collections
  cpu = os.environ.get("LRJAX_COMPARE_CPU")
  if cpu is not None:
    os.sched_setaffinity(0, {int(cpu)})
  task, seed, methods = group.split(":")
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  known = Compare(cfg, workdir).methods_for(task)
  unknown = [m for m in methods.split(",") if m not in known]
  if unknown:
    sys.exit(f"lrjax.compare: --group={group}: {', '.join(unknown)} is not a method of task "
             f"{task!r} in {os.path.join(workdir, CONFIG_FILE)} ({', '.join(known)})")
  cfg.tasks, cfg.seeds, cfg.jobs = (task,), (int(seed),), 1
  cfg.task_seeds = ml_collections.ConfigDict()
  Compare(cfg, workdir).run_task_seed(task, int(seed), tuple(methods.split(",")))


def run_in_process(config, workdir: str) -> None:
  """One lrjax run in this process (compiled functions are shared between runs)."""
  from lrjax.phases.pipeline import prepare, run_phases
  run_phases(*prepare(config, workdir))


def copy_warmup(warm: str, dest: str) -> None:
  """A finished SFT phase (export, DONE, tokenizer, metric lines) into `dest`."""
  from lrjax.metrics import read_metrics
  os.makedirs(os.path.join(dest, "sft"), exist_ok=True)
  for name in ("export", "DONE"):
    src, dst = os.path.join(warm, "sft", name), os.path.join(dest, "sft", name)
    if os.path.isdir(src):
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      shutil.copy2(src, dst)
  if os.path.isdir(os.path.join(warm, "tokenizer")):
    shutil.copytree(os.path.join(warm, "tokenizer"), os.path.join(dest, "tokenizer"),
                    dirs_exist_ok=True)
  lines = [r for r in read_metrics(warm) if r.get("phase") == "sft"]
  with open(os.path.join(dest, "metrics.jsonl"), "w") as f:
    for r in lines:
      f.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in r.items()}) + "\n")
