"""How steadily each RL row of a compare trained (`stability.csv`, a RESULTS.md section).

Two numbers per run, from its `metrics.jsonl` RL training lines (the compare logs
every RL step):

* `correct_std`: the standard deviation (ddof 1) of `train/correct` — the share
  of the step's rollouts with a correct answer — over the last 20% of the
  steps. A run that has settled varies only by the sampling of its batches.
* `grad_spikes`: the number of steps whose `train/grad_norm` exceeds 3x the
  median of all earlier steps' norms (counted from the 10th step on, so the
  median has something to stand on).

DLR's paper claims its latent-space RL trains more stably than token RL; these
are the measurements of that claim (not of accuracy).
"""
from __future__ import annotations

import math

import numpy as np

from lrjax.compare_plots import mean_se

SPIKE_FACTOR = 3.0
MIN_HISTORY = 10
TAIL = 0.2
COLUMNS = ("task", "method", "seed", "steps", "correct_std", "grad_spikes", "grad_norm_median")


def grad_spikes(norms, factor: float = SPIKE_FACTOR, min_history: int = MIN_HISTORY) -> int:
  """#{t >= min_history : g_t > factor * median(g_0 .. g_{t-1})} (non-finite norms skipped)."""
  g = [float(x) for x in norms if x is not None and math.isfinite(float(x))]
  return sum(g[t] > factor * float(np.median(g[:t])) for t in range(min_history, len(g)))


def tail_std(values, tail: float = TAIL) -> float:
  """The sample standard deviation of the last `tail` share of `values` (NaN below 2)."""
  v = [float(x) for x in values if x is not None]
  last = v[len(v) - int(round(tail * len(v))):]
  return float(np.std(last, ddof=1)) if len(last) >= 2 else math.nan


def stability_of(records: list[dict]) -> dict:
  """The two numbers (and the step count, the median norm) of one run's RL lines."""
  lines = sorted((r for r in records if r.get("phase") == "rl" and "train/grad_norm" in r),
                 key=lambda r: r["step"])
  finite = [float(r["train/grad_norm"]) for r in lines if r["train/grad_norm"] is not None
            and math.isfinite(float(r["train/grad_norm"]))]
  correct = [r["train/correct"] for r in lines if "train/correct" in r]
  return {"steps": len(lines), "correct_std": tail_std(correct),
          "grad_spikes": grad_spikes(finite) if lines else math.nan,
          "grad_norm_median": float(np.median(finite)) if finite else math.nan}


def markdown(table: list[dict], fmt) -> list[str]:
  """RESULTS.md lines: mean ± s.e. over seeds per (task, method); `fmt((mean, se),
  digits)` writes a cell (`lrjax.compare`'s, so both tables read alike)."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in table:
    groups.setdefault((r["task"], r["method"]), []).append(r)
  out = ["", "## Training stability (RL rows)", "",
         f"Standard deviation of `train/correct` (the share of correct rollouts) over the "
         f"last {TAIL:.0%} of RL steps, and steps whose gradient norm exceeds "
         f"{SPIKE_FACTOR:g}x the median of the earlier steps' (from step {MIN_HISTORY}); "
         "means ± standard errors over seeds (`stability.csv` has each run).", "",
         "| task | method | seeds | correct std, last 20% | grad-norm spikes | median grad norm |",
         "|---|---|---|---|---|---|"]
  for (task, method), rs in groups.items():
    cells = [fmt(mean_se([float(r[k]) for r in rs]), digits)
             for k, digits in (("correct_std", 3), ("grad_spikes", 1), ("grad_norm_median", 3))]
    out.append(f"| {task} | {method} | {len(rs)} | " + " | ".join(cells) + " |")
  return out
