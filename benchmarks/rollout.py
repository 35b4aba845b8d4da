"""Rollout throughput: lrjax's jitted sampler (per thought rule) vs transformers `generate`.

Both sides run the SAME random Qwen2 (built with transformers + torch, saved
with `save_pretrained`, loaded into lrjax with `load_hf`), on the same
prompts, sampling at temperature 1 with no truncation, for exactly `--new`
tokens per row (no early stop: lrjax `eos_id=-1`, torch `eos_token_id=None`
and `min_new_tokens = max_new_tokens`). Compile time is excluded (one
warm-up call per shape on both sides); each entry is the median of `--runs`
timed calls. Generated tokens/s = batch * new / seconds (latent steps of the
`hidden` rule count as generated positions: each is one decoder step).

    python benchmarks/rollout.py                      # batch 64 and 8, 5 runs, 128 new tokens
    python benchmarks/rollout.py --batch 64 --runs 3 --json out.json
    python benchmarks/rollout.py --quick              # tiny model, 1 run (the smoke test)
    python benchmarks/rollout.py --devices 1          # lrjax on one device only

`--devices 1 2` (the default) times lrjax on one device and again jitted over
a 2-device `Mesh` with the batch sharded over it (`NamedSharding`, the same
data parallelism the trainer uses). On a CPU the script first splits the host
into that many XLA CPU devices (`jax_num_cpu_devices`): XLA runs one step's
ops one after another, so on one device a decode step keeps about one core
busy, while torch runs every matmul on `--threads` threads. `--devices 2`
gives lrjax the same two cores torch gets.

Rules: `token` (x_{t+1} = E[y_t]), `hidden` (Coconut: `--latent` continuous
thoughts after the prompt's <bot>, then <eot>, then sampled tokens) and
`hybrid` (HRPO gate; its own truncation is the rule option `top_k`,
`--hybrid-top-k`, 50 by default as in HRPO; the '####' tables come from the
character tokenizer padded to the model's vocab, and the think span rarely or
never ends, which is fine for timing).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # lrjax

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402  (resolve the lazy import now)

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer  # noqa: E402
import lrjax.methods  # noqa: E402,F401  (registers the methods)
from lrjax.latent import RuleContext, init_rule_params  # noqa: E402
from lrjax.methods import hrpo as hybrid  # noqa: E402
from lrjax.model import load_hf  # noqa: E402
from lrjax.rollout import Sampling, rollout  # noqa: E402

RULE_NAMES = ("token", "hidden", "hybrid")
# XLA options of --fast-compile: ~35% shorter CPU compiles of the rollout program.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
TORCH_IMPL = "transformers generate"


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """The benchmarked Qwen2's shapes (the three last ids are <bot>, <latent>, <eot>)."""
  vocab_size: int = 512
  hidden_size: int = 256
  intermediate_size: int = 704
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2

  @property
  def special_ids(self) -> tuple[int, int, int]:
    v = self.vocab_size
    return v - 3, v - 2, v - 1  # bot, latent, eot


