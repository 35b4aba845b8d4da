"""One full GRPO step, lrjax against TRL's `GRPOTrainer`, on the same tiny Qwen2.

A step: rollout of `--prompts` × `--group` completions of exactly `--new` tokens
(no early stop on either side: lrjax `eos_id=-1`, TRL `min_new_tokens = max`),
rewards (the share of even token ids, the same function on both sides),
group-normalised advantages, one AdamW update of the token-mean clipped loss
(TRL's default `dapo` loss; lrjax `ppo_clip` + `token_mean`), β = 0 (no reference
model on either side), float32, no gradient checkpointing / remat. Both run the
weights of one random transformers Qwen2 (the rollout benchmark's shape: vocab
512, hidden 256, intermediate 704, 4 layers, 4 heads, 2 KV heads) saved once and
loaded by lrjax with `load_hf`. Each side takes `--warmup` untimed steps
(compiles, allocator warm-up), then `--steps` timed ones; the median is printed.

    pip install --no-deps trl==1.16.0 accelerate   # keeps the installed torch
    python benchmarks/grpo_step.py                  # 64 × 128 tokens, 5 steps after 2
    python benchmarks/grpo_step.py --quick          # tiny model, 1 step (the smoke test)
    python benchmarks/grpo_step.py --lengths=mixed  # rows of 16..128 real tokens

`--lengths=mixed`: row b of step s has a real length drawn uniformly from
[16, `--new`] (numpy seed [seed, s, 7], the same on both sides). Both sides still
generate `--new` tokens (the same generation cost) and then treat every token past
a row's length as after its eos: lrjax marks those positions DONE (its response
mask), TRL's generation returns each row cut there (its completion mask). Rewards
read the real tokens only. lrjax's update then runs length-bucketed
(`--bucket-width`, chunks of `--microbatch` rows; `rl.bucket_width`), TRL's as it
does by default; the MFU counts the real tokens only.

Parts. lrjax: rollout (jitted sampler), rewards (host), advantages, update
(one jitted forward + backward + AdamW). TRL: generate (`model.generate`), the
rest of `_generate_and_score_completions` (tokenising, decoding, rewards,
advantages), loss forward (`compute_loss`), and backward + optimizer (the rest of
the Trainer step). MFU of the update: model FLOPs (6 · matmul parameters · tokens
plus attention 12 · L · T · N·D per token over the full T × T scores, PaLM's
count, and the LM head) over the update's time, against the peak of a jitted
float32 2048² matmul on the same machine (`peak_matmul_flops`, the fastest of 10).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # lrjax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer  # noqa: E402
from lrjax.latent import RuleContext  # noqa: E402
from lrjax.model import load_hf  # noqa: E402
from lrjax.optim import ParamGroups, make_grouped_optimizer  # noqa: E402
from lrjax.parallel import make_mesh, replicated, shard_batch  # noqa: E402
from lrjax.rl.advantages import AdvantageSpec, compute_advantages  # noqa: E402
from lrjax.rl.learner import LossSpec, make_update  # noqa: E402
from lrjax.rollout import Sampling, rollout  # noqa: E402


def _rollout_bench():
  """benchmarks/rollout.py as a module: the model shape, `build_hf_model`, `environment`."""
  spec = importlib.util.spec_from_file_location("benchmarks_rollout", os.path.join(HERE, "rollout.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  return mod


RB = _rollout_bench()
LR = 1e-6  # TRL's GRPO default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--prompts", type=int, default=8, help="distinct prompts per step")
  p.add_argument("--group", type=int, default=8, help="completions per prompt")
  p.add_argument("--new", type=int, default=128, help="new tokens per completion")
  p.add_argument("--prompt-len", type=int, default=16, help="prompt characters (= tokens)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
  p.add_argument("--steps", type=int, default=5, help="timed steps per side (median)")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--no-trl", action="store_true", help="time lrjax only")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--profile", action="store_true",
                 help="also time lrjax's loss forward and forward + backward alone, with "
                      "XLA's FLOP counts")
  p.add_argument("--trace", default=None, help="with --profile: write a jax.profiler trace here")
  p.add_argument("--quick", action="store_true", help="tiny model, 2 × 2 × 8 tokens, 1 step")
  p.add_argument("--lengths", choices=("fixed", "mixed"), default="fixed",
                 help="every row --new tokens, or real lengths uniform in [16, --new]")
  p.add_argument("--bucket-width", type=int, default=16,
                 help="with --lengths=mixed: lrjax's rl.bucket_width (0: padded update)")
  p.add_argument("--microbatch", type=int, default=8,
                 help="with --lengths=mixed: rows per length-sorted chunk (rl.microbatch)")
  p.add_argument("--rollout-devices", type=int, default=1,
                 help="lrjax's rollout data-parallel over this many XLA CPU devices")
  p.add_argument("--update-devices", type=int, default=1,
                 help="lrjax's update data-parallel over this many XLA CPU devices")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = p.parse_args(argv)
  args.shape = RB.FULL
  if args.quick:
    args.shape, args.prompts, args.group, args.new, args.prompt_len = RB.QUICK, 2, 2, 8, 4
    args.warmup, args.steps = 1, 1
  args.rows = args.prompts * args.group  # completions per step
  for name in ("rollout_devices", "update_devices"):
    n = getattr(args, name)
    if n < 1 or args.rows % n:
      p.error(f"--{name.replace('_', '-')} {n} must be >= 1 and divide the batch "
              f"({args.rows} rows)")
  return args


def prompts_text(args, step: int) -> list[str]:
  """`--prompts` random strings of `--prompt-len` characters (one token each)."""
  rng = np.random.default_rng([args.seed, step])
  chars = np.array(list(DEFAULT_ALPHABET[:36]))
  return ["".join(rng.choice(chars, args.prompt_len)) for _ in range(args.prompts)]


def even_share(ids: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
  """The reward of both sides: the share of even token ids in each completion (its
  first `lengths[b]` tokens when given)."""
  ids = np.asarray(ids)
  if lengths is None:
    return np.mean(ids % 2 == 0, axis=-1).astype(np.float32)
  live = np.arange(ids.shape[1])[None] < np.asarray(lengths)[:, None]
  return ((ids % 2 == 0) & live).sum(-1).astype(np.float32) / np.asarray(lengths, np.float32)


def row_lengths(args, step: int) -> np.ndarray | None:
  """[prompts × group] real lengths of step `step` (None: every row --new tokens)."""
  if args.lengths == "fixed":
    return None
  lo = min(16, max(1, args.new // 2))
  return np.random.default_rng([args.seed, step, 7]).integers(
      lo, args.new + 1, args.rows)


def end_rows(traj, lengths: np.ndarray):
  """traj with row b's response ended after lengths[b] tokens: later positions DONE,
  unsampled (lrjax's response mask; what an eos there would have given)."""
  import dataclasses  # noqa: PLC0415
  from lrjax.latent import DONE  # noqa: PLC0415
  live = jnp.asarray(np.arange(traj.ids.shape[1])[None] < lengths[:, None])
  return dataclasses.replace(
      traj, span=jnp.where(live, traj.span, DONE).astype(traj.span.dtype),
      sampled=traj.sampled & live, logp=jnp.where(live, traj.logp, 0.0),
      lengths=jnp.asarray(lengths, jnp.int32), truncated=jnp.zeros_like(traj.truncated))


def median_parts(steps: list[dict]) -> dict:
  return {k: statistics.median(s[k] for s in steps) for k in steps[0]}


# --------------------------------------------------------------------------- lrjax


def placer(devices: list) -> Callable:
  """(tree, rows=False) -> tree on `devices`: one device, or lrjax's mesh over them with
  the tree replicated or its rows split (`lrjax.parallel`)."""
  if len(devices) == 1:
    return lambda tree, rows=False: jax.device_put(tree, devices[0])
  mesh = make_mesh(devices=devices)
  return lambda tree, rows=False: (shard_batch(tree, mesh) if rows
                                   else jax.device_put(tree, replicated(mesh)))


def bench_lrjax(args, cfg, model_params, tok, devices: list) -> dict:
  """With --rollout-devices / --update-devices above 1 the phase runs data-parallel
  over that many XLA CPU devices (rows split, parameters replicated); the rollout's
  time includes copying the parameters to its devices and its trajectory to the
  update's (the two layouts need not match)."""
  b = args.rows
  ctx = RuleContext(cfg, "token", sampling=Sampling(temperature=1.0), eos_id=-1, pad_id=0,
                    max_new=args.new)
  on_rollout, on_update = devices[:args.rollout_devices], devices[:args.update_devices]
  to_rollout, to_update = placer(on_rollout), placer(on_update)
  opt = make_grouped_optimizer(ParamGroups(((".*", LR),)))
  bucketed = args.lengths == "mixed" and args.bucket_width > 0
  update = make_update(ctx, LossSpec(loss="ppo_clip", aggregation="token_mean", beta=0.0), opt,
                       mesh=make_mesh(devices=on_update) if len(on_update) > 1 else None,
                       **(dict(microbatch=args.microbatch, bucket_width=args.bucket_width)
                          if bucketed else {}))
  adv_spec = AdvantageSpec(group_size=args.group)
  adv_fn = jax.jit(lambda r: compute_advantages(adv_spec, r))
  params = to_update({"model": jax.tree.map(jnp.copy, model_params), "rule": {}, "heads": {}})
  opt_state = to_update(opt.init(params))  # all committed: one compile
  steps = []
  for step in range(args.warmup + args.steps):
    enc = tok(prompts_text(args, step), add_special_tokens=False)["input_ids"]
    ids = np.repeat(np.asarray(enc, np.int32), args.group, axis=0)  # B P, groups consecutive
    mask = np.ones_like(ids)
    t0 = time.perf_counter()
    ids, mask = to_rollout((ids, mask), rows=True)
    traj = rollout(ctx, params if on_rollout == on_update else
                   to_rollout(params), ids, mask, jax.random.key(step))
    if on_rollout != on_update:
      traj = to_update(traj, rows=True)
    traj = jax.block_until_ready(traj)
    t1 = time.perf_counter()
    if traj.ids.shape != (b, args.new) or int(np.min(traj.lengths)) != args.new:
      raise RuntimeError("lrjax: expected every row to run to --new tokens")
    lengths = row_lengths(args, step)
    if lengths is not None:  # untimed: stands for an eos at each row's length
      traj = jax.block_until_ready(end_rows(traj, lengths))
      t1 = time.perf_counter()
    rewards = even_share(traj.ids, lengths)  # host
    t2 = time.perf_counter()
    adv = jax.block_until_ready(adv_fn(to_update(rewards, rows=True)))
    t3 = time.perf_counter()
    params, opt_state, m = update(params, opt_state, None, traj, adv, None)
    jax.block_until_ready((params, m))
    t4 = time.perf_counter()
    if step >= args.warmup:
      steps.append({"rollout": t1 - t0, "rewards": t2 - t1, "advantages": t3 - t2,
                    "update": t4 - t3, "step": t4 - t0})
  res = median_parts(steps)
  if args.profile and not bucketed:
    res.update(profile_update(args, ctx, update, params, opt_state, traj, adv))
  return res


def profile_update(args, ctx, update, params, opt_state, traj, adv) -> dict:
  """What the update's time goes to: the loss forward alone, forward + backward, the
  whole update (+ clip + AdamW), and XLA's own FLOP count of each program; with
  --trace, a jax.profiler trace of three updates (TensorBoard / Perfetto)."""
  from lrjax.rl.learner import policy_loss  # noqa: PLC0415
  spec = LossSpec(loss="ppo_clip", aggregation="token_mean", beta=0.0)
  loss = lambda p: policy_loss(ctx, spec, p, None, traj, adv, None)[0]  # noqa: E731
  progs = {"loss_forward": jax.jit(loss), "forward+backward": jax.jit(jax.value_and_grad(loss))}
  out = {}
  for name, fn in progs.items():
    compiled = fn.lower(params).compile()
    out[f"xla_gflop_{name}"] = compiled.cost_analysis().get("flops", float("nan")) / 1e9
    jax.block_until_ready(compiled(params))
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(params))
      times.append(time.perf_counter() - t0)
    out[f"time_{name}"] = statistics.median(times)
  compiled = update.lower(params, opt_state, None, traj, adv, None).compile()
  out["xla_gflop_update"] = compiled.cost_analysis().get("flops", float("nan")) / 1e9
  if args.trace:
    with jax.profiler.trace(args.trace, create_perfetto_trace=True):
      for _ in range(3):
        params, opt_state, m = update(params, opt_state, None, traj, adv, None)
        jax.block_until_ready((params, m))
    out["trace_ms_per_update"] = trace_kinds(args.trace, 3)
  return out


