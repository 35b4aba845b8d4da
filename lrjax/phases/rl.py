"""The RL phase: rollout -> rewards -> advantages -> policy updates (`lrjax.rl.learner`).

Starts from `run.params` (the SFT model of this workdir, or `config.init`),
evaluates at RL step 0 before any update, then every `rl.eval_every` steps
and at the end, and prints a before/after summary. A step rolls out
`rl.num_prompts` prompts × `rl.group_size` samples (more rounds with dynamic
sampling, `lrjax.rl.dynamic`), fixes the old ratio terms, computes the
advantages (`lrjax.rl.advantages.compute_advantages`) and makes
`rl.updates_per_batch` optimizer updates on shuffled mini-batches of whole
groups. The RL checkpoint's meta holds the data cursor (prompts drawn so far)
and the number of rollout rounds, so a resumed run draws the same prompts.

Metrics (phase "rl"): train/reward, train/kl, train/loss, train/grad_norm (of
the trainable parameters' gradients, before clipping; `rl.param_groups` with lr
None freezes a group; means over the mini-batches), train/clip_frac,
train/tokens_per_sec, train/response_tokens, train/latent_steps, the rule's own
(hybrid: train/hybrid_ratio), with rl.mask_truncated train/truncated (share of
rows that hit rl.max_new), with rl.first_token_selection train/first_token_groups
(share of groups where it zeroed a positive row's first position), with dynamic
sampling train/dynamic_tries (rounds
this step) and train/groups_kept, and with auxiliary losses train/aux_<name>.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from lrjax import metrics as metrics_lib, parallel
from lrjax import rewards as rewards_lib
from lrjax.data.order import data_window
from lrjax.config_utils import ConfigError
from lrjax.latent import RULES, RuleContext, init_rule_params, prompt_suffix, rule_aux, rule_of
from lrjax.optim import ParamGroups
from lrjax.phases import held_out, workdir
from lrjax.rl import advantages as adv_lib, dynamic, learner
from lrjax.rl.learner import LossSpec, make_rl_optimizer, make_update
from lrjax.rollout import (PROMPT_BUCKETS, Sampling, bucket_length, decode, encode_prompts,
                           pad_prompts, rollout)


def train_context(run) -> RuleContext:
  c = run.config
  base = run.rule_context(c.rule.name, c.rl.max_new, num_latent=run.num_latent(),
                          temperature=c.rl.temperature)
  return base.replace(sampling=Sampling(temperature=c.rl.temperature, top_k=c.rl.top_k,
                                        top_p=c.rl.top_p))


def eval_budget(max_new: int, ctx: RuleContext) -> int:
  """Response positions of an evaluation: the answer budget plus what the rule
  spends before the answer (`hidden`: its latents and `<eot>`)."""
  return max_new + rule_of(ctx).extra_positions(ctx.num_latent)


def rule_metrics(ctx: RuleContext, params, traj, aux) -> dict:
  """The rule's own training metrics (e.g. hybrid_ratio), if it defines any."""
  fn = getattr(RULES.get(ctx.rule), "metrics", None)
  return {f"train/{k}": float(v) for k, v in (fn(ctx, params, traj, aux) if fn else {}).items()}


def check_param_groups(run) -> None:
  """Every parameter of the RL tree matches an `rl.param_groups` pattern (else a
  ConfigError naming it); run before any phase, on the parameters' shapes only."""
  ctx = train_context(run)
  rule = jax.eval_shape(lambda: init_rule_params(ctx, jax.random.key(0)))
  ParamGroups(tuple(run.config.rl.param_groups)).assign(
      {"model": run.params, "rule": rule, "heads": {}})