FULL = ModelShape()
QUICK = ModelShape(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """Command-line flags; `--quick` overrides the sizes with tiny ones."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, nargs="+", default=[64, 8], help="batch sizes")
  p.add_argument("--runs", type=int, default=5, help="timed runs per entry (median)")
  p.add_argument("--new", type=int, default=128, help="new tokens per row")
  p.add_argument("--prompt", type=int, default=16, help="prompt length")
  p.add_argument("--latent", type=int, default=8, help="latent steps of the `hidden` rule")
  p.add_argument("--hybrid-top-k", type=int, default=50,
                 help="the `hybrid` rule's own top-k (0 = off)")
  p.add_argument("--rules", nargs="+", default=list(RULE_NAMES), choices=RULE_NAMES)
  p.add_argument("--no-torch", action="store_true", help="skip transformers generate")
  p.add_argument("--devices", type=int, nargs="+", default=None,
                 help="lrjax device counts (batch sharded over a 1-axis 'data' mesh); "
                      "default 1 2, capped at the devices there are")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--torch-device", default="cpu",
                 help="device of transformers generate (e.g. cuda when jax runs on a GPU)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, help="also write the results here")
  p.add_argument("--fast-compile", action="store_true",
                 help="compile lrjax ahead of time without XLA backend optimisation "
                      "(shorter compiles, slower programs; for smoke tests)")
  p.add_argument("--quick", action="store_true",
                 help="tiny model, batch 2, 8 new tokens, 1 run (smoke test)")
  args = p.parse_args(argv)
  args.shape = FULL
  if args.quick:
    args.shape, args.batch, args.runs, args.new, args.prompt, args.latent = (
        QUICK, [2], 1, 8, 4, 2)
  args.explicit_devices = args.devices is not None
  args.devices = args.devices or [1, 2]
  if min(args.devices) < 1 or any(b % d for b in args.batch for d in args.devices):
    p.error(f"--devices {args.devices} must be >= 1 and divide every --batch {args.batch}")
  return args


def ensure_devices(n: int) -> list:
  """The first n jax devices; on a CPU host not yet initialised, splits it into n devices."""
  try:  # only possible before the first jax computation of this process
    if jax.config.jax_num_cpu_devices < n:
      jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    pass  # already initialised (e.g. under pytest): use the devices that exist
  devices = jax.devices()
  if len(devices) < n:
    raise RuntimeError(f"--devices {n}: this process has only {len(devices)} jax devices "
                       f"({devices[0].platform}); set JAX_NUM_CPU_DEVICES before jax starts")
  return devices[:n]


def place(tree, devices: list, batch_axis: bool):
  """tree on `devices`: replicated, or split along axis 0 over a 'data' mesh."""
  if len(devices) == 1:
    return jax.device_put(tree, devices[0])
  mesh = Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))
  return jax.device_put(tree, NamedSharding(mesh, P("data") if batch_axis else P()))


def build_hf_model(shape: ModelShape, path: str, seed: int):
  """A random float32 transformers Qwen2 in eval mode, saved to `path`."""
  torch.manual_seed(seed)
  cfg = Qwen2Config(
      vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
      intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
      num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
      max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0,
      rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=None, eos_token_id=None,
      pad_token_id=0)
  model = Qwen2ForCausalLM(cfg).eval()
  model.save_pretrained(path)
  return model


def make_prompts(shape: ModelShape, batch: int, length: int, seed: int,
                 end_with_bot: bool) -> np.ndarray:
  """[batch, length] int32 random ids below the special ids (no padding)."""
  rng = np.random.default_rng(seed + batch)
  ids = rng.integers(3, shape.special_ids[0], size=(batch, length), dtype=np.int32)
  if end_with_bot:
    ids[:, -1] = shape.special_ids[0]
  return ids


def process_cpu_s() -> float:
  """User + system CPU seconds of this process, all threads."""
  t = os.times()
  return t.user + t.system


def median_time(fn, runs: int) -> tuple[float, list[float], float]:
  """(median, all) wall-clock seconds of `runs` calls of fn(i), and their median CPU seconds.

  CPU time (all threads of the process) tells a busy machine apart: where it
  falls far below wall x threads the process waited for cores.
  """
  times, cpu = [], []
  for i in range(runs):
    c0, t0 = process_cpu_s(), time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - t0)
    cpu.append(process_cpu_s() - c0)
  return statistics.median(times), times, statistics.median(cpu)


def lrjax_impl(rule: str, n_devices: int) -> str:
  return f"lrjax {rule}" + (f", {n_devices} devices" if n_devices > 1 else "")


def bench_lrjax(rule: str, cfg, model_params: dict, shape: ModelShape, batch: int,
                args: argparse.Namespace, n_devices: int = 1) -> dict:
  """Times lrjax `rollout` for one rule and batch: one warm-up call, then `runs` calls;
  over `n_devices` devices, the batch sharded (see the module doc)."""
  bot, latent, eot = shape.special_ids
  kw = dict(sampling=Sampling(temperature=1.0, top_k=0, top_p=1.0), eos_id=-1, pad_id=0,
            max_new=args.new)
  aux = None
  if rule == "hidden":
    kw.update(bot_id=bot, latent_id=latent, eot_id=eot, num_latent=args.latent)
  elif rule == "hybrid":
    kw.update(rule_cfg={"top_k": args.hybrid_top_k})
    aux = hybrid.delimiter_aux(build_char_tokenizer(DEFAULT_ALPHABET), "####", cfg.vocab_size)
  ctx = RuleContext(cfg, rule, **kw)
  params = {"model": model_params, "rule": init_rule_params(ctx, jax.random.key(args.seed + 1)),
            "heads": {}}
  devices = ensure_devices(n_devices)
  params, aux = place((params, aux), devices, batch_axis=False)
  ids, mask = place((make_prompts(shape, batch, args.prompt, args.seed, rule == "hidden"),
                     np.ones((batch, args.prompt), np.int32)), devices, batch_axis=True)
  keys = [jax.random.key(args.seed + i) for i in range(args.runs + 1)]  # warm-up, runs

  t0 = time.perf_counter()
  if args.fast_compile:  # an AOT executable: the timed calls cannot recompile
    compiled = rollout.lower(ctx, params, ids, mask, keys[0], aux).compile(
        compiler_options=FAST_COMPILE)
    call = lambda key: compiled(params, ids, mask, key, aux)
  else:  # the jitted entry point itself, as the trainer calls it
    call = lambda key: rollout(ctx, params, ids, mask, key, aux)
  traj = jax.block_until_ready(call(keys[0]))
  warm = time.perf_counter() - t0
  lengths = np.asarray(traj.lengths)
  if traj.ids.shape != (batch, args.new) or (lengths != args.new).any():
    raise RuntimeError(f"lrjax {rule}: expected {args.new} tokens on every row, got lengths "
                       f"{lengths.tolist()}")
  cache_size = getattr(rollout, "_cache_size", lambda: -1)()
  med, times, cpu = median_time(lambda i: jax.block_until_ready(call(keys[i + 1])), args.runs)
  recompiled = getattr(rollout, "_cache_size", lambda: -1)() - cache_size
  return {"impl": lrjax_impl(rule, n_devices), "rule": rule, "devices": n_devices,
          "batch": batch, "new": args.new,
          "seconds": med, "times": times, "cpu_s": cpu, "warmup_s": warm,
          "recompiles": recompiled}


def bench_torch(model, shape: ModelShape, batch: int, args: argparse.Namespace) -> dict:
  """Times transformers `generate` (sampling, no early stop): one warm-up, then `runs` calls."""
  ids = torch.from_numpy(make_prompts(shape, batch, args.prompt, args.seed, False).astype(np.int64))
  ids = ids.to(args.torch_device)
  mask = torch.ones_like(ids)
  sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
  gen = dict(attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
             max_new_tokens=args.new, min_new_tokens=args.new, eos_token_id=None, pad_token_id=0)

  def call(i):
    torch.manual_seed(args.seed + i)
    with torch.inference_mode():
      out = model.generate(ids, **gen)
    sync()
    return out

  t0 = time.perf_counter()
  out = call(-1)
  warm = time.perf_counter() - t0
  if tuple(out.shape) != (batch, args.prompt + args.new):
    raise RuntimeError(f"torch generate returned shape {tuple(out.shape)}, expected "
                       f"{(batch, args.prompt + args.new)}")
  med, times, cpu = median_time(call, args.runs)
  return {"impl": TORCH_IMPL, "rule": "token", "batch": batch, "new": args.new, "seconds": med,
          "times": times, "cpu_s": cpu, "warmup_s": warm, "recompiles": 0}


def add_ratios(results: list[dict]) -> None:
  """tokens/s, ratio to transformers generate (tokens/s) and time / lrjax `token` time."""
  for r in results:
    r["tokens_per_s"] = r["batch"] * r["new"] / r["seconds"]
  for r in results:
    same = {x["impl"]: x for x in results if x["batch"] == r["batch"]}
    ref = same.get(TORCH_IMPL)
    tok = same.get(lrjax_impl("token", r.get("devices", 1)))
    r["vs_generate"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
    r["time_vs_token"] = r["seconds"] / tok["seconds"] if tok else None


def table(results: list[dict]) -> str:
  """The markdown table of `results` (after `add_ratios`)."""
  fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"
  lines = ["| rule / impl | batch | tokens/s | vs generate (tokens/s) | time vs lrjax token "
           "(same devices) |",
           "|---|---:|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r['impl']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                 f"{fmt(r['vs_generate'])} | {fmt(r['time_vs_token'])} |")
  return "\n".join(lines)


def environment() -> dict:
  """Versions, device and load of this run."""
  env = {"python": platform.python_version(), "jax": jax.__version__,
         "jax_device": str(jax.devices()[0]), "jax_platform": jax.default_backend(),
         "cpu_count": os.cpu_count(), "machine": platform.machine()}
  env.update(torch=torch.__version__, transformers=transformers.__version__,
             torch_threads=torch.get_num_threads())
  if hasattr(os, "getloadavg"):
    env["loadavg"] = [round(x, 2) for x in os.getloadavg()]
  return env


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """Runs the benchmark, prints the table and returns the result rows."""
  args = parse_args(argv)
  try:  # before any jax computation (load_hf makes arrays)
    ensure_devices(max(args.devices))
  except RuntimeError:
    if args.explicit_devices:
      raise
    have = len(jax.devices())
    print(f"only {have} {jax.default_backend()} device(s): timing lrjax on "
          f"{[d for d in args.devices if d <= have]} of --devices {args.devices}", flush=True)
    args.devices = [d for d in args.devices if d <= have]
  shape = args.shape
  results: list[dict] = []
  env: dict = {}
  old_threads = torch.get_num_threads()
  torch.set_num_threads(args.threads)
  transformers.utils.logging.disable_progress_bar()
  try:
    with tempfile.TemporaryDirectory() as tmp:  # identical weights on both sides
      model = build_hf_model(shape, tmp, args.seed).to(args.torch_device)
      cfg, model_params = load_hf(tmp)
    env = environment()
    print(f"jax {env['jax']} on {env['jax_device']} ({env['jax_platform']}); torch "
          f"{env['torch']} / transformers {env['transformers']} on {args.torch_device}, "
          f"{env['torch_threads']} threads; {env['cpu_count']} cpus, load average "
          f"{env.get('loadavg')}", flush=True)
    print(f"model: Qwen2 vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, intermediate "
          f"{cfg.intermediate_size}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
          f"{cfg.num_kv_heads} kv heads; prompt {args.prompt}, new {args.new}, runs {args.runs}",
          flush=True)
    for batch in args.batch:
      if not args.no_torch:
        results.append(bench_torch(model, shape, batch, args))
        print(f"  {TORCH_IMPL:32s} batch {batch:3d}: {results[-1]['seconds']:.3f} s "
              f"(cpu {results[-1]['cpu_s']:.1f} s)", flush=True)
      for n_dev, rule in [(d, r) for d in args.devices for r in args.rules]:
        results.append(bench_lrjax(rule, cfg, model_params, shape, batch, args, n_dev))
        r = results[-1]
        print(f"  {r['impl']:32s} batch {batch:3d}: {r['seconds']:.3f} s (cpu {r['cpu_s']:.1f} s, "
              f"first call {r['warmup_s']:.1f} s, recompiles {r['recompiles']})", flush=True)
  finally:
    torch.set_num_threads(old_threads)
  add_ratios(results)
  print()
  print(table(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"env": env, "args": {k: v for k, v in vars(args).items()
                                                  if k != "shape"},
                 "model": dataclasses.asdict(shape), "results": results}, f, indent=2)
  bad = [r for r in results if not math.isfinite(r["tokens_per_s"]) or r["tokens_per_s"] <= 0]
  if bad:
    raise RuntimeError(f"non-positive or non-finite throughput: {bad}")
  return results


if __name__ == "__main__":
  main()