def trace_kinds(folder: str, calls: int) -> dict:
  """ms per call of each kind of XLA op in a perfetto trace ('ynn_fusion': XNNPACK dots,
  'copy_bitcast_fusion': layout copies, ...), the fusion's number stripped."""
  import collections, glob, gzip, json, re  # noqa: E401, PLC0415
  path = sorted(glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  kinds = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "Slinky")):
      kinds[re.sub(r"[.\d]+$", "", name)] += e.get("dur", 0) / 1e3 / calls
  return dict(kinds.most_common(8))


# --------------------------------------------------------------------------- TRL


def bench_trl(args, path: str, tok) -> tuple[dict, float | None]:
  """TRL's GRPOTrainer on the saved model, its methods wrapped with timers -> (median
  parts, with --lengths=mixed the mean completion length of its last step)."""
  import datasets  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  from trl import GRPOConfig, GRPOTrainer  # noqa: PLC0415

  b, total = args.rows, args.warmup + args.steps
  rows = [p for s in range(total) for p in prompts_text(args, s)]
  seen: list[list[int]] = []  # with --lengths=mixed: the completion lengths TRL trained on
  data = datasets.Dataset.from_dict({"prompt": rows})
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

  def reward(completions, completion_ids, **kw):
    return [float(even_share(np.asarray(c)[None])[0]) for c in completion_ids]

  with tempfile.TemporaryDirectory() as out:
    conf = GRPOConfig(
        output_dir=out, per_device_train_batch_size=b, num_generations=args.group,
        max_completion_length=args.new, generation_kwargs={"min_new_tokens": args.new},
        temperature=1.0, top_k=0, top_p=1.0, learning_rate=LR, beta=0.0, loss_type="dapo",
        max_steps=total, gradient_checkpointing=False, bf16=False, use_cpu=True,
        logging_steps=10_000, save_strategy="no", report_to="none", seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True, shuffle_dataset=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=conf, train_dataset=data,
                          processing_class=tok)
    clock: dict = {"generate": 0.0, "generate_and_score": 0.0, "loss_forward": 0.0}

    def timed(name, fn):
      def wrapper(*a, **kw):
        t0 = time.perf_counter()
        out_ = fn(*a, **kw)
        clock[name] += time.perf_counter() - t0
        return out_
      return wrapper
    trainer._generate = timed("generate", trainer._generate)
    trainer._generate_and_score_completions = timed("generate_and_score",
                                                    trainer._generate_and_score_completions)
    trainer.compute_loss = timed("loss_forward", trainer.compute_loss)
    if args.lengths == "mixed":  # each row cut at its length: TRL's own after-eos cut
      generate = trainer._generate_single_turn

      def cut_rows(*a, **kw):
        ids, logprobs = generate(*a, **kw)
        lengths = row_lengths(args, trainer.state.global_step)
        if any(len(c) != args.new for c in ids):
          raise RuntimeError("TRL: expected every row to run to --new tokens")
        ids = [c[:n] for c, n in zip(ids, lengths, strict=True)]
        seen.append([len(c) for c in ids])
        if logprobs is not None:
          logprobs = [lp[:n] for lp, n in zip(logprobs, lengths, strict=True)]
        return ids, logprobs
      trainer._generate_single_turn = cut_rows
    steps: list[dict] = []

    class Clock(transformers.TrainerCallback):
      def on_step_begin(self, *a, **kw):
        for k in clock:
          clock[k] = 0.0
        self.t0 = time.perf_counter()

      def on_step_end(self, *a, **kw):
        step = time.perf_counter() - self.t0
        steps.append({"generate": clock["generate"],
                      "rewards+advantages": clock["generate_and_score"] - clock["generate"],
                      "loss_forward": clock["loss_forward"],
                      "backward+optimizer": step - clock["generate_and_score"] - clock["loss_forward"],
                      "step": step})
    trainer.add_callback(Clock())
    trainer.train()
  if len(steps) != total:
    raise RuntimeError(f"TRL ran {len(steps)} optimizer steps, expected {total}")
  parts = median_parts(steps[args.warmup:])
  return parts, (float(np.mean(seen[-1])) if seen else None)


