"""Per-device memory of the rollout and the RL update at real sizes, compiled ahead of time.

Nothing is allocated: parameters, optimizer state and the batch are
`jax.ShapeDtypeStruct`s carrying lrjax's shardings (`lrjax.parallel`), and
`jit(...).lower(...).compile()` runs XLA's SPMD partitioner for fake hosts
made of the CPU's devices (`jax_num_cpu_devices`):

    v5e-8    8 devices x 16 GiB    mesh data=1 fsdp=8 tensor=1
    v4-8     4 devices x 32 GiB    mesh data=1 fsdp=4 tensor=1
    gpu-80g  1 device  x 80 GiB

XLA's count per device (`compiled.memory_analysis()`) is

    peak = arguments + outputs − aliased (donated) + temporaries

printed beside an analytic count: parameters P·m / S, AdamW state 2·P·m / S,
gradients P·m / S (float32 when accumulated), the update's copy of the weights in the
compute dtype P·b / S when m ≠ b, the reference copy P·b / S when β > 0 (m bytes per
stored parameter, `--param_dtype`: float32 master weights by default, as in a run; b
bytes per parameter in the compute dtype `--dtype`; S = fsdp·tensor shards), activations
of the update's
live rows r (with remat: the L block inputs r·T·H·b plus one block's working
set; without: L working sets), the vocabulary block r·N·C·4·3 (C =
logits_chunk, V without chunking), and the rollout's KV cache
2·L·r·(P+N)·K·D·b plus its decode copy of the weights in the compute dtype, gathered
whole on every device once per rollout (P·b: no all-gather per decoded token), beside the
stored parameters P·m / S. The temporaries
come from the CPU compiler's schedule; a TPU or GPU schedule differs somewhat.

    python benchmarks/memory.py                                # 3 sizes x 3 hosts
    python benchmarks/memory.py --sizes qwen2.5-1.5b --hosts v5e-8 --microbatch 16
    python benchmarks/memory.py --dtype float32 --remat 0 --logits_chunk 0   # the naive setting
    python benchmarks/memory.py --param_dtype bfloat16   # no master copy (bfloat16 storage)

Training batch: `--batch` rows (prompts x group), `--prompt` prompt tokens,
`--new` response tokens, the token rule and PPO-clip, one optimizer update.
`--lora_rank r` (α = `--lora_alpha`, 2r by default) adds LoRA adapters on every
projection and trains only them (`rl.param_groups` of `configs/hrpo.py:qwen2.5-1.5b`:
adapters at 5e-6, the base frozen): no AdamW state or optimizer-side gradient for
the base, which is stored in the compute dtype (frozen: no master copy), and the KL
reference is the live base with adapters off (no copy). The analytic count then has the
base weights, one merged copy W + (α/r)AB and its gradient (the learner merges outside
the layer scan), and the adapters with their AdamW state and gradient (m bytes each).

    python benchmarks/memory.py --sizes qwen2.5-1.5b --hosts v5e-8 --lora_rank 32 --beta 0.005

`--config=configs/<method>.py:paper` compiles that preset's own RL step instead: its
model preset, dtype, remat, logits chunking and LoRA, its thought rule, objective, loss
and reference, its heads (DLR's assistant, Latent RL's value head), one mini-batch of
`rl.num_prompts x rl.group_size / rl.updates_per_batch` rows of `--prompt` +
`rl.max_new` positions, `rl.microbatch`, and its mesh resolved over the devices of the
paper's host (`PAPER_HOSTS`; `--devices N` for another count). The rollout is the
rule's own (`rl.num_prompts x rl.group_size` rows). Special-token ids are stand-ins
at the top of the vocabulary: only shapes matter.

    python benchmarks/memory.py --config=configs/hrpo.py:paper
    python benchmarks/memory.py --config=configs/lepo.py:paper --no_rollout
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # lrjax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Host:
  devices: int
  gib: float
  mesh: tuple[int, int, int]  # data, fsdp, tensor


HOSTS = {"v5e-8": Host(8, 16, (1, 8, 1)), "v4-8": Host(4, 32, (1, 4, 1)),
         "gpu-80g": Host(1, 80, (1, 1, 1))}
SIZES = ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", nargs="+", default=list(SIZES))
  p.add_argument("--hosts", nargs="+", default=list(HOSTS), choices=list(HOSTS))
  p.add_argument("--batch", type=int, default=64, help="rows per update (prompts x group)")
  p.add_argument("--prompt", type=int, default=128)
  p.add_argument("--new", type=int, default=512)
  p.add_argument("--dtype", default="bfloat16", help="model.dtype: the compute dtype")
  p.add_argument("--param_dtype", default="float32",
                 help="model.param_dtype: the trained parameters' storage (master weights)")
  p.add_argument("--remat", type=int, default=1)
  p.add_argument("--logits_chunk", type=int, default=8192)
  p.add_argument("--microbatch", type=int, default=0, help="rows per accumulated chunk (0: off)")
  p.add_argument("--beta", type=float, default=0.0, help="> 0 keeps a reference copy")
  p.add_argument("--no_rollout", action="store_true")
  p.add_argument("--lora_rank", type=int, default=0, help="LoRA rank on every projection (0: off)")
  p.add_argument("--lora_alpha", type=float, default=0.0, help="LoRA alpha (0: 2 x rank)")
  p.add_argument("--config", default="", help="configs/<m>.py:<preset>: compile its RL step")
  p.add_argument("--devices", type=int, default=0,
                 help="with --config: fake devices (0: the paper host's, PAPER_HOSTS)")
  return p.parse_args(argv)


def model_config(size: str, args):
  from lrjax.model import lora, preset
  cfg = preset(size).replace(dtype=args.dtype, param_dtype=args.param_dtype,
                             remat=bool(args.remat), logits_chunk=args.logits_chunk)
  if args.lora_rank:
    cfg = cfg.replace(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha or 2.0 * args.lora_rank,
                      lora_targets=lora.TARGETS)
  return cfg


def make_mesh(shape: tuple[int, int, int]):
  from lrjax import parallel
  n = math.prod(shape)
  return jax.make_mesh(shape, parallel.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:n])


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def abstract_params(cfg, mesh, groups=None):
  """{"model", "rule", "heads"} as sharded ShapeDtypeStructs (the token rule has no rule
  params); with `groups`, the frozen backbone in the compute dtype, as the RL phase keeps it."""
  from lrjax import parallel
  from lrjax.model import init, lora
  from lrjax.rl.learner import frozen_in_compute_dtype

  def make():
    model = lora.attach(cfg, init(cfg, jax.random.key(0)), jax.random.key(1))
    tree = {"model": model, "rule": {}, "heads": {}}
    return frozen_in_compute_dtype(cfg, groups, tree) if groups is not None else tree
  tree = jax.eval_shape(make)
  return _abstract(tree, parallel.param_shardings(tree, mesh))


def abstract_batch(tree, mesh):
  """Rows split over (data, fsdp) where they divide, else replicated."""
  from lrjax import parallel
  rows = parallel.data_parallel_size(mesh)

  def one(x):
    spec = P(parallel.BATCH, *([None] * (x.ndim - 1))) if x.ndim and x.shape[0] % rows == 0 else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
  return jax.tree.map(one, tree)


def rule_context(cfg, args):
  from lrjax.latent import RuleContext
  from lrjax.rollout import Sampling
  return RuleContext(cfg, "token", sampling=Sampling(1.0), eos_id=cfg.eos_token_id or -1,
                     pad_id=0, max_new=args.new)


def compile_update(cfg, mesh, args, return_inputs: bool = False):
  """The jitted RL update (`make_update`) compiled for abstract sharded inputs (and
  those inputs with `return_inputs`)."""
  from configs import base
  from lrjax.rl.learner import LossSpec, frozen_reference, make_rl_optimizer, make_update
  from lrjax.rollout.trajectory import Trajectory
  ctx = rule_context(cfg, args)
  rl = base.get_config().rl
  if cfg.lora_rank:  # configs/hrpo.py:qwen2.5-1.5b: adapters only, the base frozen
    rl.param_groups = (("model/lora/.*", 5e-6), ("model/.*", None), (".*", 1e-4))
  optimizer = make_rl_optimizer(rl, 100)
  spec = LossSpec(beta=args.beta)
  update = make_update(ctx, spec, optimizer, microbatch=args.microbatch)
  params = abstract_params(cfg, mesh, optimizer.groups)
  opt_state = jax.eval_shape(optimizer.init, params)
  from lrjax import parallel
  opt_state = _abstract(opt_state, parallel.param_shardings(opt_state, mesh))
  b, p, n = args.batch, args.prompt, args.new
  s = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
  traj = Trajectory(prompt_ids=s((b, p), jnp.int32), prompt_mask=s((b, p), jnp.int32),
                    ids=s((b, n), jnp.int32), span=s((b, n), jnp.int8), sampled=s((b, n), bool),
                    logp=s((b, n), jnp.float32), records={}, lengths=s((b,), jnp.int32),
                    truncated=s((b,), bool))
  traj, adv = abstract_batch((traj, s((b,), jnp.float32)), mesh)
  ref = None
  if args.beta > 0:  # with LoRA: no model copy
    ref = jax.eval_shape(lambda p: frozen_reference(cfg, p), params)
    ref = _abstract(ref, parallel.param_shardings(ref, mesh))
  inputs = (params, opt_state, ref, traj, adv, None)
  with jax.set_mesh(mesh):  # activations' rows over (data, fsdp): `parallel.constrain_rows`
    compiled = update.lower(*inputs).compile()
  return (compiled, inputs) if return_inputs else compiled


def compile_rollout(cfg, mesh, args):
  """The jitted rollout (`lrjax.rollout.rollout`) for abstract sharded params and prompts."""
  from lrjax.rollout import rollout
  params = abstract_params(cfg, mesh)
  ids, mask = abstract_batch((jax.ShapeDtypeStruct((args.batch, args.prompt), jnp.int32),) * 2,
                             mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  with jax.set_mesh(mesh):
    return rollout.lower(rule_context(cfg, args), params, ids, mask, key, None).compile()


def measured(compiled) -> float:
  """XLA's peak bytes per device: arguments + outputs − aliased + temporaries."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def analytic(cfg, host: Host, args) -> dict:
  """The module doc's count, bytes per device."""
  from lrjax.model import init
  data, fsdp, tensor = host.mesh
  shards, row_shards = fsdp * tensor, data * fsdp
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: init(cfg, jax.random.key(0)))))
  b, m = jnp.dtype(cfg.jnp_dtype).itemsize, jnp.dtype(cfg.param_jnp_dtype).itemsize
  weights = n_params * b / shards  # in the compute dtype
  stored = n_params * m / shards  # the trained parameters (float32 masters by default)
  grads = n_params * (4 if args.microbatch else m) / shards
  rows = max((args.microbatch or args.batch) / row_shards, 1)
  t, n = args.prompt + args.new - 1, args.new
  h, f, heads, kv, d = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                        cfg.num_kv_heads, cfg.head_dim)
  block = rows * t * ((6 * h + 3 * f) * b + 2 * heads * t * 4)  # one block's working set
  acts = (cfg.num_layers * rows * t * h * b + block) if cfg.remat else cfg.num_layers * block
  cols = cfg.logits_chunk if 0 < cfg.logits_chunk < cfg.vocab_size else cfg.vocab_size
  vocab = rows * (n if cols < cfg.vocab_size else t) * cols * 4 * 3
  if cfg.lora_rank:  # base + merged copy + its gradient; adapters with AdamW state and grads
    from lrjax.model import lora
    n_lora = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda: lora.init(cfg, jax.random.key(0)))))
    update = weights * 3 + n_lora * 4 * m / shards + acts + vocab  # A,B; grads; mu, nu
    stored = weights  # the frozen base: no master copy
  else:  # masters, AdamW state, gradients, the compute copy, the reference
    update = stored * 3 + grads + weights * ((m != b) + (args.beta > 0)) + acts + vocab
  roll_rows = max(args.batch / row_shards, 1)
  kv_cache = 2 * cfg.num_layers * roll_rows * (args.prompt + args.new) * kv * d * b
  return {"params": n_params, "weights": stored, "opt": 2 * stored, "acts": acts + vocab,
          "update": update, "kv": kv_cache,
          "rollout": stored + n_params * b + kv_cache}


