"""The two plots of `lrjax.compare`.

* `accuracy_vs_tokens(summary, path)`: each method's mean greedy accuracy against
  its mean response length (positions, latent ones included), error bars of one
  standard error both ways, one marker per (task, method).
* `curves(series, path)`: held-out accuracy against RL step per RL method (mean over
  seeds, a band of ± one standard error), one panel per task.

`mean_se` is the mean ± standard error both use (and `lrjax.compare`'s table).
"""
from __future__ import annotations

import math


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def accuracy_vs_tokens(summary: list[dict], path: str) -> None:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 5))
  for s in summary:
    (acc, acc_se), (tok, tok_se) = s["accuracy"], s["response_tokens"]
    if math.isnan(acc) or math.isnan(tok):
      continue
    ax.errorbar(tok, acc, xerr=0 if math.isnan(tok_se) else tok_se,
                yerr=0 if math.isnan(acc_se) else acc_se, fmt="o", capsize=3,
                label=f"{s['method']} ({s['task']})")
    ax.annotate(s["method"], (tok, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel("response positions (mean)")
  ax.set_ylabel("held-out greedy accuracy (mean)")
  ax.set_title("accuracy against response length (± 1 s.e. over seeds)")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def curves(series: dict, path: str) -> None:
  """series: {task: {method: {rl step: [held-out accuracy of each seed]}}}."""
  plt = _plt()
  tasks = sorted(series)
  fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(6 * max(len(tasks), 1), 4.5),
                           squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for m, by_step in sorted(series[task].items()):
      steps = sorted(by_step)
      if not steps:
        continue
      stats = [mean_se(by_step[s]) for s in steps]
      mean = [a for a, _ in stats]
      se = [0.0 if math.isnan(b) else b for _, b in stats]
      ax.plot(steps, mean, marker="o", label=m)
      ax.fill_between(steps, [a - b for a, b in zip(mean, se)],
                      [a + b for a, b in zip(mean, se)], alpha=0.2)
    ax.set_title(f"{task}: held-out accuracy during RL (mean ± 1 s.e.)")
    ax.set_xlabel("RL step")
    ax.set_ylabel("greedy accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
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
