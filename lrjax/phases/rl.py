"""The RL phase: rollout -> rewards -> advantages -> policy updates (`lrjax.rl.learner`).

Starts from `run.params` (the SFT model of this workdir, or `config.init`),
evaluates at RL step 0 before any update, then every `rl.eval_every` steps
and at the end, and prints a before/after summary. A step rolls out
`rl.num_prompts` prompts × `rl.group_size` samples (more rounds with dynamic
sampling, `lrjax.rl.dynamic`; argmax ones with `rl.greedy`), fixes the old
ratio terms, computes the advantages (`lrjax.rl.advantages.compute_advantages`) and makes
`rl.updates_per_batch` optimizer updates on shuffled mini-batches of whole
groups. The RL checkpoint's meta holds the data cursor (prompts drawn so far)
and the number of rollout rounds, so a resumed run draws the same prompts, and
the digests of the phase's starting tree: the frozen reference is rebuilt from
the same sources on resume and checked against them (`lrjax.phases.resume`).
A finished phase re-run with more `rl.steps` (and allow_config_mismatch)
trains on from its last checkpoint.

Metrics (phase "rl"): train/reward, train/correct (the share of rollouts with a
correct answer), train/kl, train/loss, train/grad_norm (of
the trainable parameters' gradients, before clipping; `rl.param_groups` with lr
None freezes a group; means over the mini-batches), train/clip_frac,
train/tokens_per_sec, train/response_tokens, train/latent_steps, the rule's own
(hybrid: train/hybrid_ratio), with rl.mask_truncated train/truncated (share of
rows that hit rl.max_new), with rl.first_token_selection train/first_token_groups
(share of groups where it zeroed a positive row's first position), with dynamic
sampling train/dynamic_tries (rounds
this step) and train/groups_kept, with auxiliary losses train/aux_<name>, a
chosen objective's own (Latent RL: train/value_mean, train/value_mean_start),
and with rl.log_param_change train/param_change.

params["heads"] starts as the heads earlier phases made (`run.heads`, e.g. the
`value` phase's head) that the objective reads; they are checkpointed with the
policy and exported beside it (`lrjax_heads.safetensors`).
"""
from __future__ import annotations

import time

import jax
import numpy as np

from lrjax import metrics as metrics_lib, parallel
from lrjax import rewards as rewards_lib
from lrjax.data.order import data_window
from lrjax.config_utils import ConfigError
from lrjax.latent import (HEADS, RuleContext, init_rule_params, objective_of, prompt_suffix,
                          rule_aux)
from lrjax.model import lora
from lrjax.optim import ParamGroups
from lrjax.phases import held_out, resume, rl_step, workdir
from lrjax.phases.rl_context import train_context
from lrjax.phases.train_loop import Cadence, StepOut, TrainLoop
from lrjax.rl import advantages as adv_lib, dynamic
from lrjax.rl.learner import (LossSpec, frozen_in_compute_dtype, frozen_reference,
                              make_rl_optimizer, make_update)


def check_heads(run, ctx: RuleContext) -> None:
  """The heads the objective reads exist (made by an earlier phase, e.g. `value`), unless
  the objective makes them itself (`Objective.init_heads`)."""
  obj = objective_of(ctx)
  missing = [h for h in obj.heads if h not in run.heads and obj.init_heads is None]
  if missing:
    phase = HEADS.get(missing[0]).phase if missing[0] in HEADS else ""
    hint = f" ('{phase}' with config.init, or 'sft,{phase}' before 'rl')" if phase else ""
    raise ConfigError(
        f"config.rl.objective={ctx.objective!r} reads params['heads'][{missing[0]!r}], which "
        f"no phase of this run made: put the phase that trains it before 'rl' in config.mode"
        + hint)


def check_param_groups(run) -> None:
  """Every parameter of the RL tree matches an `rl.param_groups` pattern (else a
  ConfigError naming it); run before any phase, on the parameters' shapes only."""
  ctx = train_context(run)
  rule = jax.eval_shape(lambda: init_rule_params(ctx, jax.random.key(0)))
  heads = jax.eval_shape(lambda: initial_heads(run, ctx))
  model = jax.eval_shape(lambda: lora.attach(run.model_cfg, run.params, jax.random.key(0)))
  groups = ParamGroups(tuple(run.config.rl.param_groups))
  tree = {"model": model, "rule": rule, "heads": heads}
  groups.assign(tree)
  trained = lora.trainable_base_paths(groups, tree) if lora.has_adapters(model) else []
  if trained:
    raise ConfigError(
        f"config.model.lora.rank={run.config.model.lora.rank} trains adapters only, but "
        f"config.rl.param_groups trains {trained[0]!r}: freeze the base, e.g. "
        "(('model/lora/.*', lr), ('model/.*', None), ('.*', lr))")


