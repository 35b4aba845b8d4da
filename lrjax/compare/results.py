"""The numbers of a compare, read from its runs' `metrics.jsonl`: one results row
per run, the per-method summary over seeds, the RL curves and stability rows."""
from __future__ import annotations

import csv
import math
import os

from lrjax import compare_stability
from lrjax.compare.plan import Row
from lrjax.compare.workdir import WALL_FILE, read_json
from lrjax.compare_plots import mean_se

COLUMNS = ("task", "method", "seed", "accuracy", "pass@1", "pass@k", "format_rate",
           "response_tokens", "latent_steps", "gain", "wall_s")


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
      "wall_s": read_json(os.path.join(row.workdir, WALL_FILE)).get("wall_s", math.nan)})
  return out


def write_csv(results: list[dict], path: str, columns: tuple[str, ...] = COLUMNS) -> None:
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


def training_seconds(workdir: str) -> float:
  """The wall seconds recorded by every warm-up and run under `workdir` (their
  `compare_wall.json`), shared warm-ups that are no row of their own included."""
  total = 0.0
  for folder, _, files in os.walk(workdir):
    if WALL_FILE in files:
      total += float(read_json(os.path.join(folder, WALL_FILE)).get("wall_s", 0.0))
  return total
