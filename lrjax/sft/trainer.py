"""The SFT phase: CoT, No-CoT or the Coconut curriculum, resumable, evaluated.

Each step draws `sft.batch_size` problems (order fixed by `seed` and the
step, so the data position is the step), builds the sequences of the current
curriculum stage, and applies one AdamW update. Coconut resets the optimizer
at every stage switch. Evaluations use the `token` rule (CoT, No-CoT) or the
`hidden` rule with the stage's latent count after a `<bot>` (Coconut).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from lrjax import loop, optim
from lrjax.metrics import Progress
from lrjax.model import load_hf
from lrjax.sft import sequences, step as step_lib


def _latent_ids(run):
  return sequences.LatentIds(run.special["bot_id"], run.special["latent_id"], run.special["eot_id"])


class _Curriculum:
  """Stage bookkeeping of a method (a single stage 0 for CoT / No-CoT)."""

  def __init__(self, config):
    s = config.sft
    self.coconut = s.method == "coconut"
    self.c = s.latents_per_step
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
    return sequences.nominal_latents(stage, self.c, self.max_latent_stage) if self.coconut else 0


def evaluate_sft(run, params, step: int, cur: _Curriculum, stage: int) -> dict:
  """Greedy metrics at every evaluation; sampled pass@k only at the end of SFT
  (the costly part: eval.num_samples rollouts per problem)."""
  e = run.config.eval
  if cur.coconut:
    ctx = loop.eval_context(run, "hidden", e.max_new + cur.num_latent(stage) + 1,
                            num_latent=cur.num_latent(stage), temperature=e.temperature)
    suffix = (run.special["bot_id"],)
  else:
    ctx = loop.eval_context(run, "token", e.max_new, temperature=e.temperature)
    suffix = ()
  final = step == run.config.sft.steps
  return loop.run_eval(run, "sft", step, {"model": params, "rule": {}, "heads": {}}, ctx, suffix,
                       sampled=final)


def run_sft(run) -> None:
  """Trains (or reuses, when `<workdir>/sft/DONE` exists) the SFT model into run.params."""
  config, s = run.config, run.config.sft
  if loop.is_done(run, "sft"):
    _, run.params = load_hf(os.path.join(loop.phase_dir(run, "sft"), "export"),
                            dtype=config.model.dtype)
    print(f"[lrjax] reusing the finished SFT model in {loop.phase_dir(run, 'sft')}", flush=True)
    return
  cur = _Curriculum(config)
  optimizer = optim.make_optimizer(s.lr, s.weight_decay, s.warmup_steps, s.steps, s.schedule,
                                   s.clip_norm, field="sft.schedule")
  params = loop.place(run, run.params)
  state = {"params": params, "opt_state": optimizer.init(params)}
  ckpt = loop.checkpointer(run, "sft")
  state, start, _ = loop.try_resume(run, "sft", ckpt, state)
  train_step = step_lib.make_train_step(run.model_cfg, optimizer, s.method)
  if start == 0:
    evaluate_sft(run, state["params"], 0, cur, 0)
  progress = Progress("sft")
  tokens, t0 = 0, time.time()
  for step in range(start, s.steps):
    stage = cur.stage(step)
    if cur.switched(step):  # Coconut: a fresh optimizer per stage
      state["opt_state"] = optimizer.init(state["params"])
    idx = loop.data_indices(config.seed, len(run.task.train), step, s.batch_size)
    batch = sequences.build_batch(
        [run.task.train[i] for i in idx], run.tokenizer, s.method, stage=stage, c=cur.c,
        max_len=s.max_len, latent_ids=_latent_ids(run) if cur.coconut else None,
        max_latent_stage=cur.max_latent_stage if cur.coconut else None, pad_to_multiple=16)
    state["params"], state["opt_state"], m = train_step(state["params"], state["opt_state"], batch)
    tokens += int(np.asarray(batch.mask).sum())
    done = step + 1
    if done % s.log_every == 0 or done == s.steps:
      m = jax.device_get(m)
      dt = max(time.time() - t0, 1e-9)
      line = {"train/loss": float(m["loss"]), "train/accuracy": float(m["accuracy"]),
              "train/grad_norm": float(m["grad_norm"]), "train/tokens_per_sec": tokens / dt,
              "stage": stage}
      run.metrics.write("sft", done, line)
      progress.update(done, s.steps, loss=line["train/loss"], stage=stage)
      tokens, t0 = 0, time.time()
    if done % s.eval_every == 0 or done == s.steps:
      evaluate_sft(run, state["params"], done, cur, cur.stage(done - 1))
    if done % config.checkpoint.every == 0 or done == s.steps:
      ckpt.save(done, state, {"phase": "sft", "step": done, "stage": stage})
  progress.close()
  ckpt.wait()
  run.params = state["params"]
  run.export("sft", run.params)
  loop.mark_done(run, "sft", {"steps": s.steps, "method": s.method})