def initial_heads(run, ctx: RuleContext) -> dict:
  """params["heads"] at the start of RL: the heads earlier phases made (`run.heads`),
  or those the objective makes itself (`Objective.init_heads`, DLR's assistant), or for
  a check before they ran, freshly initialised ones of the same shapes."""
  made = {h: (lambda h=h: HEADS.get(h).init(run, jax.random.key(0))) for h in HEADS.names()}
  obj = objective_of(ctx)
  if obj.init_heads is not None and any(h not in run.heads for h in obj.heads):
    fresh = obj.init_heads(ctx, jax.random.fold_in(jax.random.key(run.config.seed), 2))
    made = {h: (lambda h=h: fresh[h]) for h in fresh}
  return {h: run.heads[h] if h in run.heads else made[h]() for h in obj.heads}


def run_rl(run) -> None:
  config, rl = run.config, run.config.rl
  ctx = train_context(run)
  eval_ctx = run.eval_context(ctx.rule, num_latent=ctx.num_latent, temperature=rl.temperature)
  suffix = prompt_suffix(ctx)
  aux = rule_aux(ctx.rule, run.tokenizer, ctx.rule_cfg)
  reward_fn = rewards_lib.REWARDS.get(rl.reward or run.task.reward)
  if objective_of(ctx).reward is not None:  # e.g. DLR's dual reward (evaluation keeps the task's)
    reward_fn = objective_of(ctx).reward(reward_fn, ctx)
  key = jax.random.key(config.seed)
  check_heads(run, ctx)
  model = lora.attach(ctx.model_cfg, run.params, jax.random.fold_in(key, 3))  # LoRA: B = 0
  params = {"model": model, "rule": init_rule_params(ctx, jax.random.fold_in(key, 1)),
            "heads": initial_heads(run, ctx)}
  params = frozen_in_compute_dtype(ctx.model_cfg, ParamGroups(tuple(rl.param_groups)), params)
  start_host = parallel.fetch(params)  # a collective with several processes
  start_model = start_host["model"] if rl.log_param_change else None
  start_hashes = resume.tree_hashes(start_host)  # the reference is rebuilt, not stored
  del start_host
  params = run.place(params)
  # the frozen reference: a copy of the starting tree (the policy's buffers are donated),
  # its backbone in the compute dtype; with LoRA only of "rule" and "heads": the update
  # reads the live base, adapters off
  ref_params = run.place(frozen_reference(ctx.model_cfg, params)) if rl.beta > 0 else None
  optimizer = make_rl_optimizer(rl, rl.steps)
  spec = LossSpec.from_config(rl)
  adv_spec = adv_lib.AdvantageSpec.from_config(rl)
  # with an auxiliary loss (it may couple a prompt's rows) the length buckets keep groups whole
  update = make_update(ctx, spec, optimizer, microbatch=rl.get("microbatch", 0), mesh=run.mesh,
                       bucket_width=rl.get("bucket_width", 0), bucket_rows=rl.get("bucket_rows", 0),
                       bucket_unit=rl.group_size if spec.aux_losses else 1)
  # placed as a whole: a restored optimizer state then lands on the mesh too
  state = parallel.place_state({"params": params}, run.mesh, optimizer, params)
  ckpt = workdir.checkpointer(run, "rl")
  try:  # closed on every exit: an error leaves no save in flight nor Orbax thread behind
    state, start, meta = workdir.try_resume(run, "rl", ckpt, state)
    if meta.get("num_latent", ctx.num_latent) != ctx.num_latent:
      raise ConfigError(f"the RL checkpoint in {workdir.phase_dir(run, 'rl')} was trained with "
                        f"{meta['num_latent']} latent steps, this run would use {ctx.num_latent} "
                        "(config.rule.num_latent)")
    pdir = workdir.phase_dir(run, "rl")
    resume.check_start(meta.get("start_hashes"), start_hashes, pdir)
    if workdir.is_done(run, "rl"):  # a finished phase asked for more steps trains on
      resume.continue_finished("RL", pdir, start, rl.steps, "rl.steps")  # its last checkpoint
    if start == 0:
      held_out.evaluate_at(run, "rl", 0, state["params"], eval_ctx, suffix)
    cursor, rounds = dynamic.resume_position(meta, start, rl.num_prompts)  # prompts, rollouts
    learner = rl_step.Learner(run, ctx, update, adv_spec, ref_params, aux)
    cadence = Cadence(rl.steps, rl.log_every, rl.eval_every, config.checkpoint.every)
    loop = _RLLoop(learner, ckpt, cadence, state, eval_ctx=eval_ctx, suffix=suffix,
                   reward_fn=reward_fn, key=key, cursor=cursor, rounds=rounds,
                   start_model=start_model,
                   fixed_meta={"num_latent": ctx.num_latent, "start_hashes": start_hashes})
    state = loop.train(start)
  finally:
    ckpt.close()
  run.params, run.rule_params = state["params"]["model"], state["params"]["rule"]
  run.heads = dict(state["params"]["heads"])
  run.model_num_latent = ctx.num_latent
  workdir.export(run, "rl", run.params, run.rule_params, num_latent=ctx.num_latent,
                 heads=run.heads)
  workdir.mark_done(run, "rl", summary(run))
  metrics_lib.say(format_summary(summary(run)))


