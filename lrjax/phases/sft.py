"""The SFT phase: CoT, No-CoT or the Coconut curriculum, resumable, evaluated.

Each step draws `sft.batch_size` of the `data.sft_size` worked solutions
(order fixed by `seed` and the step, so the data position is the step), builds
the sequences of the current curriculum stage, and applies one AdamW update.

`sft.start_from=<workdir>` continues another run's finished SFT phase (its
checkpoint at its last step: parameters, optimizer state, data position)
instead of starting at step 0; the continued-SFT control
(`configs/sft_control.py`) uses it to extend a warm-up without retraining it. Coconut resets the optimizer
at every stage switch. Evaluations use the `token` rule (CoT, No-CoT) or the
`hidden` rule with the stage's latent count after a `<bot>` (Coconut).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from lrjax import config_utils, optim, parallel
from lrjax.checkpoint import Checkpointer, abstract_state
from lrjax.config_utils import ConfigError
from lrjax.latent import prompt_suffix
from lrjax.metrics import say
from lrjax.data.order import data_indices
from lrjax.model import load_hf
from lrjax.phases import held_out, resume, workdir
from lrjax.phases.train_loop import Cadence, StepOut, TrainLoop
from lrjax.sft import sequences, span as span_lib, step as step_lib


def _latent_ids(run):
  return sequences.LatentIds(run.special["bot_id"], run.special["latent_id"], run.special["eot_id"])


class _Curriculum:
  """Stage bookkeeping of a method (a single stage 0 for CoT / No-CoT)."""

  def __init__(self, config):
    s = config.sft
    self.coconut = sequences.SFT_METHODS.get(s.method).latent
    self.c = s.latents_per_step
    # max_latents > 0: LatR's schedule, min(start + stage*c, max) latents per row
    self.start_latents, self.max_latents = s.start_latents, s.max_latents
    self.num_stages = s.num_stages if self.coconut else 0
    self.stage_steps = list(s.stage_steps)
    # stages 0 .. num_stages-1 replace k steps; stage num_stages is all-latent
    self.max_latent_stage = max(self.num_stages - 1, 0)

  def stage(self, step: int) -> int:
    if not self.coconut:
      return 0
    return step_lib.curriculum_stage(step, self.stage_steps, self.num_stages)

  def switched(self, step: int) -> bool:
    return self.coconut and step_lib.stage_switched(step, self.stage_steps, self.num_stages)

  def num_latent(self, stage: int) -> int:
    if not self.coconut:
      return 0
    return sequences.nominal_latents(stage, self.c, self.max_latent_stage, self.start_latents,
                                     self.max_latents)

  def batch_kwargs(self, run) -> dict:
    """`sequences.build_batch`'s curriculum and label arguments for this config."""
    if not self.coconut:
      return {}
    return dict(c=self.c, latent_ids=_latent_ids(run), max_latent_stage=self.max_latent_stage,
                start_latents=self.start_latents, max_latents=self.max_latents,
                label_markers=bool(run.config.sft.label_markers))


def _span_scale(s) -> float:
  """r_max of the latent span's noise (`lrjax.sft.span`), 0 without a span."""
  return float(s.get("span_scale", 0.0)) if int(s.get("latent_span", 0)) > 0 else 0.0


def _span_kwargs(run, step: int) -> dict:
  """`build_batch`'s span arguments at a step: a share sft.span_prob of the rows."""
  s = run.config.sft
  if not int(s.get("latent_span", 0)):
    return {}
  if sequences.SFT_METHODS.get(s.method).latent:
    raise ConfigError(f"config.sft.latent_span={s.latent_span} needs a method without latents "
                      f"(cot, nocot), not {s.method!r}")
  rows = span_lib.span_rows(run.config.seed, step, s.batch_size, s.span_prob)
  hint = float(s.get("span_hint", 0.0))
  hints = span_lib.span_rows(run.config.seed + 1, step, s.batch_size, hint) if hint else None
  return dict(span=int(s.latent_span), latent_ids=_latent_ids(run), span_rows=rows,
              span_hints=hints)


def evaluate_sft(run, params, step: int, cur: _Curriculum, stage: int) -> dict:
  """Greedy metrics at every evaluation; sampled pass@k at the end of SFT, or at
  every evaluation with `sft.sample_every_eval` (the costly part:
  eval.num_samples rollouts per problem)."""
  e = run.config.eval
  rule, n = sequences.SFT_METHODS.get(run.config.sft.method).eval_rule, cur.num_latent(stage)
  ctx = run.eval_context(rule, num_latent=n, temperature=e.temperature)
  suffix = prompt_suffix(ctx)
  sampled = step == run.config.sft.steps or run.config.sft.sample_every_eval
  return held_out.evaluate_at(run, "sft", step, {"model": params, "rule": {}, "heads": {}}, ctx,
                              suffix, sampled=sampled)


