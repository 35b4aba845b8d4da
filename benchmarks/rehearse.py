"""Rehearse a `:paper` preset at its model's full width and depth, on any machine.

Writes an HF folder with transformers in the checkpoint's real layout (random weights at
the preset model's width and depth, bfloat16 as released; the real vocabulary size,
special tokens and chat template, a byte-level BPE built with `tokenizers`), GSM8K /
GSM8K-Aug / MATH files in their Hub layouts, and runs the preset's phases on them with
only the batch, length and step counts reduced (`--rows` prompts x `--samples`, `--max_new`
positions, `--steps` RL steps; every phase as in `tests/test_real_checkpoints.py`). Prints
the seconds of each RL step (rollout and update; the first includes compiling), generated
tokens/s, and the peak host memory of the run (`resource.getrusage`; the folder is
written by a child process, reported apart).

    python benchmarks/rehearse.py --config=configs/hrpo.py:paper --rows 2 --samples 2 \\
        --max_new 16 --steps 1
    python benchmarks/rehearse.py --config=configs/lepo.py:paper --dtype float32 --steps 2
    python benchmarks/rehearse.py --config=configs/hrpo.py:paper --tiny    # test-sized model
    python benchmarks/rehearse.py --config=configs/hrpo.py:paper --dry     # the plan only

The preset's mesh runs over the machine's devices (on a CPU one device; `--devices N`
fakes N). Its `rl.microbatch` and `rl.updates_per_batch` are lowered to the largest
divisor of the reduced batch.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # lrjax, configs
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
GIB = 2 ** 30


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/<method>.py:paper (or an alias)")
  p.add_argument("--rows", type=int, default=2, help="prompts per RL step")
  p.add_argument("--samples", type=int, default=2, help="samples per prompt (rl.group_size)")
  p.add_argument("--max_new", type=int, default=16, help="response positions (rl and eval)")
  p.add_argument("--steps", type=int, default=1, help="RL steps")
  p.add_argument("--dtype", default="", help="model.dtype (default: the preset's)")
  p.add_argument("--devices", type=int, default=0, help="fake CPU devices (0: the machine's)")
  p.add_argument("--workdir", default="", help="where the folder, data and run go (default: a "
                                                "temporary directory, removed after)")
  p.add_argument("--tiny", action="store_true", help="the test's reduced width and depth")
  p.add_argument("--dry", action="store_true", help="print the plan, build and run nothing")
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args(argv)
  for name in ("rows", "samples", "max_new", "steps"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.dtype not in ("", "float32", "bfloat16", "float16"):
    p.error(f"--dtype must be float32, bfloat16 or float16, got {args.dtype!r}")
  return args


def method_and_config(spec: str):
  """('hrpo', its ConfigDict) from 'configs/hrpo.py:paper'."""
  from lrjax.testing import rehearsal
  path, _, arg = spec.partition(":")
  method = os.path.basename(path)[:-3] if path.endswith(".py") else ""
  if method not in rehearsal.METHODS:
    raise SystemExit(f"--config={spec}: rehearse knows {', '.join(rehearsal.METHODS)} "
                     "(configs/<method>.py:paper)")
  if os.path.isabs(path) or os.path.exists(path):
    file = path
  else:
    file = os.path.join(ROOT, path)
  module_spec = importlib.util.spec_from_file_location(f"rehearse_{method}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return method, module.get_config(arg or None)


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def plan(args) -> dict:
  """The preset, the checkpoint to write and the overrides of the run."""
  from lrjax.model import preset
  from lrjax.testing import checkpoints, rehearsal
  method, config = method_and_config(args.config)
  kind, task, extra = rehearsal.METHODS[method]
  if checkpoints.kind_of(config.model.preset) != kind:
    raise SystemExit(f"{args.config}: model.preset={config.model.preset!r} is not a {kind} model")
  overrides = {**rehearsal.short(args.rows, args.samples, args.max_new, args.steps), **extra}
  upb = _largest_divisor(args.rows, int(config.rl.updates_per_batch))
  overrides["rl.updates_per_batch"] = upb
  if config.rl.microbatch:  # keep accumulating, in chunks that divide the mini-batch
    overrides["rl.microbatch"] = _largest_divisor(args.rows * args.samples // upb,
                                                  int(config.rl.microbatch))
  if args.dtype:
    overrides["model.dtype"] = args.dtype
  m = preset(config.model.preset)
  dims = ({"hidden": m.hidden_size, "intermediate": m.intermediate_size,
           "layers": m.num_layers, "heads": m.num_heads, "kv_heads": m.num_kv_heads}
          if not args.tiny else "reduced (tests/test_real_checkpoints.py)")
  return {"method": method, "config": args.config, "name": config.name, "kind": kind,
          "task": task, "model": config.model.preset, "size": "" if args.tiny else
          config.model.preset, "dims": dims, "dtype": args.dtype or config.model.dtype,
          "mode": config.mode, "remat": bool(config.model.remat),
          "mesh": (config.mesh.data, config.mesh.fsdp, config.mesh.tensor),
          "overrides": overrides}


def build_folder(p: dict, root: str) -> tuple[str, float, float]:
  """Writes the checkpoint folder in a child process: (path, seconds, its peak RSS GiB)."""
  folder = os.path.join(root, p["kind"] + ("-" + p["size"] if p["size"] else ""))
  code = ("import sys; from lrjax.testing import checkpoints, rehearsal; "
          "checkpoints.real_checkpoint(sys.argv[1], sys.argv[2], rehearsal.corpus(), "
          "size=sys.argv[3], dtype=sys.argv[4])")
  dtype = "" if not p["size"] else ("float32" if p["dtype"] == "float32" else "bfloat16")
  t0 = time.perf_counter()
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  subprocess.run([sys.executable, "-c", code, p["kind"], folder, p["size"], dtype],
                 check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
  peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) * 1024 / GIB
  return folder, time.perf_counter() - t0, peak


def _timed_steps():
  """Wraps the RL step's rollout and update; -> the list they append to."""
  from lrjax.phases import rl_step
  steps: list[dict] = []
  draw, learn = rl_step.draw_round, rl_step.learn

  def timed_draw(*a, **kw):
    t0 = time.perf_counter()
    out = draw(*a, **kw)  # returns after decoding and scoring: the rollout is done
    steps.append({"rollout_s": time.perf_counter() - t0})
    return out

  def timed_learn(*a, **kw):
    t0 = time.perf_counter()
    state, line = learn(*a, **kw)  # returns after fetching the metrics: the update is done
    steps[-1].update(update_s=time.perf_counter() - t0,
                     tokens=float(line["train/response_tokens"]),
                     tokens_per_s=float(line["train/tokens_per_sec"]),
                     loss=float(line["train/loss"]), skipped=bool(line["train/update_skipped"]))
    return state, line
  rl_step.draw_round, rl_step.learn = timed_draw, timed_learn
  return steps


