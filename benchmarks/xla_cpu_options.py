"""XLA:CPU options and device layouts on lrjax's GRPO step (`grpo_step.py --no-trl`).

Each variant runs `benchmarks/grpo_step.py --no-trl` in its own process (XLA reads
`XLA_FLAGS` once, at start-up) with that variant's flags or device layout; the
variants run in turn, `--rounds` times over (interleaved, so a change in the
machine's load touches every variant alike). The table gives the median over
rounds of each part's median step time, the update's MFU against the matmul peak
measured in the same process, and the update's and the step's ratio to the
default.

    python benchmarks/xla_cpu_options.py                    # every variant, 2 rounds
    python benchmarks/xla_cpu_options.py --only default onednn --rounds 3
    python benchmarks/xla_cpu_options.py --quick            # tiny model, 1 round

Variants: XLA:CPU's library back-ends for dots and fusions (XNNPACK, YNNPACK,
oneDNN, XNNPACK graph fusion), its fusion emitters and scheduler, fast math
(changes results: listed, never a default), and the device layouts of
`grpo_step.py` (the rollout and/or the update data-parallel over two XLA CPU
devices, one per core, against one multi-threaded device).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (XLA_FLAGS, grpo_step.py arguments)
VARIANTS = {
    "default": ("", ()),
    "fusion_emitters_off": ("--xla_cpu_use_fusion_emitters=false", ()),
    "ynnpack_off": ("--xla_cpu_experimental_ynn_fusion_type=", ()),
    "xnnpack_off": ("--xla_cpu_use_xnnpack=false", ()),
    "onednn": ("--xla_cpu_use_onednn=true", ()),
    "xnn_graph_greedy": (
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", ()),
    "concurrency_scheduler": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", ()),
    "fast_math": ("--xla_cpu_enable_fast_math=true", ()),
    "rollout_2_devices": ("", ("--rollout-devices=2",)),
    "update_2_devices": ("", ("--update-devices=2",)),
    "both_2_devices": ("", ("--rollout-devices=2", "--update-devices=2")),
}


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None,
                 help="these variants only (default: all)")
  p.add_argument("--rounds", type=int, default=2, help="runs of every variant, interleaved")
  p.add_argument("--quick", action="store_true", help="grpo_step.py --quick, one round")
  p.add_argument("--json", default=None, help="also write every run's results here")
  args, rest = p.parse_known_args(argv)  # the rest goes to grpo_step.py (--lengths=mixed, ...)
  if args.quick:
    args.rounds, rest = 1, [*rest, "--quick"]
  return args, rest


def run_variant(name: str, rest: Sequence[str]) -> dict:
  """One grpo_step.py --no-trl process under `name`'s flags; its JSON results."""
  flags, extra = VARIANTS[name]
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "res.json")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "grpo_step.py"), "--no-trl",
                           f"--json={out}", *extra, *rest], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"variant {name} ({flags or 'no flags'} {' '.join(extra)}) failed "
                         f"with exit {proc.returncode}:\n{proc.stderr[-2000:]}")
    with open(out) as f:
      return json.load(f)


def summarise(runs: dict[str, list[dict]], base: str) -> list[dict]:
  """Per variant: the median over rounds of each part and of the update's MFU, and its
  update's and step's speed-up over variant `base`."""
  rows = []
  for name, rs in runs.items():
    med = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
    rows.append({"variant": name, "rollout": med(lambda r: r["lrjax"]["rollout"]),
                 "update": med(lambda r: r["lrjax"]["update"]),
                 "step": med(lambda r: r["lrjax"]["step"]),
                 "mfu": med(lambda r: r["mfu_lrjax"]), "peak": med(lambda r: r["peak_flops"])})
  ref = next(r for r in rows if r["variant"] == base)
  for r in rows:
    r["update_vs_base"], r["step_vs_base"] = ref["update"] / r["update"], ref["step"] / r["step"]
  return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, rest = parse_args(argv)
  names = args.only or list(VARIANTS)
  runs: dict[str, list[dict]] = {n: [] for n in names}
  for r in range(args.rounds):
    for n in names:
      runs[n].append(run_variant(n, rest))
      lj = runs[n][-1]["lrjax"]
      print(f"round {r + 1}/{args.rounds} {n:22s} rollout {lj['rollout']:.3f} s, update "
            f"{lj['update']:.3f} s", flush=True)
  base = "default" if "default" in runs else names[0]
  rows = summarise(runs, base)
  print(f"\n| variant | XLA_FLAGS / layout | rollout | update | step | update MFU (peak) "
        f"| update vs {base} | step vs {base} |\n|---|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    flags, extra = VARIANTS[r["variant"]]
    print(f"| {r['variant']} | `{' '.join(filter(None, (flags, *extra))) or '(none)'}` "
          f"| {r['rollout']:.3f} s | {r['update']:.3f} s | {r['step']:.3f} s "
          f"| {100 * r['mfu']:.1f}% ({r['peak'] / 1e9:.0f} GFLOP/s) "
          f"| {r['update_vs_base']:.2f}x | {r['step_vs_base']:.2f}x |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "runs": runs}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