# Fields a continued run may change; every other field of the config's sft,
# data, model and tokenizer sections (and seed, init) must equal the start_from
# run's, so the continuation is the same training, only longer.
_CONTINUATION_FIELDS = ("sft.steps", "sft.decay_steps", "sft.eval_every", "sft.log_every",
                        "sft.start_from", "sft.sample_every_eval")
_TRAJECTORY_FIELDS = ("seed", "init", "model", "tokenizer", "data", "sft")


def _finished_steps(path: str) -> int:
  """The SFT step count of the run stored in workdir `path` (0 when it has none)."""
  stored = config_utils.load_config(path)
  return int(stored["sft"]["steps"]) if stored else 0


def continue_from(run, path: str, state: dict) -> tuple[dict, int]:
  """(state, step): the finished SFT phase of workdir `path` at its last step.

  Refuses (ConfigError naming the field) a run whose warm-up differs from this
  config in anything but the continuation fields, a tokenizer that differs,
  or a missing checkpoint; copies the warm-up's SFT metric lines, so this
  run's metrics.jsonl reads as one run from step 0.
  """
  stored = config_utils.load_config(path)
  if stored is None:
    raise ConfigError(f"config.sft.start_from={path!r}: no config.json there (not a workdir)")
  keep = lambda flat: {k: v for k, v in flat.items()
                       if k.split(".")[0] in _TRAJECTORY_FIELDS or k in _TRAJECTORY_FIELDS}
  ours = keep(config_utils.flatten(config_utils.to_dict(run.config)))
  theirs = keep(config_utils.flatten(stored))
  diffs = config_utils.config_mismatch(theirs, ours, ignore=_CONTINUATION_FIELDS)
  if diffs:
    raise ConfigError(f"config.sft.start_from={path!r}: its SFT phase was trained with other "
                      "settings: " + "; ".join(diffs))
  warm_steps = int(stored["sft"]["steps"])
  horizon = lambda sft: sft.get("decay_steps") or sft["steps"]  # the schedule's decay horizon
  if run.config.sft.schedule != "constant" and horizon(stored["sft"]) != horizon(run.config.sft):
    raise ConfigError(f"config.sft.decay_steps={run.config.sft.decay_steps}: the schedule of "
                      f"{path} decays over {horizon(stored['sft'])} steps; set "
                      f"--config.sft.decay_steps={horizon(stored['sft'])} to continue it")
  if warm_steps >= run.config.sft.steps:
    raise ConfigError(f"config.sft.steps={run.config.sft.steps} must exceed the {warm_steps} "
                      f"steps of the SFT phase in {path}")
  tok_dir = os.path.join(path, "tokenizer")
  if os.path.exists(tok_dir):
    from lrjax.data import tokenizer as tok_lib
    if tok_lib.load_tokenizer(tok_dir).get_vocab() != run.tokenizer.get_vocab():
      raise ConfigError(f"config.sft.start_from={path!r}: its tokenizer ({tok_dir}) differs "
                        "from this run's")
  ckpt_dir = os.path.join(path, "sft", "ckpt")
  src = Checkpointer(ckpt_dir, max_to_keep=run.config.checkpoint.max_to_keep)
  try:
    if warm_steps not in src.all_steps():
      raise ConfigError(f"config.sft.start_from={path!r}: no checkpoint at step {warm_steps} "
                        f"(the end of its SFT phase) in {ckpt_dir}")
    state, _ = src.restore(abstract_state(state), warm_steps)
  finally:
    src.close()
  from lrjax import metrics as metrics_lib
  run.metrics.truncate("sft", -1)  # a restart before this run's first checkpoint copies anew
  for rec in metrics_lib.read_metrics(path):
    if rec.get("phase") == "sft" and rec.get("step", 0) <= warm_steps:
      run.metrics.write("sft", rec["step"], {k: v for k, v in rec.items()
                                             if k not in ("phase", "step")})
  say(f"[lrjax] continuing the SFT phase of {path} from its step {warm_steps}")
  return state, warm_steps