def run_rl(run) -> None:
  config, rl = run.config, run.config.rl
  ctx = train_context(run)
  eval_ctx = run.rule_context(ctx.rule, eval_budget(config.eval.max_new, ctx),
                              num_latent=ctx.num_latent, temperature=rl.temperature)
  suffix = prompt_suffix(ctx)
  aux = rule_aux(ctx.rule, run.tokenizer, ctx.rule_cfg)
  reward_fn = rewards_lib.REWARDS.get(rl.reward or run.task.reward)
  key = jax.random.key(config.seed)
  params = {"model": run.params, "rule": init_rule_params(ctx, jax.random.fold_in(key, 1)),
            "heads": {}}
  params = run.place(params)
  # the frozen reference: a copy of the starting tree (the policy's buffers are donated)
  ref_params = run.place(jax.tree.map(jax.numpy.copy, params)) if rl.beta > 0 else None
  optimizer = make_rl_optimizer(rl, rl.steps)
  spec = LossSpec.from_config(rl)
  adv_spec = adv_lib.AdvantageSpec.from_config(rl)
  update = make_update(ctx, spec, optimizer)
  # placed as a whole: a restored optimizer state then lands on the mesh too
  state = run.place({"params": params, "opt_state": optimizer.init(params)})
  ckpt = workdir.checkpointer(run, "rl")
  state, start, meta = workdir.try_resume(run, "rl", ckpt, state)
  if meta.get("num_latent", ctx.num_latent) != ctx.num_latent:
    raise ConfigError(f"the RL checkpoint in {workdir.phase_dir(run, 'rl')} was trained with "
                      f"{meta['num_latent']} latent steps, this run would use {ctx.num_latent} "
                      "(config.rule.num_latent)")
  if start == 0:
    held_out.evaluate_at(run, "rl", 0, state["params"], eval_ctx, suffix)
  cursor, rounds = dynamic.resume_position(meta, start, rl.num_prompts)  # prompts, rollouts
  progress = metrics_lib.Progress("rl")
  g = rl.group_size
  if jax.process_count() > 1 and rl.dynamic_sampling_tries:
    raise ValueError("rl.dynamic_sampling_tries > 0 is single-process only for now")
  for step in range(start, rl.steps):
    t0 = time.time()
    step_key = jax.random.fold_in(key, 10_000 + step)

    def draw(at: int, attempt: int) -> dynamic.Round:
      idx = data_window(config.seed + 1, len(run.rl_train), at, rl.num_prompts)
      problems = [run.rl_train[i] for i in idx]  # question + answer only
      prompts = [p for p in encode_prompts(run.tokenizer, problems, suffix) for _ in range(g)]
      ids, mask = pad_prompts(prompts, bucket_length(max(map(len, prompts)), PROMPT_BUCKETS),
                              ctx.pad_id)
      k = step_key if attempt == 0 else jax.random.fold_in(step_key, attempt)
      # every process feeds, decodes and scores only its own rows of the batch
      traj = rollout(ctx, state["params"], *parallel.feed((ids, mask), run.mesh), k, aux)
      rows = parallel.batch_rows(run.mesh, len(prompts))
      texts = decode(run.tokenizer, traj.replace(
          **parallel.local_rows({"ids": traj.ids, "span": traj.span}, run.mesh)), ctx)
      answers = [p.answer for p in problems for _ in range(g)][rows]
      local = np.asarray([reward_fn(t, a) for t, a in zip(texts, answers)], np.float32)
      return dynamic.Round(traj, parallel.gather_rows(local, run.mesh, len(prompts)))

    batch = dynamic.fill_batch(draw, cursor, rl.num_prompts, g, rl.dynamic_sampling_tries,
                               ctx.pad_id)
    cursor, rounds = batch.cursor, rounds + batch.tries
    traj, r = batch.traj, batch.rewards
    old = learner.behaviour_logp(ctx, state["params"], traj, aux)
    masks = learner.loss_masks(ctx, traj)
    adv = adv_lib.compute_advantages(
        adv_spec, jax.numpy.asarray(r), traj, traj.logp if old is None else old, masks.ratio,
        learner.loss_mask(masks))
    if rl.dynamic_sampling_tries:
      adv = dynamic.zero_dropped(adv, batch.keep, g)
    extra = rule_metrics(ctx, state["params"], traj, aux)
    rows = learner.minibatch_rows(r.shape[0], g, rl.updates_per_batch, config.seed, step)
    state["params"], state["opt_state"], m = learner.learn_batch(
        update, state["params"], state["opt_state"], ref_params, traj, adv, aux, old, rows,
        jax.numpy.asarray(r))
    m = parallel.fetch(m)
    lengths = parallel.fetch(traj.lengths)
    done = step + 1
    line = {"train/reward": float(r.mean()), "train/kl": float(m["kl_mean"]),
            "train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
            "train/clip_frac": float(m["clip_frac"]),
            "train/response_tokens": float(lengths.mean()),
            "train/latent_steps": float(parallel.fetch(traj.latent_mask).sum(-1).mean()),
            "train/tokens_per_sec": float(lengths.sum()) / max(time.time() - t0, 1e-9), **extra}
    if rl.mask_truncated:
      line["train/truncated"] = float(np.asarray(traj.truncated).mean())
    if rl.first_token_selection:
      line["train/first_token_groups"] = first_token_groups(adv, learner.loss_mask(masks), g)
    if rl.dynamic_sampling_tries:
      line.update({"train/dynamic_tries": float(batch.tries),
                   "train/groups_kept": float(batch.keep.sum())})
    line.update({f"train/{k}": float(v) for k, v in m.items() if k.startswith("aux_")})
    if done % rl.log_every == 0 or done == rl.steps or step == start:
      run.metrics.write("rl", done, line)
    progress.update(done, rl.steps, reward=line["train/reward"], kl=line["train/kl"])
    if done % rl.eval_every == 0 or done == rl.steps:
      held_out.evaluate_at(run, "rl", done, state["params"], eval_ctx, suffix)
    if done % config.checkpoint.every == 0 or done == rl.steps:
      ckpt.save(done, state, {**dynamic.checkpoint_meta(done, cursor, rounds),
                              "num_latent": ctx.num_latent})
  progress.close()
  ckpt.wait()
  run.params, run.rule_params = state["params"]["model"], state["params"]["rule"]
  run.model_num_latent = ctx.num_latent
  workdir.export(run, "rl", run.params, run.rule_params, num_latent=ctx.num_latent)
  workdir.mark_done(run, "rl", summary(run))
  print(format_summary(summary(run)), flush=True)


