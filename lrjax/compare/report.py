"""The outputs of a compare (`tabulate`): results.csv, stability.csv, RESULTS.md (means
± standard errors, the command, wall time, versions and machine) and the two plots."""
from __future__ import annotations

import math
import os
import platform
import subprocess

from lrjax import compare_plots, compare_stability
from lrjax.compare.plan import ROOT, Row
from lrjax.compare.results import (curve_series, result_of, stability_table, summarize,
                                   training_seconds, write_csv)
from lrjax.compare.workdir import read_log


def tabulate(rows: list[Row], workdir: str, command: str) -> list[dict]:
  """Writes results.csv, stability.csv, RESULTS.md and the two plots; returns the
  result rows."""
  results = [result_of(r) for r in rows if r.kind != "missing"]
  write_csv(results, os.path.join(workdir, "results.csv"))
  stable = stability_table(rows)
  write_csv(stable, os.path.join(workdir, "stability.csv"), compare_stability.COLUMNS)
  summary = summarize(results + [result_of(r) for r in rows if r.kind == "missing"])
  write_markdown(summary, rows, os.path.join(workdir, "RESULTS.md"), command,
                 tuple(compare_stability.markdown(stable, fmt)) if stable else ())
  methods = [r.method for r in rows]  # one style per method in both plots
  compare_plots.accuracy_vs_tokens(summary, os.path.join(workdir, "accuracy_vs_tokens.png"),
                                   methods)
  compare_plots.curves(curve_series(rows), os.path.join(workdir, "curves.png"), methods)
  return results


def fmt(pair: tuple[float, float], digits: int = 3) -> str:
  """'m ± se' ('–' for no value, 'm' without a standard error)."""
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
    lines.append(f"| {s['task']} | {s['method']} | {s['seeds']} | {fmt(s['accuracy'])} | "
                 f"{fmt(s['pass@1'])} | {fmt(s['pass@k'])} | {fmt(s['format_rate'])} | "
                 f"{fmt(s['response_tokens'], 1)} | {fmt(s['latent_steps'], 1)} | "
                 f"{fmt(s['gain'])} | {fmt(s['wall_s'], 0)} |")
  if missing:
    lines += ["", "Not available (no `configs/<method>.py` yet): " + ", ".join(missing) + "."]
  walls = [r["wall_s"] for r in read_log(os.path.dirname(path))
           if r.get("action") in ("finished", "stopped")]
  if walls:
    lines += ["", f"Wall time of this compare: {hms(sum(walls))} over {len(walls)} "
              "invocation(s) that trained (`finished` / `stopped` in compare_log.jsonl); "
              f"every warm-up and run's training summed: "
              f"{hms(training_seconds(os.path.dirname(path)))}."]
  lines += list(extra)
  lines += ["", "Versions and machine: " + versions(), ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def hms(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  return f"{m // 60} h {m % 60:02d} min {s:02d} s" if m >= 60 else f"{m} min {s:02d} s"


def versions() -> str:
  import jax
  import flax
  import optax
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT, check=False).stdout.strip() or "unknown"
  except OSError:
    rev = "unknown"
  dev = jax.devices()[0]
  return (f"lrjax {rev}, jax {jax.__version__}, flax {flax.__version__}, optax "
          f"{optax.__version__}, Python {platform.python_version()}; {platform.machine()} "
          f"{os.cpu_count()} cores, {dev.platform} ({dev.device_kind}) x {jax.device_count()}")
