"""Held-out evaluation, which every phase runs: greedy accuracy, unbiased pass@k,
format rate, lengths.

`evaluate_at(run, phase, step, params, ctx)` evaluates `params` on the first
`eval.num_problems` held-out problems and logs the metrics at (phase, step);
`evaluate` computes them for any parameters, rule context and problems.

Metric keys (one JSON line per evaluation, see lrjax/metrics.py):

    eval/accuracy          greedy decoding, task reward (HRPO rule for '####' tasks)
    eval/pass@1, pass@k    n = eval.num_samples samples per problem at eval.temperature,
                           unbiased estimator 1 - C(n-c, k) / C(n, k)  (Chen et al. 2021,
                           arXiv 2107.03374), averaged over problems
    eval/format_rate       share of greedy answers with exactly one '####'
    eval/response_tokens   mean response positions of the greedy answers (latents included)
    eval/latent_steps      mean latent / think-span positions of the greedy answers

With `eval.show_samples` = n > 0, every evaluation also appends the greedy
completions of the first n problems to `<workdir>/samples.jsonl`, one line
each: phase, step, prompt, answer, reward, completion, and `latent`, the
rule's latent positions in readable form (`lrjax.latent.readable`);
`python -m lrjax.inspect --workdir=W` prints them as a transcript. (Multi-process
runs write no samples: the readable forms read the parameters on one host.)
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from lrjax import metrics as metrics_lib, parallel, rewards as rewards_lib
from lrjax.data.tasks import Problem
from lrjax.latent import RuleContext, rule_aux
from lrjax.latent.readable import readable
from lrjax.rollout import (PROMPT_BUCKETS, Sampling, bucket_length, decode, encode_prompts,
                           pad_prompts, rollout)
from lrjax.sampling import knobs


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
  if k > n:
    raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def generate(ctx: RuleContext, params: dict, prompts: list[list[int]], key: jax.Array,
             batch_size: int, aux: Any = None, pad_id: int = 0, mesh: Any = None,
             knobs: jax.Array | None = None):
  """Rolls out every prompt in fixed-size batches (the last one padded by repetition),
  split over the mesh's (data, fsdp) when one is given (`parallel.feed`); `knobs`: the
  traced temperature and greedy of `rollout`.

  Returns (list of Trajectory slices as numpy dicts per batch, real row counts).
  """
  bucket = bucket_length(max(len(p) for p in prompts), PROMPT_BUCKETS)
  out = []
  for i in range(0, len(prompts), batch_size):
    chunk = prompts[i:i + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)  # keep one compiled shape
    ids, mask = pad_prompts(chunk, bucket, pad_id)
    if mesh is not None:  # each process feeds its own rows
      ids, mask = parallel.feed((ids, mask), mesh)
    traj = rollout(ctx, params, ids, mask, jax.random.fold_in(key, i), aux, knobs)
    out.append((parallel.fetch(traj), real))  # the whole batch, on every process
  return out


def score(run_tokenizer: Any, ctx: RuleContext, batches, answers: Sequence[str], reward_fn):
  """(correct [n], formatted [n], lengths [n], latent [n]) over the generated batches."""
  correct, formatted, lengths, latent = [], [], [], []
  j = 0
  for traj, real in batches:
    texts = decode(run_tokenizer, traj, ctx)[:real]
    for b, text in enumerate(texts):
      correct.append(reward_fn(text, answers[j]))
      formatted.append(rewards_lib.format_hash(text, answers[j]))
      j += 1
    lengths.extend(np.asarray(traj.lengths)[:real].tolist())
    latent.extend(np.asarray(traj.latent_mask).sum(-1)[:real].tolist())
  return (np.asarray(correct, np.float64), np.asarray(formatted, np.float64),
          np.asarray(lengths, np.float64), np.asarray(latent, np.float64))


def evaluate(ctx: RuleContext, params: dict, tokenizer: Any, problems: Sequence[Problem],
             reward: str, key: jax.Array, *, batch_size: int = 500, num_samples: int = 8,
             pass_k: Sequence[int] = (1, 8), temperature: float = 1.0, sampled: bool = True,
             aux: Any = None, prompt_suffix: Sequence[int] = (), mesh: Any = None,
             show: int = 0, samples: list | None = None, prompter: Any = None
             ) -> dict[str, float]:
  """All `eval/*` metrics of `params` under `ctx`'s rule on `problems` (the rollouts
  split over `mesh` when given); with `show` > 0 and a `samples` list, the first
  `show` greedy completions are appended to it (`sample_records`). Prompts are written
  by `prompter` (`lrjax.data.prompts.Prompter`; None: the raw format)."""
  t0 = time.time()
  reward_fn = rewards_lib.REWARDS.get(reward)
  prompts = encode_prompts(prompter or tokenizer, problems, prompt_suffix)
  answers = [p.answer for p in problems]
  pad_id = ctx.pad_id
  # greedy and sampled rollouts run one compiled program: their temperature and greedy
  # are traced (`knobs`); evaluation truncates nothing (top-k 0, top-p 1)
  shared = ctx.replace(sampling=Sampling())
  greedy = Sampling(temperature=ctx.sampling.temperature, greedy=True)
  greedy_ctx = ctx.replace(sampling=greedy)
  batches = generate(shared, params, prompts, key, batch_size, aux, pad_id, mesh, knobs(greedy))
  correct, formatted, lengths, latent = score(tokenizer, greedy_ctx, batches, answers, reward_fn)
  if show > 0 and samples is not None:
    samples.extend(sample_records(greedy_ctx, params, tokenizer, batches[0][0], prompts,
                                  answers, correct, min(show, batches[0][1])))
  metrics = {"eval/accuracy": correct.mean(), "eval/format_rate": formatted.mean(),
             "eval/response_tokens": lengths.mean(), "eval/latent_steps": latent.mean()}
  if sampled and num_samples > 0:
    drawn = Sampling(temperature=temperature)
    sample_ctx = ctx.replace(sampling=drawn)
    rep_prompts = [p for p in prompts for _ in range(num_samples)]
    rep_answers = [a for a in answers for _ in range(num_samples)]
    batches = generate(shared, params, rep_prompts, jax.random.fold_in(key, 1),
                       batch_size, aux, pad_id, mesh, knobs(drawn))
    ok = score(tokenizer, sample_ctx, batches, rep_answers, reward_fn)[0]
    ok = ok.reshape(len(problems), num_samples) > 0.5
    c = ok.sum(-1)
    for k in pass_k:
      if k <= num_samples:
        metrics[f"eval/pass@{k}"] = float(np.mean([pass_at_k(num_samples, int(ci), k) for ci in c]))
  metrics["eval/seconds"] = time.time() - t0
  return {k: float(v) for k, v in metrics.items()}


def sample_records(ctx: RuleContext, params: dict, tokenizer: Any, traj, prompts, answers,
                   correct, n: int) -> list[dict]:
  """The first n rows of a greedy batch as readable records (see the module doc)."""
  texts = decode(tokenizer, traj, ctx)
  return [{"prompt": tokenizer.decode(prompts[i]), "answer": answers[i],
           "reward": float(correct[i]), "completion": texts[i],
           "latent": readable(ctx, params, traj, i, tokenizer)} for i in range(n)]


def write_samples(workdir: str, phase: str, step: int, samples: list[dict]) -> None:
  """Appends the records to `<workdir>/samples.jsonl` (process 0 only)."""
  if not samples or jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "samples.jsonl"), "a") as f:
    for rec in samples:
      f.write(json.dumps({"phase": phase, "step": int(step), **rec}) + "\n")


def truncate_samples(workdir: str, phase: str, step: int) -> None:
  """Drops the sample lines a run resumed at `step` of `phase` will write again."""
  path = os.path.join(workdir, "samples.jsonl")
  if not os.path.exists(path) or jax.process_index() != 0:
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by an interruption
    if not (rec.get("phase") == phase and rec.get("step", 0) > step):
      keep.append(line)
  with open(path + ".tmp", "w") as f:
    f.writelines(keep)
  os.replace(path + ".tmp", path)


def evaluate_at(run, phase: str, step: int, params: dict, ctx: RuleContext,
                prompt_suffix=(), sampled: bool = True) -> dict:
  """Evaluates on the held-out set, logs `eval/*` at (phase, step), returns the metrics."""
  e = run.config.eval
  # the same shardings at every evaluation: a jit output's sharding differs
  # from a placed one's, which would recompile the rollout each time
  params = run.place(params)
  problems = run.task.eval[:e.num_problems] if e.num_problems else run.task.eval
  reward = run.config.rl.reward or run.task.reward
  samples: list[dict] = []
  metrics = evaluate(ctx, params, run.tokenizer, problems, reward,
                     jax.random.fold_in(jax.random.key(run.config.seed + 7919), step),
                     batch_size=e.batch_size, num_samples=e.num_samples, pass_k=tuple(e.pass_k),
                     temperature=e.temperature, sampled=e.sampled and sampled,
                     aux=rule_aux(ctx.rule, run.tokenizer, ctx.rule_cfg), prompt_suffix=prompt_suffix,
                     mesh=run.mesh, samples=samples, prompter=run.prompter,
                     # samples read the parameters on the host: single-process runs only
                     show=int(e.show_samples) if jax.process_count() == 1 else 0)
  run.metrics.write(phase, step, metrics)
  write_samples(run.workdir, phase, step, samples)
  shown = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in metrics.items())
  metrics_lib.say(f"[lrjax] {phase} step {step} eval: {shown}")
  return metrics