def run(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  rows = []
  for size in args.sizes:
    cfg = model_config(size, args)
    for name in args.hosts:
      host = HOSTS[name]
      mesh = make_mesh(host.mesh)
      t0 = time.perf_counter()
      row = {"size": size, "host": name, "analytic": analytic(cfg, host, args),
             "lora": f"r{cfg.lora_rank}" if cfg.lora_rank else "no",
             "update": measured(compile_update(cfg, mesh, args))}
      if not args.no_rollout:
        row["rollout"] = measured(compile_rollout(cfg, mesh, args))
      row["compile_s"] = time.perf_counter() - t0
      row["fits"] = max(row["update"], row.get("rollout", 0)) <= host.gib * GIB
      rows.append(row)
      print(format_row(row, host), flush=True)
  return rows


HEADER = ("| size | host | params | update XLA / analytic | rollout XLA / analytic (KV) "
          "| LoRA | fits |\n|---|---|---|---|---|---|---|")


def format_row(row: dict, host: Host) -> str:
  a = row["analytic"]
  g = lambda x: f"{x / GIB:.2f}"  # noqa: E731
  roll = (f"{g(row['rollout'])} / {g(a['rollout'])} ({g(a['kv'])})" if "rollout" in row
          else "-")
  return (f"| {row['size']} | {row['host']} ({host.devices} x {host.gib:g} GiB) "
          f"| {a['params'] / 1e9:.2f} B | {g(row['update'])} / {g(a['update'])} | {roll} "
          f"| {row.get('lora', 'no')} | {'yes' if row['fits'] else 'no'} |")


CONFIG_HEADER = ("| preset | paper host | model | update rows x positions | remat / microbatch "
                 "| mesh (data, fsdp, tensor) | update GiB | rollout GiB | fits |\n"
                 "|---|---|---|---|---|---|---|---|---|")


def run_config(args) -> dict:
  """`--config`: the preset's RL update (and rollout) per device on its paper host."""
  import memory_config as mc
  config = mc.load_config(args.config)
  host = mc.PAPER_HOSTS.get(config.name, mc.PaperHost(1, 80, "not in PAPER_HOSTS"))
  devices = args.devices or host.devices
  mesh = mc.mesh_for(config, devices)
  t0 = time.perf_counter()
  step = mc.abstract_step(config, mesh, args.prompt)
  compiled = mc.compile_step(step, mesh, rollout_too=not args.no_rollout)
  row = {"preset": config.name, "devices": devices, "gib": host.gib,
         "model": config.model.preset, "dtype": config.model.dtype,
         "lora": int(config.model.lora.rank), "rows": step["minibatch"],
         "positions": args.prompt + step["new"], "remat": bool(config.model.remat),
         "microbatch": int(config.rl.microbatch), "mesh": tuple(mesh.shape.values()),
         "update": measured(compiled["update"]),
         "rollout": measured(compiled["rollout"]) if compiled["rollout"] else None,
         "rollout_rows": step["rows"], "compile_s": time.perf_counter() - t0}
  row["fits"] = max(row["update"], row["rollout"] or 0) <= host.gib * GIB
  print(format_config_row(row), flush=True)
  return row


def format_config_row(row: dict) -> str:
  g = lambda x: "-" if x is None else f"{x / GIB:.2f}"  # noqa: E731
  lora = f", LoRA r{row['lora']}" if row["lora"] else ""
  return (f"| {row['preset']} | {row['devices']} x {row['gib']:g} GiB "
          f"| {row['model']} {row['dtype']}{lora} | {row['rows']} x {row['positions']} "
          f"| {row['remat']} / {row['microbatch'] or 'off'} | {row['mesh']} "
          f"| {g(row['update'])} | {g(row['rollout'])} | {'yes' if row['fits'] else 'no'} |")


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  if args.config:
    import memory_config as mc
    config = mc.load_config(args.config)
    devices = args.devices or mc.PAPER_HOSTS.get(config.name, mc.PaperHost(1, 0, "")).devices
    jax.config.update("jax_num_cpu_devices", max(devices, 1))
    print(f"# per-device GiB, XLA:CPU compile estimate (memory_analysis), {args.config}, "
          f"prompt {args.prompt} tokens; jax {jax.__version__}")
    print(CONFIG_HEADER, flush=True)
    return [run_config(args)]
  jax.config.update("jax_num_cpu_devices", 8)
  print(f"# per-device GiB; batch {args.batch} x ({args.prompt} + {args.new}) tokens, "
        f"{args.dtype}, remat {bool(args.remat)}, logits_chunk {args.logits_chunk}, "
        f"microbatch {args.microbatch}, beta {args.beta}, lora rank {args.lora_rank}; "
        f"jax {jax.__version__}")
  print(HEADER, flush=True)
  return run(argv)


if __name__ == "__main__":
  main()
