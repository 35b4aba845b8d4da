"""PNG curves of a run's metrics.

    python -m lrjax.plot --workdir=runs/hrpo [--out=runs/hrpo/plots]

Reads `<workdir>/metrics.jsonl` and writes one PNG per metric group (the key
prefix before the first `/`: `train.png` for `train/*`, `eval.png` for
`eval/*`; keys without a prefix go to `other.png`), one subplot per metric.
Phases are laid end to end on one "global step" axis: each phase's steps are
offset by the last step of the phases before it (rl after sft), drawn in its
own colour, with a dashed line where it starts. NaN points are left out.
"""
from __future__ import annotations

import math
import os
import re
from typing import Sequence

from absl import app, flags

from lrjax.metrics import read_metrics

_GROUP_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _group(key: str) -> str:
  return key.split("/", 1)[0] if "/" in key else "other"


def plot_metrics(workdir: str, out: str | None = None) -> list[str]:
  """Writes the PNGs for `workdir` into `out` (default `<workdir>/plots`);
  returns their paths (empty when there are no metrics)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(workdir)
  out = out or os.path.join(workdir, "plots")
  if not records:
    return []
  phases = list(dict.fromkeys(r["phase"] for r in records))
  offset, start = {}, 0
  for p in phases:
    offset[p] = start
    start += max(r["step"] for r in records if r["phase"] == p)
  keys = list(dict.fromkeys(k for r in records for k in r if k not in ("phase", "step")))
  groups: dict[str, list[str]] = {}
  for k in keys:
    groups.setdefault(_group(k), []).append(k)

  os.makedirs(out, exist_ok=True)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  paths = []
  for group, gkeys in groups.items():
    ncols = min(3, len(gkeys))
    nrows = math.ceil(len(gkeys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, gkeys):
      for i, p in enumerate(phases):
        pts = sorted((r["step"] + offset[p], r[key]) for r in records
                     if r["phase"] == p and key in r and not math.isnan(r[key]))
        if pts:
          ax.plot(*zip(*pts), color=colours[i % len(colours)], label=p,
                  marker="." if len(pts) < 30 else None)
        if i > 0:
          ax.axvline(offset[p], color=colours[i % len(colours)], linestyle="--", linewidth=0.8)
      ax.set_title(key, fontsize=10)
      ax.set_xlabel("global step")
      ax.grid(alpha=0.3)
      if len(phases) > 1:
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(gkeys):]:
      ax.axis("off")
    fig.tight_layout()
    path = os.path.join(out, _GROUP_RE.sub("_", group) + ".png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv: Sequence[str]) -> None:
  """CLI body: plots --workdir into --out and prints the written paths."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir, out = flags.FLAGS.workdir, flags.FLAGS.out
  if not workdir:
    raise app.UsageError("--workdir is required")
  paths = plot_metrics(workdir, out)
  if not paths:
    raise SystemExit(f"no metrics in {os.path.join(workdir, 'metrics.jsonl')}")
  for p in paths:
    print(p)


def define_flags() -> None:
  """Defines --workdir and --out. Only the CLI calls it, so importing this
  module next to lrjax.main (which has its own --workdir) defines nothing."""
  flags.DEFINE_string("workdir", None, "Run directory holding metrics.jsonl.")
  flags.DEFINE_string("out", None, "Output directory for PNGs (default: WORKDIR/plots).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
