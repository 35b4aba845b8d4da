"""One step of the RL phase: roll out and score a batch (`draw_round`), learn from it
(`learn`). `lrjax.phases.rl` loops over them; tests/multiprocess_worker.py runs them
as one of several processes.

With several processes every process builds the same prompt batch, feeds only
the rows its devices hold (`parallel.feed`), decodes and scores only those
(`parallel.local_rows`), and shares the rewards (`parallel.gather_rows`); the
update is one SPMD program over all of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import numpy as np

from lrjax import parallel
from lrjax.latent import RULES, RuleContext, objective_of
from lrjax.rl import advantages as adv_lib, dynamic, learner
from lrjax.rollout import PROMPT_BUCKETS, bucket_length, decode, encode_prompts, pad_prompts, rollout


def draw_round(run, ctx: RuleContext, params: dict, problems: Sequence[Any], *, group_size: int,
               suffix: Sequence[int], reward_fn: Callable[[str, str], float], key: jax.Array,
               aux: Any = None) -> dynamic.Round:
  """Rolls out `group_size` samples of each problem and scores them: every process
  decodes and scores only its own rows; the rewards come back whole on every process."""
  prompts = [p for p in encode_prompts(run.prompter, problems, suffix) for _ in range(group_size)]
  ids, mask = pad_prompts(prompts, bucket_length(max(map(len, prompts)), PROMPT_BUCKETS),
                          ctx.pad_id)
  traj = rollout(ctx, params, *parallel.feed((ids, mask), run.mesh), key, aux)
  mine = parallel.local_rows({"ids": traj.ids, "span": traj.span}, run.mesh)
  answers = [p.answer for p in problems for _ in range(group_size)]
  rows = parallel.batch_rows(run.mesh, len(prompts))
  texts = decode(run.tokenizer, traj.replace(**mine), ctx)
  local = np.asarray([reward_fn(t, answers[i]) for t, i in zip(texts, rows)], np.float32)
  return dynamic.Round(traj, parallel.gather_rows(local, run.mesh, len(prompts)))


def rule_metrics(ctx: RuleContext, params, traj, aux) -> dict:
  """The rule's own training metrics (e.g. hybrid_ratio) and those of a chosen
  objective (e.g. Latent RL's value_mean), if they define any."""
  out = {}
  for fn in (getattr(RULES.get(ctx.rule), "metrics", None),
             objective_of(ctx).metrics if ctx.objective else None):
    if fn is not None:
      out.update({f"train/{k}": float(v) for k, v in fn(ctx, params, traj, aux).items()})
  return out


# The advantages as one program per batch shape and spec (op by op, every small op would
# compile on its own in every run).
_advantages = jax.jit(adv_lib.compute_advantages, static_argnums=0)


@dataclass(frozen=True)
class Learner:
  """What every policy update of the RL phase reads and none changes: the run, the
  rollout/learner context, the jitted update (`lrjax.rl.learner.make_update`), the
  advantage spec, the frozen reference (None when rl.beta = 0) and the rule's aux."""
  run: Any
  ctx: RuleContext
  update: Callable
  adv_spec: adv_lib.AdvantageSpec
  ref_params: dict | None = None
  aux: Any = None


def learn(setup: Learner, state: dict, batch: dynamic.Filled, step: int, t0: float,
          poison: bool = False) -> tuple[dict, dict]:
  """The policy updates of one rollout batch: (state, the step's metrics line).
  `t0`: when the step began (for tokens/s); `poison`: inject a NaN (tests).
  line["train/update_skipped"] is 1 when a non-finite loss or gradient skipped it."""
  run, ctx, aux = setup.run, setup.ctx, setup.aux
  rl, g = run.config.rl, run.config.rl.group_size
  traj, r = batch.traj, batch.rewards
  rewards = parallel.feed(np.asarray(r, np.float32), run.mesh)
  masks = learner.loss_masks(ctx, traj)
  old = learner.behaviour_logp(ctx, state["params"], traj, aux, masks)
  adv = _advantages(setup.adv_spec, rewards, traj, traj.logp if old is None else old,
                    masks.ratio, learner.loss_mask(masks))
  if rl.dynamic_sampling_tries:
    adv = dynamic.zero_dropped(adv, batch.keep, g)
  extra = rule_metrics(ctx, state["params"], traj, aux)
  rows = learner.minibatch_rows(r.shape[0], g, rl.updates_per_batch, run.config.seed, step)
  state["params"], state["opt_state"], m = learner.learn_batch(
      setup.update, state["params"], state["opt_state"], setup.ref_params, traj, adv, aux, old,
      rows, rewards, jax.numpy.asarray(bool(poison)))
  m, lengths, latent = parallel.fetch((m, traj.lengths, traj.latent_mask))
  line = {"train/reward": float(r.mean()),
          "train/correct": float((np.asarray(r) > objective_of(ctx).correct_above).mean()),
          "train/kl": float(m["kl_mean"]),
          "train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
          "train/clip_frac": float(m["clip_frac"]),
          "train/response_tokens": float(lengths.mean()),
          "train/latent_steps": float(latent.sum(-1).mean()),
          "train/tokens_per_sec": float(lengths.sum()) / max(time.time() - t0, 1e-9),
          "train/update_skipped": float(not bool(m["ok"])), **extra}
  if rl.mask_truncated:
    line["train/truncated"] = float(parallel.fetch(traj.truncated).mean())
  if rl.first_token_selection:
    line["train/first_token_groups"] = first_token_groups(
        *parallel.fetch((adv, learner.loss_mask(masks))), g)
  if rl.dynamic_sampling_tries:
    line.update({"train/dynamic_tries": float(batch.tries),
                 "train/groups_kept": float(batch.keep.sum())})
  line.update({f"train/{k}": float(v) for k, v in m.items() if k.startswith("aux_")})
  return state, line


def first_token_groups(adv, loss_mask, group_size: int) -> float:
  """Share of groups where first-token selection zeroed a positive row's first-position
  advantage. adv [B, T] (the row's A everywhere but at its first loss position)."""
  adv, m = np.asarray(adv), np.asarray(loss_mask).astype(bool)  # B T
  first = adv[np.arange(adv.shape[0]), m.argmax(-1)]  # B
  positive = np.where(m, adv, -np.inf).max(-1) > 0  # B, A > 0 somewhere on the row
  zeroed = positive & (first == 0)  # B
  return float(zeroed.reshape(-1, group_size).any(-1).mean())