def first_token_groups(adv, loss_mask, group_size: int) -> float:
  """Share of groups where first-token selection zeroed a positive row's first-position
  advantage. adv [B, T] (the row's A everywhere but at its first loss position)."""
  adv, m = np.asarray(adv), np.asarray(loss_mask).astype(bool)  # B T
  first = adv[np.arange(adv.shape[0]), m.argmax(-1)]  # B
  positive = np.where(m, adv, -np.inf).max(-1) > 0  # B, A > 0 somewhere on the row
  zeroed = positive & (first == 0)  # B
  return float(zeroed.reshape(-1, group_size).any(-1).mean())


def summary(run) -> dict:
  """Before/after accuracy: SFT's final eval, RL step 0 and RL's last eval."""
  recs = metrics_lib.read_metrics(run.workdir)
  evals = [r for r in recs if "eval/accuracy" in r]
  def pick(phase, which):
    xs = [r for r in evals if r["phase"] == phase]
    return (xs[0] if which == "first" else xs[-1]) if xs else {}
  out = {}
  for name, rec in (("sft_final", pick("sft", "last")), ("rl_step0", pick("rl", "first")),
                    ("rl_final", pick("rl", "last"))):
    if rec:
      out[name] = {k: rec[k] for k in ("step", "eval/accuracy", "eval/pass@1", "eval/format_rate",
                                       "eval/response_tokens") if k in rec}
  return out


def format_summary(s: dict) -> str:
  rows = ["[lrjax] before/after RL (held-out):"]
  for name, rec in s.items():
    vals = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in rec.items() if k != "step")
    rows.append(f"  {name:<10} step {rec.get('step', '?'):>4}  {vals}")
  return "\n".join(rows)