# --------------------------------------------------------------------------- FLOPs


def update_flops(cfg, batch: int, seq: int) -> float:
  """Forward + backward model FLOPs of one update over [batch, seq] positions."""
  h, f, v, n_d, k_d = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size,
                       cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim)
  matmul_params = cfg.num_layers * (h * n_d + 2 * h * k_d + n_d * h + 3 * h * f) + h * v
  per_token = 6 * matmul_params + 12 * cfg.num_layers * seq * n_d
  return float(per_token * batch * seq)


def peak_matmul_flops(n: int = 2048, runs: int = 10) -> float:
  """FLOP/s of a jitted float32 [n, n] @ [n, n] on jax's default device (the fastest of
  `runs`: a peak, so the least disturbed call)."""
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(mm(x, x))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(x, x))
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  # before any jax computation: a CPU host splits into that many XLA devices
  devices = RB.ensure_devices(max(args.rollout_devices, args.update_devices))
  torch.set_num_threads(args.threads)
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  with tempfile.TemporaryDirectory() as tmp:
    RB.build_hf_model(args.shape, tmp, args.seed)
    cfg, model_params = load_hf(tmp)
    env = RB.environment()
    print(f"jax {env['jax']} ({env['jax_platform']}), torch {env['torch']}, transformers "
          f"{env['transformers']}, {env['torch_threads']} torch threads, {env['cpu_count']} cpus, "
          f"load {env.get('loadavg')}", flush=True)
    b = args.rows
    print(f"step: {args.prompts} prompts × {args.group} = {b} completions × {args.new} tokens "
          f"(prompt {args.prompt_len}); median of {args.steps} after {args.warmup}; lrjax "
          f"rollout on {args.rollout_devices}, update on {args.update_devices} XLA device(s)",
          flush=True)
    res = {"lrjax": bench_lrjax(args, cfg, model_params, tok, devices)}
    if not args.no_trl:
      import trl  # noqa: PLC0415
      res["trl"], res["trl_mean_length"] = bench_trl(args, tmp, tok)
      res["trl_version"] = trl.__version__
  seq = args.prompt_len + args.new - 1
  flops, peak = update_flops(cfg, b, seq), peak_matmul_flops()
  if args.lengths == "mixed":  # the real tokens' FLOPs, averaged over the timed steps
    timed = [row_lengths(args, s) for s in range(args.warmup, args.warmup + args.steps)]
    flops = float(np.mean([sum(update_flops(cfg, 1, args.prompt_len + n - 1) for n in ls)
                           for ls in timed]))
    res["real_token_share"] = float(np.mean([ls.sum() / (b * args.new) for ls in timed]))
    print(f"mixed lengths: real tokens {100 * res['real_token_share']:.1f}% of the buffer; "
          f"lrjax update " + (f"length-bucketed (width {args.bucket_width}, chunks of "
                              f"{args.microbatch} rows)" if args.bucket_width else "padded"),
          flush=True)
  res.update(update_flops=flops, peak_flops=peak,
             mfu_lrjax=flops / res["lrjax"]["update"] / peak)
  for side in ("lrjax", "trl"):
    if side in res:
      parts = ", ".join(f"{k} {v:.3f} s" for k, v in res[side].items()
                        if k != "step" and not k.startswith(("xla_", "time_", "trace_")))
      print(f"{side:6s} step {res[side]['step']:.3f} s  ({parts})")
  mfu = (f"update: {flops / 1e9:.1f} GFLOP; matmul peak {peak / 1e9:.1f} GFLOP/s; "
         f"lrjax update MFU {100 * res['mfu_lrjax']:.1f}%")
  lj = res["lrjax"]
  if args.profile:
    print("lrjax update profile: " + ", ".join(
        f"{k} {lj['time_' + k]:.3f} s ({lj['xla_gflop_' + k]:.1f} XLA GFLOP, "
        f"{lj['xla_gflop_' + k] / lj['time_' + k]:.1f} GFLOP/s)"
        for k in ("loss_forward", "forward+backward")) +
        f"; whole update {lj['xla_gflop_update']:.1f} XLA GFLOP")
    if "trace_ms_per_update" in lj:
      print("  trace, ms per update: " + ", ".join(
          f"{k} {v:.0f}" for k, v in lj["trace_ms_per_update"].items()))
  if "trl" in res:
    trl_update = res["trl"]["loss_forward"] + res["trl"]["backward+optimizer"]
    res["mfu_trl"] = flops / trl_update / peak
    res["ratio"] = res["trl"]["step"] / res["lrjax"]["step"]
    print(f"{mfu}, TRL's {100 * res['mfu_trl']:.1f}%\nTRL {res['trl_version']} step / lrjax step: "
          f"{res['ratio']:.2f}x (rollout {res['trl']['generate'] / res['lrjax']['rollout']:.2f}x, "
          f"update {trl_update / res['lrjax']['update']:.2f}x)")
  else:
    print(mfu)
  if args.json:
    import json  # noqa: PLC0415
    with open(args.json, "w") as f:
      json.dump({**res, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "args": {k: v for k, v in vars(args).items() if k != "shape"}}, f, indent=1)
  return res


if __name__ == "__main__":
  main()