def run_sft(run) -> None:
  """Trains (or reuses, when `<workdir>/sft/DONE` exists) the SFT model into run.params."""
  config, s = run.config, run.config.sft
  pdir = workdir.phase_dir(run, "sft")
  if workdir.is_done(run, "sft") and not resume.continue_finished(
      "SFT", pdir, resume.finished_steps(pdir, s.steps), s.steps, "sft.steps"):
    export_dir = os.path.join(pdir, "export")
    _, run.params = load_hf(export_dir, dtype=config.model.dtype,
                            param_dtype=config.model.param_dtype)
    run.model_num_latent = workdir.load_model_meta(export_dir).get("num_latent")
    say(f"[lrjax] reusing the finished SFT model in {pdir}")
    return
  cur = _Curriculum(config)
  # the decay horizon is its own field, so a continuation (more steps) keeps the schedule
  optimizer = optim.make_optimizer(s.lr, s.weight_decay, s.warmup_steps, s.decay_steps or s.steps,
                                   s.schedule, s.clip_norm, field="sft.schedule",
                                   end_lr_frac=s.end_lr_frac)
  params = run.place(run.params)
  # placed as a whole: a restored optimizer state then lands on the mesh too
  state = parallel.place_state({"params": params}, run.mesh, optimizer, params)
  ckpt = workdir.checkpointer(run, "sft")
  try:  # closed on every exit: an error leaves no save in flight nor Orbax thread behind
    state = _resume_and_train(run, s, cur, optimizer, state, ckpt)
  finally:
    ckpt.close()
  run.params = state["params"]
  run.model_num_latent = cur.num_latent(cur.stage(s.steps - 1))
  workdir.export(run, "sft", run.params, num_latent=run.model_num_latent)
  workdir.mark_done(run, "sft", {"steps": s.steps, "method": s.method})


def _resume_and_train(run, s, cur, optimizer, state, ckpt) -> dict:
  """Restores the newest checkpoint and trains to s.steps (the caller closes `ckpt`)."""
  state, start, _ = workdir.try_resume(run, "sft", ckpt, state)
  # a continuation evaluates every eval_every steps counted from where it starts
  eval_base = _finished_steps(s.start_from) if s.start_from else 0
  if start == 0 and s.start_from:  # its final evaluation is copied: same params, key and step
    state, start = continue_from(run, s.start_from, state)
  elif start == 0:
    evaluate_sft(run, state["params"], 0, cur, 0)
  train_step = step_lib.make_train_step(run.model_cfg, optimizer, s.method,
                                        latent_grad=bool(s.latent_grad), mesh=run.mesh,
                                        span_scale=_span_scale(s),
                                        span_tokens=float(s.get("span_hint", 0.0)) > 0)
  cadence = Cadence(s.steps, s.log_every, s.eval_every, run.config.checkpoint.every, eval_base)
  return _SFTLoop(run, ckpt, cadence, state, cur, optimizer, train_step).train(start)


class _SFTLoop(TrainLoop):
  """SFT steps: a batch of the current curriculum stage, one AdamW update (a fresh
  optimizer at each Coconut stage switch)."""

  def __init__(self, run, ckpt, cadence: Cadence, state: dict, cur: _Curriculum, optimizer,
               train_step):
    super().__init__(run, "sft", ckpt, cadence, state)
    self.cur, self.optimizer, self.train_step = cur, optimizer, train_step
    self.stage, self.tokens, self.t0 = 0, 0, time.time()

  def step(self, step: int) -> StepOut:
    run, s, state, cur = self.run, self.run.config.sft, self.state, self.cur
    self.stage = cur.stage(step)
    if cur.switched(step):  # Coconut: a fresh optimizer per stage
      state["opt_state"] = step_lib.fresh_optimizer_state(self.optimizer, state["params"],
                                                          state["opt_state"])
    idx = data_indices(run.config.seed, len(run.sft_train), step, s.batch_size)
    batch = sequences.build_batch([run.sft_train[i] for i in idx], run.tokenizer, s.method,
                                  stage=self.stage, max_len=s.max_len, pad_to_multiple=16,
                                  prompter=run.prompter,
                                  **cur.batch_kwargs(run), **_span_kwargs(run, step))
    self.tokens += int(np.asarray(batch.mask).sum())
    batch = parallel.feed(batch, run.mesh)  # each process feeds its own rows
    poison = jax.numpy.asarray(step + 1 == run.config.train.inject_nan_step)
    key = (dict(key=jax.random.fold_in(jax.random.PRNGKey(run.config.seed + 7717), step))
           if _span_scale(s) else {})
    state["params"], state["opt_state"], m = self.train_step(state["params"], state["opt_state"],
                                                             batch, poison, **key)
    return StepOut(bool(parallel.fetch(m["ok"])), m)

  def line(self, done: int, out: StepOut, skipped: int) -> dict:
    m = parallel.fetch(out.metrics)
    dt = max(time.time() - self.t0, 1e-9)
    line = {"train/loss": float(m["loss"]), "train/accuracy": float(m["accuracy"]),
            "train/grad_norm": float(m["grad_norm"]), "train/tokens_per_sec": self.tokens / dt,
            "train/nonfinite_skipped": float(skipped), "stage": self.stage}
    self.tokens, self.t0 = 0, time.time()
    return line

  def shown(self, out: StepOut, line: dict | None) -> dict | None:
    return None if line is None else {"loss": line["train/loss"], "stage": line["stage"]}

  def evaluate(self, done: int) -> None:
    evaluate_sft(self.run, self.state["params"], done, self.cur, self.cur.stage(done - 1))

  def meta(self, done: int) -> dict:
    return {"phase": "sft", "step": done, "stage": self.stage,
            "num_latent": self.cur.num_latent(self.stage)}
