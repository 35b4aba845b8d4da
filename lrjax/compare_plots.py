"""The two plots of `lrjax.compare`.

* `accuracy_vs_tokens(summary, path, methods)`: each method's mean greedy accuracy against
  its mean response length (positions, latent ones included), error bars of one
  standard error both ways, one marker per (task, method).
* `curves(series, path, methods)`: held-out accuracy against RL step per RL method (mean over
  seeds, a band of ± one standard error) and, beside it, each seed's gain over its
  own RL step 0; one row per task.

`methods` (all of the compare's) fixes each method's marker and colour (`styles`), the
same in both plots. `mean_se` is the mean ± standard error both use (and `lrjax.compare`'s table).
"""
from __future__ import annotations

import math


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


MARKERS = "osD^v<>pPX*hd"


def styles(methods) -> dict[str, tuple[str, tuple]]:
  """{method: (marker, colour)}, fixed by the sorted method names: given the same
  names (the compare's methods), a method looks the same in every panel and both plots;
  20 distinct colours (tab20, dark shades first)."""
  colours = _plt().get_cmap("tab20").colors
  order = [colours[j] for j in range(0, 20, 2)] + [colours[j] for j in range(1, 20, 2)]
  return {m: (MARKERS[k % len(MARKERS)], order[k % len(order)])
          for k, m in enumerate(sorted(set(methods)))}


def accuracy_vs_tokens(summary: list[dict], path: str, methods=()) -> None:
  """One row per task: every method (left) and, zoomed, the methods whose response
  length is within 10% of the most accurate one's (right; where the RL methods
  cluster), each point its mean ± 1 s.e. both ways."""
  plt = _plt()
  points: dict[str, list[tuple]] = {}
  for s in summary:
    (acc, acc_se), (tok, tok_se) = s["accuracy"], s["response_tokens"]
    if not (math.isnan(acc) or math.isnan(tok)):
      points.setdefault(s["task"], []).append(
          (s["method"], tok, 0.0 if math.isnan(tok_se) else tok_se, acc,
           0.0 if math.isnan(acc_se) else acc_se))
  tasks = sorted(points) or [""]
  look = styles([*methods, *(p[0] for pts in points.values() for p in pts)])
  fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.5 * len(tasks)), squeeze=False)
  for (ax_all, ax_zoom), task in zip(axes, tasks):
    pts = points.get(task, [])
    best_tok = max(pts, key=lambda p: p[3])[1] if pts else 0.0
    for m, tok, tok_se, acc, acc_se in pts:
      style = dict(fmt=look[m][0], capsize=3, color=look[m][1], label=m)
      ax_all.errorbar(tok, acc, xerr=tok_se, yerr=acc_se, **style)
      ax_all.annotate(m, (tok, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
      if abs(tok - best_tok) <= 0.1 * max(best_tok, 1e-9):
        ax_zoom.errorbar(tok, acc, xerr=tok_se, yerr=acc_se, **style)
    ax_all.set_title(f"{task}: accuracy against response length (± 1 s.e. over seeds)")
    ax_zoom.set_title(f"{task}: zoom near the most accurate method's length")
    for ax in (ax_all, ax_zoom):
      ax.set_xlabel("response positions (mean; latent ones included)")
      ax.set_ylabel("held-out greedy accuracy (mean)")
      ax.grid(alpha=0.3)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def curves(series: dict, path: str, methods=()) -> None:
  """series: {task: {method: {seed: {rl step: held-out accuracy}}}}. One row per task:
  the accuracy (left: mean ± 1 s.e. over seeds) and each seed's gain over its own
  RL step 0 (right: paired, so the spread between seeds' starting models drops out)."""
  plt = _plt()
  tasks = sorted(series) or [""]
  look = styles([*methods, *(m for by_method in series.values() for m in by_method)])
  fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.5 * len(tasks)), squeeze=False)
  for (ax_acc, ax_gain), task in zip(axes, tasks):
    for m, by_seed in sorted(series.get(task, {}).items()):
      steps = sorted({st for runs in by_seed.values() for st in runs})
      if not steps:
        continue
      acc = [mean_se([r[st] for r in by_seed.values() if st in r]) for st in steps]
      gain = [mean_se([r[st] - r[min(r)] for r in by_seed.values() if st in r]) for st in steps]
      for ax, stats in ((ax_acc, acc), (ax_gain, gain)):
        mean = [a for a, _ in stats]
        se = [0.0 if math.isnan(b) else b for _, b in stats]
        ax.plot(steps, mean, marker=look[m][0], color=look[m][1], label=m)
        ax.fill_between(steps, [a - b for a, b in zip(mean, se)],
                        [a + b for a, b in zip(mean, se)], color=look[m][1], alpha=0.15)
    ax_acc.set_title(f"{task}: held-out accuracy during RL (mean ± 1 s.e.)")
    ax_acc.set_ylabel("greedy accuracy")
    ax_gain.set_title(f"{task}: gain over each run's RL step 0 (mean ± 1 s.e.)")
    ax_gain.set_ylabel("greedy accuracy − RL step 0's")
    ax_gain.axhline(0.0, color="k", lw=0.8)
    for ax in (ax_acc, ax_gain):
      ax.set_xlabel("RL step")
      ax.grid(alpha=0.3)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def mean_se(xs) -> tuple[float, float]:
  """Mean and standard error (sample std / √n; NaN for fewer than 2 values)."""
  vals = [float(x) for x in xs if not math.isnan(float(x))]
  if not vals:
    return math.nan, math.nan
  m = sum(vals) / len(vals)
  if len(vals) < 2:
    return m, math.nan
  var = sum((x - m) ** 2 for x in vals) / (len(vals) - 1)
  return m, math.sqrt(var / len(vals))