class _RLLoop(TrainLoop):
  """RL steps: roll out `rl.num_prompts` prompts (more rounds with dynamic sampling),
  then `rl_step.learn`; the checkpoint's meta holds the data cursor and rollout rounds."""

  def __init__(self, learner: rl_step.Learner, ckpt, cadence: Cadence, state: dict, *,
               eval_ctx: RuleContext, suffix, reward_fn, key, cursor: int, rounds: int,
               start_model: dict | None, fixed_meta: dict):
    super().__init__(learner.run, "rl", ckpt, cadence, state)
    self.learner, self.eval_ctx, self.suffix, self.reward_fn, self.key = (
        learner, eval_ctx, suffix, reward_fn, key)
    self.cursor, self.rounds, self.start_model, self.fixed_meta = (
        cursor, rounds, start_model, fixed_meta)

  def step(self, step: int) -> StepOut:
    run, rl, ctx = self.run, self.run.config.rl, self.learner.ctx
    t0 = time.time()
    step_key = jax.random.fold_in(self.key, 10_000 + step)

    def draw(at: int, attempt: int) -> dynamic.Round:
      idx = data_window(run.config.seed + 1, len(run.rl_train), at, rl.num_prompts)
      problems = [run.rl_train[i] for i in idx]  # question + answer only
      k = step_key if attempt == 0 else jax.random.fold_in(step_key, attempt)
      return rl_step.draw_round(run, ctx, self.state["params"], problems,
                                group_size=rl.group_size, suffix=self.suffix,
                                reward_fn=self.reward_fn, key=k, aux=self.learner.aux)

    batch = dynamic.fill_batch(draw, self.cursor, rl.num_prompts, rl.group_size,
                               rl.dynamic_sampling_tries, ctx.pad_id)
    self.cursor, self.rounds = batch.cursor, self.rounds + batch.tries
    self.state, line = rl_step.learn(self.learner, self.state, batch, step, t0,
                                     poison=step + 1 == run.config.train.inject_nan_step)
    return StepOut(not line["train/update_skipped"], line)

  def logs(self, done: int) -> bool:  # the first step of every invocation too
    return self.cadence.logs(done) or done == self.start + 1

  def line(self, done: int, out: StepOut, skipped: int) -> dict:
    line = out.metrics
    line["train/nonfinite_skipped"] = float(skipped)
    if self.start_model is not None and self.cadence.logs(done):
      line["train/param_change"] = param_change(self.start_model, self.state["params"]["model"])
    return line

  def shown(self, out: StepOut, line: dict | None) -> dict:  # every step
    return {"reward": out.metrics["train/reward"], "kl": out.metrics["train/kl"]}

  def evaluate(self, done: int) -> None:
    held_out.evaluate_at(self.run, "rl", done, self.state["params"], self.eval_ctx, self.suffix)

  def meta(self, done: int) -> dict:
    return {**dynamic.checkpoint_meta(done, self.cursor, self.rounds), **self.fixed_meta}


def param_change(start: dict, now: dict) -> float:
  """||θ − θ_0|| / ||θ_0|| over every leaf (float64 on the host; a collective with
  several processes, like every `parallel.fetch`)."""
  now = parallel.fetch(now)
  diff = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
             for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(now)))
  norm = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in jax.tree.leaves(start))
  return float(np.sqrt(diff / max(norm, 1e-30)))


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
