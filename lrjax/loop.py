"""Pieces every training phase shares: resume, periodic evaluation, phase markers.

A phase keeps its files in `<workdir>/<phase>/`: `ckpt/` (Orbax), `export/`
(HF weights + tokenizer, written when the phase completes) and `DONE`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np

from lrjax import parallel
from lrjax.checkpoint import Checkpointer, abstract_state
from lrjax.evaluate import evaluate, rule_aux
from lrjax.latent import RuleContext, rule_config
from lrjax.rollout import Sampling


def phase_dir(run, phase: str) -> str:
  return os.path.join(run.workdir, phase)


def is_done(run, phase: str) -> bool:
  return os.path.exists(os.path.join(phase_dir(run, phase), "DONE"))


def mark_done(run, phase: str, summary: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(phase_dir(run, phase), "DONE"), "w") as f:
      json.dump(summary, f, indent=2)


def checkpointer(run, phase: str) -> Checkpointer:
  return Checkpointer(os.path.join(phase_dir(run, phase), "ckpt"),
                      max_to_keep=run.config.checkpoint.max_to_keep)


def place(run, tree: Any) -> Any:
  """Puts a parameter-like tree on the mesh with lrjax's partition rules."""
  return jax.device_put(tree, parallel.param_shardings(tree, run.mesh))


def try_resume(run, phase: str, ckpt: Checkpointer, state: Any) -> tuple[Any, int, dict]:
  """(state, next step, meta): restored when the phase has a checkpoint."""
  latest = ckpt.latest_step()
  if latest is None:
    return state, 0, {}
  target = abstract_state(state)
  restored, meta = ckpt.restore(target, latest)
  run.metrics.truncate(phase, latest)
  logging.info("resuming %s at step %d", phase, latest)
  print(f"[lrjax] resuming phase {phase!r} from its checkpoint at step {latest}", flush=True)
  return restored, latest, meta


def data_indices(seed: int, n: int, step: int, batch: int) -> np.ndarray:
  """Problem indices of a step: epoch-wise permutations fixed by (seed, epoch)."""
  return data_window(seed, n, step * batch, batch)


def data_window(seed: int, n: int, start: int, count: int) -> np.ndarray:
  """`count` problem indices from data cursor `start` of the stream of epoch-wise
  permutations fixed by (seed, epoch): the cursor counts problems drawn so far."""
  out = []
  while len(out) < count:
    epoch, offset = divmod(start + len(out), n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(perm[offset:offset + count - len(out)].tolist())
  return np.asarray(out)


def eval_context(run, rule: str, max_new: int, num_latent: int = 0,
                 temperature: float = 1.0) -> RuleContext:
  """The rule's context for `run`: its declared `config.rule` fields, the special ids."""
  c = run.config
  rule_cfg = rule_config(rule, c.rule)
  return RuleContext(
      model_cfg=run.model_cfg, rule=rule, rule_cfg=rule_cfg,
      sampling=Sampling(temperature=temperature), eos_id=run.special["eos_id"],
      pad_id=run.special["pad_id"], bot_id=run.special.get("bot_id", -1),
      latent_id=run.special.get("latent_id", -1), eot_id=run.special.get("eot_id", -1),
      num_latent=num_latent, max_new=max_new)


def run_eval(run, phase: str, step: int, params: dict, ctx: RuleContext,
             prompt_suffix=(), sampled: bool = True) -> dict:
  """Evaluates on the held-out set, logs `eval/*` at (phase, step), returns the metrics."""
  e = run.config.eval
  # the same shardings at every evaluation: a jit output's sharding differs
  # from a placed one's, which would recompile the rollout each time
  params = place(run, params)
  problems = run.task.eval[:e.num_problems] if e.num_problems else run.task.eval
  reward = run.config.rl.reward or run.task.reward
  metrics = evaluate(ctx, params, run.tokenizer, problems, reward,
                     jax.random.fold_in(jax.random.key(run.config.seed + 7919), step),
                     batch_size=e.batch_size, num_samples=e.num_samples, pass_k=tuple(e.pass_k),
                     temperature=e.temperature, sampled=e.sampled and sampled,
                     aux=rule_aux(ctx.rule, run.tokenizer), prompt_suffix=prompt_suffix)
  run.metrics.write(phase, step, metrics)
  shown = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in metrics.items())
  print(f"[lrjax] {phase} step {step} eval: {shown}", flush=True)
  return metrics
