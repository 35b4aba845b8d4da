"""Every method on the same tasks and seeds: one table, two plots.

    python -m lrjax.compare --config=configs/compare.py --workdir=runs/compare
    python -m lrjax.compare --config=configs/compare.py:smoke --workdir=runs/compare_smoke

For each task, seed and method (a config stem under configs/, e.g. `grpo`) the
method's own config runs in an ordinary lrjax workdir,
`<workdir>/<task>/s<seed>/<method>`, so each run resumes on its own and an
interrupted compare continues where it stopped (finished runs are skipped).

Warm-ups are shared. Every method whose mode includes `sft` has a warm-up key:
the hash of the config sections that decide its SFT phase (data, model, sft,
tokenizer, eval, seed, init, and whether the vocabulary needs the latent
tokens). The first method with a key trains it once, mode `sft`, in
`<workdir>/<task>/s<seed>/warmup-<key>`; an SFT-only method (CoT-SFT,
No-CoT, Coconut, LatR SFT) *is* its warm-up, and an RL method gets a copy of
the finished SFT phase (export, DONE, tokenizer and its metric lines) in its
own workdir before it runs, so its `sft` phase is reused. The continued-SFT
control (`sft_control`) continues the CoT-SFT warm-up of the same seed
(`sft.start_from`).

Outputs in the compare workdir:

* `results.csv`: one row per (task, method, seed) with `task, method, seed,
  accuracy, pass@1, pass@k, format_rate, response_tokens, latent_steps, gain,
  wall_s` from the run's `metrics.jsonl`: the last evaluation of the method's
  final phase; `gain` = that accuracy minus the first evaluation of the same
  phase (its starting model: RL step 0, the control's warm-up end, an SFT
  method's random init); `wall_s` = the seconds this compare spent training
  the row (an RL row: its RL phase; an SFT row: its warm-up).
* `RESULTS.md`: means ± standard errors over seeds per (task, method), the
  command, versions and machine; methods without a config are listed as such;
  a training-stability section for the RL rows (`lrjax.compare_stability`).
* `stability.csv`: per RL run, the spread of `train/correct` over its last 20%
  of steps and its gradient-norm spikes.
* `accuracy_vs_tokens.png` and `curves.png` (`lrjax.compare_plots`).
* `compare_log.jsonl`: one line per action (`warmup`, `run`, `reuse`, and
  `finished` / `stopped` with the wall seconds of an invocation that trained
  something).

Parallel workers (`jobs` > 1): the methods of one task and seed that share a
warm-up form a unit (`Compare.units`: e.g. CoT-SFT, the control, token GRPO,
HRPO, LEPO and Latent-GRPO on the CoT warm-up; LatR GRPO and Latent RL on the
LatR model; Coconut alone), and units are independent, so each runs in its own
worker process, `python -m lrjax.compare --workdir=W
--group=<task>:<seed>:<method>,...`, reading the compare config the parent
wrote to `W/compare_config.json`; at most `jobs` at a time, largest units
first, each pinned to one CPU core when there are at least `jobs` cores (an RL
rollout keeps about one core busy, so two pinned workers on 2 cores train ~1.3x
faster than one run after another). Their output goes to
`W/logs/<task>_s<seed>_<methods>.log`. The parent then tabulates
(the in-process pass that follows finds every run finished). SIGTERM or Ctrl-C
in the parent is passed to the workers, which save a checkpoint and stop.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from absl import app, flags
from ml_collections import config_flags

import lrjax.methods  # noqa: F401  (registers the shipped methods)
from lrjax import compare_plots, compare_stability
from lrjax.compare_plots import mean_se
from lrjax.config_utils import mode_phases

COLUMNS = ("task", "method", "seed", "accuracy", "pass@1", "pass@k", "format_rate",
           "response_tokens", "latent_steps", "gain", "wall_s")
WALL_FILE = "compare_wall.json"
# The config sections that decide an SFT phase's result (the warm-up key).
WARMUP_SECTIONS = ("data", "model", "sft", "tokenizer", "eval")


def _configs_dir() -> str:
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def method_available(stem: str) -> bool:
  return os.path.exists(os.path.join(_configs_dir(), f"{stem}.py"))


def parse_override(text: str) -> tuple[str, object]:
  """'rl.steps=4' -> ('rl.steps', 4): the value read as a Python literal, else a string."""
  import ast
  if "=" not in text:
    raise ValueError(f"override {text!r} is not 'field=value'")
  field, raw = text.split("=", 1)
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return field.strip(), value


def apply_overrides(config, overrides) -> None:
  """Sets each 'a.b=value' on the config; an unknown field is an error naming it."""
  for text in overrides:
    field, value = parse_override(text)
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise ValueError(f"override {text!r}: unknown config field {field!r}")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"override {text!r}: unknown config field {field!r}")
    with node.ignore_type():
      node[leaf] = value


def method_config(stem: str, task: str, seed: int, compare_cfg):
  """The method's config for `task` and `seed`, with the compare's overrides (`all`,
  then the method's own)."""
  root = os.path.dirname(_configs_dir())
  if root not in sys.path:
    sys.path.insert(0, root)
  module = importlib.import_module(f"configs.{stem}")
  c = module.get_config(task)
  c.seed = int(seed)
  overrides = compare_cfg.overrides
  apply_overrides(c, tuple(overrides.get("all", ())) + tuple(overrides.get(stem, ())))
  return c


def phases_of(config) -> list[str]:
  return mode_phases(config.mode)


def kind_of(stem: str, config) -> str:
  """'control' (continues a warm-up), 'rl' (its last phase is rl) or 'sft'."""
  if "start_from" in config.sft and stem == "sft_control":
    return "control"
  return "rl" if phases_of(config)[-1] == "rl" else "sft"


def warmup_key(config) -> str:
  """Equal for two configs exactly when their SFT phases train the same model."""
  from lrjax.phases.run import needs_latent_tokens
  doc = {k: config[k].to_dict() for k in WARMUP_SECTIONS}
  doc["sft"].pop("start_from", None)
  doc.update(seed=int(config.seed), init=config.init, latent_tokens=needs_latent_tokens(config))
  return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Row:
  task: str
  method: str
  seed: int
  kind: str
  workdir: str | None  # None: the method has no config
  phase: str = "rl"
  start_step: int | None = None  # the control: the warm-up's last step


@dataclass(frozen=True)
class Unit:
  """Methods of one task and seed that share a warm-up: one worker's work."""
  task: str
  seed: int
  methods: tuple[str, ...]

  @property
  def name(self) -> str:
    return f"{self.task}_s{self.seed}_{'+'.join(self.methods)}"

  @property
  def flag(self) -> str:
    return f"{self.task}:{self.seed}:{','.join(self.methods)}"


class Compare:
  """Runs and tabulates one compare config in `workdir`."""

  def __init__(self, cfg, workdir: str, runner=None):
    self.cfg, self.workdir = cfg, workdir
    self.runner = runner or run_in_process
    self.planning = False  # True: train() raises _Unfinished instead of training
    os.makedirs(workdir, exist_ok=True)

  # ------------------------------------------------------------------ bookkeeping
  def log(self, **rec) -> None:
    with open(os.path.join(self.workdir, "compare_log.jsonl"), "a") as f:
      f.write(json.dumps({"time": time.time(), **rec}) + "\n")

  def methods_for(self, task: str) -> tuple[str, ...]:
    per_task = self.cfg.task_methods.get(task) if "task_methods" in self.cfg else None
    return tuple(per_task if per_task else self.cfg.methods)

  # ------------------------------------------------------------------ running
  def train(self, config, workdir: str, action: str, task: str, method: str, seed: int) -> None:
    """Runs `config` in `workdir` unless its last phase is done; records the wall time."""
    last = phases_of(config)[-1]
    if os.path.exists(os.path.join(workdir, last, "DONE")):
      return
    if self.planning:
      raise _Unfinished
    self.log(action=action, task=task, method=method, seed=seed, workdir=workdir)
    print(f"[lrjax.compare] {action}: {task} seed {seed} {method} -> {workdir}", flush=True)
    wall_path = os.path.join(workdir, WALL_FILE)
    spent = _read_json(wall_path).get("wall_s", 0.0)
    t0 = time.time()
    try:
      self.runner(config, workdir)
    finally:
      os.makedirs(workdir, exist_ok=True)
      with open(wall_path, "w") as f:
        json.dump({"wall_s": spent + time.time() - t0}, f)

  def warmup(self, config, task: str, seed: int, method: str) -> str:
    """The shared warm-up workdir of `config`'s SFT phase, trained if needed."""
    key = warmup_key(config)
    path = os.path.join(self.workdir, task, f"s{seed}", f"warmup-{key}")
    w = config.copy_and_resolve_references()
    w.mode = "sft"
    self.train(w, path, "warmup", task, method, seed)
    return path

  def run_task_seed(self, task: str, seed: int, only: tuple[str, ...] | None = None) -> list[Row]:
    """The rows of one task and seed (of the methods in `only`, if given), training
    what is missing."""
    rows = []
    for stem in self.methods_for(task):
      if only is not None and stem not in only:
        continue
      if not method_available(stem):
        rows.append(Row(task, stem, seed, "missing", None))
        continue
      c = method_config(stem, task, seed, self.cfg)
      kind = kind_of(stem, c)
      if kind == "control":
        base = method_config("sft", task, seed, self.cfg)
        start = self.warmup(base, task, seed, "sft")
        c.sft.start_from = start
        path = os.path.join(self.workdir, task, f"s{seed}", stem)
        self.train(c, path, "run", task, stem, seed)
        rows.append(Row(task, stem, seed, kind, path, "sft", int(base.sft.steps)))
      elif kind == "sft":
        rows.append(Row(task, stem, seed, kind, self.warmup(c, task, seed, stem), "sft"))
      else:
        path = os.path.join(self.workdir, task, f"s{seed}", stem)
        if "sft" in phases_of(c) and not os.path.exists(os.path.join(path, "sft", "DONE")):
          copy_warmup(self.warmup(c, task, seed, stem), path)
          self.log(action="reuse", task=task, method=stem, seed=seed, workdir=path)
        self.train(c, path, "run", task, stem, seed)
        rows.append(Row(task, stem, seed, kind, path, "rl"))
    return rows

  def seeds_for(self, task: str) -> tuple[int, ...]:
    per_task = self.cfg.task_seeds.get(task) if "task_seeds" in self.cfg else None
    return tuple(int(s) for s in (per_task if per_task else self.cfg.seeds))

  def groups(self) -> list[tuple[str, int]]:
    return [(task, seed) for task in self.cfg.tasks for seed in self.seeds_for(task)]

  def units(self) -> list[Unit]:
    """The independent pieces of work: per (task, seed), the methods that share a
    warm-up (the continued-SFT control goes with the CoT warm-up it continues; a
    method without an SFT phase is a unit of its own)."""
    out = []
    for task, seed in self.groups():
      by_key: dict[str, list[str]] = {}
      for stem in self.methods_for(task):
        if not method_available(stem):
          continue
        c = method_config(stem, task, seed, self.cfg)
        if kind_of(stem, c) == "control":
          key = warmup_key(method_config("sft", task, seed, self.cfg))
        else:
          key = warmup_key(c) if "sft" in phases_of(c) else stem
        by_key.setdefault(key, []).append(stem)
      out += [Unit(task, seed, tuple(m)) for m in by_key.values()]
    return out

  def run(self) -> list[Row]:
    """Trains what is missing and returns the rows. The invocation's wall seconds are
    logged (`finished`, or `stopped` when interrupted) when it trained something."""
    t0, logged, done = time.time(), self._log_length(), False
    try:
      if int(self.cfg.get("jobs", 1)) > 1:
        unfinished = [u for u in self.units() if not self.finished(u)]
        if len(unfinished) > 1:
          run_workers(self.cfg, self.workdir, unfinished, int(self.cfg.jobs))
      rows = []
      for task, seed in self.groups():  # after workers: finds every run finished
        rows.extend(self.run_task_seed(task, seed))
      done = True
    finally:
      if self._log_length() > logged:
        self.log(action="finished" if done else "stopped", wall_s=time.time() - t0)
    return rows

  def finished(self, unit: Unit) -> bool:
    """Whether every run of the unit is done (a dry pass: nothing trains; a finished
    warm-up may be copied into an RL run's folder, as the real pass would)."""
    self.planning = True
    try:
      self.run_task_seed(unit.task, unit.seed, unit.methods)
      return True
    except _Unfinished:
      return False
    finally:
      self.planning = False

  def _log_length(self) -> int:
    return len(_read_log(self.workdir))


CONFIG_FILE = "compare_config.json"


class _Unfinished(Exception):
  """A dry pass (`Compare.finished`) met a run that would train."""


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
  """Runs each unit in a worker process (this module with `--group`), at most `jobs`
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
  root = os.path.dirname(_configs_dir())
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

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
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=wenv, cwd=root)
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


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


# ---------------------------------------------------------------------- results


def evals_of(row: Row) -> list[dict]:
  """The row's evaluation records of its final phase, in step order."""
  from lrjax.metrics import read_metrics
  recs = [r for r in read_metrics(row.workdir)
          if r.get("phase") == row.phase and "eval/accuracy" in r]
  if row.start_step is not None:
    recs = [r for r in recs if r["step"] >= row.start_step]
  return sorted(recs, key=lambda r: r["step"])


def result_of(row: Row) -> dict:
  """One results.csv row (NaN where the run did not record the value)."""
  out = {"task": row.task, "method": row.method, "seed": row.seed}
  evals = evals_of(row) if row.workdir else []
  if not evals:
    return {**out, **{k: math.nan for k in COLUMNS[3:]}}
  last, first = evals[-1], evals[0]
  ks = sorted(int(k.split("@")[1]) for k in last if k.startswith("eval/pass@"))
  out.update({
      "accuracy": last["eval/accuracy"],
      "pass@1": last.get("eval/pass@1", math.nan),
      "pass@k": last.get(f"eval/pass@{ks[-1]}", math.nan) if ks else math.nan,
      "format_rate": last.get("eval/format_rate", math.nan),
      "response_tokens": last.get("eval/response_tokens", math.nan),
      "latent_steps": last.get("eval/latent_steps", math.nan),
      "gain": last["eval/accuracy"] - first["eval/accuracy"],
      "wall_s": _read_json(os.path.join(row.workdir, WALL_FILE)).get("wall_s", math.nan)})
  return out


def write_csv(results: list[dict], path: str, columns: tuple[str, ...] = COLUMNS) -> None:
  import csv
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    for r in results:
      w.writerow({k: r[k] for k in columns})


def summarize(results: list[dict]) -> list[dict]:
  """Per (task, method): n seeds and mean ± s.e. of every numeric column."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in results:
    groups.setdefault((r["task"], r["method"]), []).append(r)
  out = []
  for (task, method), rs in groups.items():
    s = {"task": task, "method": method,
         "seeds": sum(not math.isnan(r["accuracy"]) for r in rs)}
    for k in COLUMNS[3:]:
      s[k] = mean_se([float(r[k]) for r in rs])
    out.append(s)
  return out


def _fmt(pair: tuple[float, float], digits: int = 3) -> str:
  m, se = pair
  if math.isnan(m):
    return "–"
  return f"{m:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def write_markdown(summary: list[dict], rows: list[Row], path: str, command: str,
                   extra: tuple[str, ...] = ()) -> None:
  missing = sorted({r.method for r in rows if r.kind == "missing"})
  lines = ["# lrjax compare", "", f"    {command}", "",
           "Means ± standard errors over seeds; greedy accuracy on each task's held-out "
           "problems; gain = accuracy minus the method's own starting model's; wall = "
           "seconds of training this compare spent on the row (RL rows: the RL phase; "
           "SFT rows: the warm-up).", "",
           "| task | method | seeds | accuracy | pass@1 | pass@k | format | response tokens "
           "| latent steps | gain | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in summary:
    if s["method"] in missing:
      continue
    lines.append(f"| {s['task']} | {s['method']} | {s['seeds']} | {_fmt(s['accuracy'])} | "
                 f"{_fmt(s['pass@1'])} | {_fmt(s['pass@k'])} | {_fmt(s['format_rate'])} | "
                 f"{_fmt(s['response_tokens'], 1)} | {_fmt(s['latent_steps'], 1)} | "
                 f"{_fmt(s['gain'])} | {_fmt(s['wall_s'], 0)} |")
  if missing:
    lines += ["", "Not available (no `configs/<method>.py` yet): " + ", ".join(missing) + "."]
  walls = [r["wall_s"] for r in _read_log(os.path.dirname(path))
           if r.get("action") in ("finished", "stopped")]
  if walls:
    lines += ["", f"Wall time of this compare: {_hms(sum(walls))} over {len(walls)} "
              "invocation(s) that trained (`finished` / `stopped` in compare_log.jsonl); "
              f"every warm-up and run's training summed: "
              f"{_hms(training_seconds(os.path.dirname(path)))}."]
  lines += list(extra)
  lines += ["", "Versions and machine: " + versions(), ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def training_seconds(workdir: str) -> float:
  """The wall seconds recorded by every warm-up and run under `workdir` (their
  `compare_wall.json`), shared warm-ups that are no row of their own included."""
  total = 0.0
  for folder, _, files in os.walk(workdir):
    if WALL_FILE in files:
      total += float(_read_json(os.path.join(folder, WALL_FILE)).get("wall_s", 0.0))
  return total


def _hms(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  return f"{m // 60} h {m % 60:02d} min {s:02d} s" if m >= 60 else f"{m} min {s:02d} s"


def _read_log(workdir: str) -> list[dict]:
  try:
    with open(os.path.join(workdir, "compare_log.jsonl")) as f:
      return [json.loads(line) for line in f if line.strip()]
  except OSError:
    return []


def versions() -> str:
  import jax
  import flax
  import optax
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=os.path.dirname(_configs_dir()),
                         check=False).stdout.strip() or "unknown"
  except OSError:
    rev = "unknown"
  dev = jax.devices()[0]
  return (f"lrjax {rev}, jax {jax.__version__}, flax {flax.__version__}, optax "
          f"{optax.__version__}, Python {platform.python_version()}; {platform.machine()} "
          f"{os.cpu_count()} cores, {dev.platform} ({dev.device_kind}) x {jax.device_count()}")


def curve_series(rows: list[Row]) -> dict:
  """{task: {method: {seed: {rl step: accuracy}}}} of the RL rows."""
  out: dict = {}
  for r in rows:
    if r.kind == "rl":
      by_step = out.setdefault(r.task, {}).setdefault(r.method, {}).setdefault(r.seed, {})
      for e in evals_of(r):
        by_step[int(e["step"])] = float(e["eval/accuracy"])
  return out


def stability_table(rows: list[Row]) -> list[dict]:
  """`lrjax.compare_stability`'s numbers for every RL row."""
  from lrjax.metrics import read_metrics
  return [{"task": r.task, "method": r.method, "seed": r.seed,
           **compare_stability.stability_of(read_metrics(r.workdir))}
          for r in rows if r.kind == "rl"]


def tabulate(rows: list[Row], workdir: str, command: str) -> list[dict]:
  """Writes results.csv, stability.csv, RESULTS.md and the two plots; returns the
  result rows."""
  results = [result_of(r) for r in rows if r.kind != "missing"]
  write_csv(results, os.path.join(workdir, "results.csv"))
  stable = stability_table(rows)
  write_csv(stable, os.path.join(workdir, "stability.csv"), compare_stability.COLUMNS)
  summary = summarize(results + [result_of(r) for r in rows if r.kind == "missing"])
  write_markdown(summary, rows, os.path.join(workdir, "RESULTS.md"), command,
                 tuple(compare_stability.markdown(stable, _fmt)) if stable else ())
  methods = [r.method for r in rows]  # one style per method in both plots
  compare_plots.accuracy_vs_tokens(summary, os.path.join(workdir, "accuracy_vs_tokens.png"),
                                   methods)
  compare_plots.curves(curve_series(rows), os.path.join(workdir, "curves.png"), methods)
  return results


def main(argv, cfg, workdir: str, group: str = "") -> None:
  del argv
  from absl import logging as absl_logging
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if group:
    run_group(workdir, group)
    return
  if cfg is None:
    sys.exit("lrjax.compare: --config is required (e.g. --config=configs/compare.py)")
  command = "python -m lrjax.compare " + " ".join(sys.argv[1:])
  try:
    rows = Compare(cfg, workdir).run()
  except WorkerFailed as e:
    sys.exit(str(e))
  tabulate(rows, workdir, command)
  with open(os.path.join(workdir, "RESULTS.md")) as f:
    print(f.read(), flush=True)


if __name__ == "__main__":  # the flags exist only in the command (the module is imported too)
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/compare.py",
                                            lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "the compare workdir")
  _GROUP = flags.DEFINE_string("group", "", "internal: run one '<task>:<seed>:<methods>' unit as a "
                               "worker of the compare in --workdir")
  app.run(lambda argv: main(argv, _CONFIG.value, _WORKDIR.value, _GROUP.value))