def run(args, p: dict, root: str) -> dict:
  from lrjax.testing import rehearsal
  folder, build_s, build_rss = build_folder(p, root)
  paths = rehearsal.write_data(os.path.join(root, "data"))
  import jax
  from lrjax.phases.pipeline import prepare, run_phases
  _, config = method_and_config(args.config)
  config.init, config.data.path = folder, paths[p["task"]]
  rehearsal.override(config, p["overrides"])
  devices = jax.devices()
  if math.prod(d for d in p["mesh"] if d > 0) > len(devices):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
  steps = _timed_steps()
  t0 = time.perf_counter()
  run_obj, phases = prepare(config, os.path.join(root, "run"))
  run_phases(run_obj, phases)
  wall = time.perf_counter() - t0
  n_params = sum(x.size for x in jax.tree.leaves(run_obj.params))
  for s in steps:
    s["step_s"] = s["rollout_s"] + s.get("update_s", 0.0)
    # generated tokens per second of the whole step (rows x mean response length / step)
    s["gen_tokens_per_s"] = s.get("tokens", 0) * args.rows * args.samples / s["step_s"]
  return {**p, "params": n_params, "devices": len(devices), "mesh_used": tuple(
      run_obj.mesh.shape.values()), "phases": phases, "build_s": build_s,
          "build_peak_rss_gib": build_rss, "wall_s": wall, "steps": steps,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
          "folder_gib": sum(os.path.getsize(os.path.join(folder, f))
                            for f in os.listdir(folder)) / GIB,
          "jax": jax.__version__, "backend": jax.default_backend()}


def report(r: dict) -> str:
  lines = [f"# {r['config']} ({r['name']}): {r['model']} {r['dtype']}, {r['params'] / 1e9:.2f} B "
           f"parameters, dims {r['dims']}, remat {r['remat']}, mesh {r['mesh_used']} on "
           f"{r['devices']} {r['backend']} device(s); phases {','.join(r['phases'])}",
           f"# checkpoint written in {r['build_s']:.1f} s ({r['folder_gib']:.2f} GiB on disk, "
           f"writer peak RSS {r['build_peak_rss_gib']:.2f} GiB); run wall {r['wall_s']:.1f} s; "
           f"peak host RSS of the run {r['peak_rss_gib']:.2f} GiB",
           "| RL step | rollout s | update s | step s | response tokens (mean) | generated tokens/s "
           "| loss |", "|---:|---:|---:|---:|---:|---:|---:|"]
  for i, s in enumerate(r["steps"]):
    lines.append(f"| {i + 1}{' (compiles)' if i == 0 else ''} | {s['rollout_s']:.2f} "
                 f"| {s.get('update_s', float('nan')):.2f} | {s['step_s']:.2f} "
                 f"| {s.get('tokens', 0):.1f} | {s['gen_tokens_per_s']:.1f} "
                 f"| {s.get('loss', float('nan')):.4g} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  if args.devices:
    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)
  p = plan(args)
  if args.dry:
    print(json.dumps(p, indent=1, default=str))
    return p
  if args.workdir:
    os.makedirs(args.workdir, exist_ok=True)
    r = run(args, p, args.workdir)
  else:
    with tempfile.TemporaryDirectory(prefix="lrjax_rehearse_") as root:
      r = run(args, p, root)
  print(report(r), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=1, default=str)
  return r


if __name__ == "__main__":
  main()
