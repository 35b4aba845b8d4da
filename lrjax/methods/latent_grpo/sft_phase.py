"""The `latent_sft` phase: Latent-SFT (arXiv 2510.15522) from the model in run.params
(the CoT warm-up), as five resumable steps, each with its own folder and DONE:

    <workdir>/latent_sft/encoder/   stage 1, encoder trained (decoder frozen)
    <workdir>/latent_sft/decoder/   stage 1, decoder trained (encoder frozen)
    <workdir>/latent_sft/union/     stage 1, both trained
    <workdir>/latent_sft/labels/    labels.npz: top-K soft labels of every training latent
    <workdir>/latent_sft/stage2/    the decoder alone on the soft labels (CE + KL)
    <workdir>/latent_sft/export/    the stage-2 decoder (HF folder) and DONE, written last

Each training step resumes from its newest checkpoint; a finished one (DONE) is
restored from its last checkpoint. A step with 0 steps is skipped. The stage-2
decoder is evaluated with the `topk_gumbel` rule, greedy (top-K mixtures of its
own distribution fed back until it shows '#'), the rollout Latent-GRPO starts
from. Metrics phases: `latent_sft/<step>`.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lrjax import optim, parallel
from lrjax.checkpoint import abstract_state
from lrjax.config_utils import ConfigError
from lrjax.data.order import data_indices
from lrjax.faults import guarded_update
from lrjax.latent import prompt_suffix
from lrjax.methods.latent_grpo.latent_sft import layout, losses
from lrjax.methods.latent_grpo.rule import NAME as LATENT_RULE
from lrjax.metrics import say
from lrjax.model import load_hf
from lrjax.phases import held_out, workdir
from lrjax.phases.train_loop import Cadence, StepOut, TrainLoop

PHASE = "latent_sft"
# stage-1 steps and the parts each trains
STAGE1 = (("encoder", ("enc",)), ("decoder", ("dec",)), ("union", ("enc", "dec")))
FROZEN = ("embed", "lm_head")  # decoder parts kept fixed unless latent_sft.train_embeddings


def check_config(config) -> None:
  """ConfigError naming the field for a bad `config.latent_sft`."""
  s = config.get("latent_sft")
  if s is None:
    raise ConfigError("config.latent_sft is missing: start from configs/latent_sft.py")
  from lrjax.config_utils import mode_phases
  phases = mode_phases(config.mode)
  if PHASE in phases and "sft" not in phases[:phases.index(PHASE)] and not config.init:
    raise ConfigError("the latent_sft phase starts from a CoT-SFT model: put 'sft' before it in "
                      "config.mode or set config.init")
  ints = ("compression_rate", "batch_size", "max_len", "eval_every", "log_every")
  for f in ints:
    if int(s[f]) < 1:
      raise ConfigError(f"config.latent_sft.{f}={s[f]} must be >= 1")
  for f in ("encoder_steps", "decoder_steps", "union_steps", "stage2_steps", "top_k"):
    if int(s[f]) < 0:
      raise ConfigError(f"config.latent_sft.{f}={s[f]} must be >= 0")
  if s.positions not in layout.POSITIONS:
    raise ConfigError(f"config.latent_sft.positions={s.positions!r} must be one of "
                      f"{', '.join(layout.POSITIONS)}")
  if int(s.stage2_steps) and int(s.encoder_steps) + int(s.union_steps) == 0:
    raise ConfigError("config.latent_sft: stage 2 reads soft labels from a trained encoder; "
                      "set encoder_steps or union_steps > 0")
  for f in ("lr", "stage2_lr", "gumbel_temperature"):
    if float(s[f]) <= 0:
      raise ConfigError(f"config.latent_sft.{f}={s[f]} must be > 0")
  for f in ("ce_weight", "kl_weight", "noise_scale", "weight_decay", "warmup_frac"):
    if float(s[f]) < 0:
      raise ConfigError(f"config.latent_sft.{f}={s[f]} must be >= 0")


def _dir(run, step: str) -> str:
  return os.path.join(workdir.phase_dir(run, PHASE), step)


def _examples(run) -> list[layout.Example]:
  return [layout.encode_problem(p, run.tokenizer) for p in run.sft_train]


def _optimizer(s, lr: float, steps: int):
  return optim.make_optimizer(lr, s.weight_decay, int(s.warmup_frac * steps), steps, s.schedule,
                              s.clip_norm, field="latent_sft.schedule", end_lr_frac=s.end_lr_frac)


def _trainable(state: dict, parts: tuple[str, ...], frozen: tuple[str, ...]) -> dict:
  out = {}
  if "enc" in parts:
    out["enc"] = state["enc"]
  if "dec" in parts:
    out["dec"] = {k: v for k, v in state["dec"].items() if k not in frozen}
  return out


def _merge(state: dict, train: dict) -> dict:
  out = dict(state)
  if "enc" in train:
    out["enc"] = train["enc"]
  if "dec" in train:
    out["dec"] = {**state["dec"], **train["dec"]}
  return out


def initial_state(run, enc: dict, dec: dict, optimizer, parts: tuple[str, ...],
                  frozen: tuple[str, ...]) -> dict:
  """{"enc", "dec", "opt_state"} placed on the run's mesh as a whole (a fresh optimizer
  state left unplaced would compile each step twice)."""
  train = _trainable({"enc": enc, "dec": dec}, parts, frozen)
  return parallel.place_state({"enc": enc, "dec": dec}, run.mesh, optimizer, train)


def _jit(step, state_layout):
  """The step jitted with its state donated and returned in `state_layout` (the state's
  pytree of shardings, `parallel.shardings_of`): the next call reuses the compiled step."""
  return jax.jit(step, donate_argnums=0, out_shardings=(state_layout, None))


def make_stage1_step(cfg, optimizer, parts: tuple[str, ...], frozen: tuple[str, ...], top_k: int,
                     state_layout):
  """jit(state, batch, poison=False) -> (state, metrics): one AdamW update of `parts` on
  stage 1's CE (skipped when not finite, see `_update`); `state_layout`: see `_jit`."""
  def step(state, batch, poison=False):
    train = _trainable(state, parts, frozen)

    def loss_fn(tr):
      merged = _merge(state, tr)
      return losses.stage1_loss(cfg, merged["enc"], merged["dec"], batch, top_k)

    return _update(state, train, loss_fn, optimizer, poison)
  return _jit(step, state_layout)


def make_stage2_step(cfg, optimizer, frozen: tuple[str, ...], s, end_id: int, state_layout):
  """jit(state, batch, key, poison=False) -> (state, metrics): one update of the decoder
  on stage 2's loss (skipped when not finite, see `_update`); `state_layout`: see `_jit`."""
  gumbel = bool(s.gumbel)

  def step(state, batch, key, poison=False):
    probs = batch.label_probs
    if gumbel:
      probs = losses.gumbel_perturb(key, probs, batch.label_ids, batch.latent_valid, end_id,
                                    float(s.noise_scale), float(s.gumbel_temperature))
    train = _trainable(state, ("dec",), frozen)

    def loss_fn(tr):
      return losses.stage2_loss(cfg, _merge(state, tr)["dec"], batch, probs,
                                float(s.ce_weight), float(s.kl_weight))

    return _update(state, train, loss_fn, optimizer, poison)
  return _jit(step, state_layout)


def _update(state: dict, train: dict, loss_fn, optimizer, poison) -> tuple[dict, dict]:
  """One optimizer step of `train` (the trainable part of state) on loss_fn(train) ->
  (loss, metrics), kept only when the loss and gradient norm are finite
  (`lrjax.faults.guarded_update`; `poison` injects a NaN); (new state, metrics with
  grad_norm and ok)."""
  (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(train)
  train, opt, grad_norm, ok = guarded_update(optimizer, g, state["opt_state"], train, loss,
                                             poison)
  new = _merge(state, train)
  new["opt_state"] = opt
  return new, {**m, "grad_norm": grad_norm, "ok": ok}


def _train(run, name: str, state: dict, steps: int, step_fn, batch_fn, evaluate=None) -> dict:
  """Runs steps of `latent_sft/<name>` with checkpoints, resume and DONE; returns the state."""
  phase = f"{PHASE}/{name}"
  ckpt = workdir.checkpointer(run, phase)
  try:
    if workdir.is_done(run, phase):
      state, _ = ckpt.restore(abstract_state(state), steps)
      say(f"[lrjax] reusing the finished {phase} step")
      return state
    state, start, _ = workdir.try_resume(run, phase, ckpt, state)
    if start == 0 and evaluate:
      evaluate(state, 0)
    s = run.config.latent_sft
    cadence = Cadence(steps, s.log_every, s.eval_every, run.config.checkpoint.every)
    state = _StageLoop(run, phase, ckpt, cadence, state, step_fn, batch_fn, evaluate).train(start)
    ckpt.wait()
    workdir.mark_done(run, phase, {"steps": steps})
    return state
  finally:
    ckpt.close()


class _StageLoop(TrainLoop):
  """One Latent-SFT step's loop: `step_fn(state, batch_fn(step), step, poison)`. A
  non-finite update is skipped and counted (`train/nonfinite_skipped`); the loop
  stops after `train.max_nonfinite` in a row."""

  def __init__(self, run, phase: str, ckpt, cadence: Cadence, state: dict, step_fn, batch_fn,
               evaluate=None):
    super().__init__(run, phase, ckpt, cadence, state)
    self.step_fn, self.batch_fn, self.evaluate_fn = step_fn, batch_fn, evaluate
    self.t0 = time.time()

  def step(self, step: int) -> StepOut:
    poison = jnp.asarray(step + 1 == self.run.config.train.inject_nan_step)
    self.state, m = self.step_fn(self.state, self.batch_fn(step), step, poison)
    m = dict(m)
    return StepOut(bool(jax.device_get(m.pop("ok"))), m)

  def line(self, done: int, out: StepOut, skipped: int) -> dict:
    m = {f"train/{k}": float(v) for k, v in jax.device_get(out.metrics).items()}
    m["train/seconds"] = time.time() - self.t0
    m["train/nonfinite_skipped"] = float(skipped)
    return m

  def shown(self, out: StepOut, line: dict | None) -> dict | None:
    return None if line is None else {"loss": line["train/loss"]}

  def evaluate(self, done: int) -> None:
    if self.evaluate_fn:
      self.evaluate_fn(self.state, done)


def _stage1(run, exs, enc: dict, dec: dict) -> tuple[dict, dict]:
  s = run.config.latent_sft
  frozen = () if s.train_embeddings else FROZEN
  for i, (name, parts) in enumerate(STAGE1):
    steps = int(s[f"{name}_steps"])
    if not steps:
      continue
    optimizer = _optimizer(s, float(s.lr), steps)
    os.makedirs(_dir(run, name), exist_ok=True)
    state = initial_state(run, enc, dec, optimizer, parts, frozen)
    fn = make_stage1_step(run.model_cfg, optimizer, parts, frozen, int(s.top_k),
                          state_layout=parallel.shardings_of(state))
    pad = run.tokenizer.pad_token_id

    def batch_fn(step, i=i):
      idx = data_indices(run.config.seed + 101 * (i + 1), len(exs), step, s.batch_size)
      return layout.stage1_batch([exs[j] for j in idx], s.compression_rate, pad, s.max_len,
                                 positions=s.positions)

    state = _train(run, name, state, steps, lambda st, b, step, poison: fn(st, b, poison),
                   batch_fn)
    enc, dec = state["enc"], state["dec"]
  return enc, dec


def _labels(run, exs, enc: dict, dec: dict) -> dict:
  """{"ids", "probs": [S, N, K], "n": [S]}: the soft labels of every training example."""
  s = run.config.latent_sft
  phase = f"{PHASE}/labels"
  path = os.path.join(_dir(run, "labels"), "labels.npz")
  if workdir.is_done(run, phase):
    with np.load(path) as f:
      return {k: f[k] for k in ("ids", "probs", "n")}
  fn = jax.jit(lambda e, d, b: losses.soft_labels(run.model_cfg, e, d, b, int(s.top_k)))
  n = np.array([layout.num_latents(e, s.compression_rate) for e in exs], np.int32)
  ids_all, probs_all = [], []
  for lo in range(0, len(exs), s.batch_size):
    rows = exs[lo:lo + s.batch_size]
    # the last batch filled up with its last example: one row count, one compile
    batch = layout.stage1_batch(rows + rows[-1:] * (s.batch_size - len(rows)),
                                s.compression_rate, run.tokenizer.pad_token_id, s.max_len)
    ids, probs = jax.device_get(fn(enc, dec, batch))
    ids_all += list(ids[:len(rows)])
    probs_all += list(probs[:len(rows)])
  width = int(n.max())
  ids = np.stack([_fit(a, width) for a in ids_all]).astype(np.int32)
  probs = np.stack([_fit(a, width) for a in probs_all]).astype(np.float32)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if jax.process_index() == 0:
    np.savez(path, ids=ids, probs=probs, n=n)
  workdir.mark_done(run, phase, {"examples": len(exs), "max_latents": width,
                                 "k": int(ids.shape[-1])})
  return {"ids": ids, "probs": probs, "n": n}


def _fit(a: np.ndarray, width: int) -> np.ndarray:
  """[N, K] rows cut or zero-padded to `width`."""
  return a[:width] if len(a) >= width else np.pad(a, ((0, width - len(a)), (0, 0)))


def evaluate_latent(run, params: dict, phase: str, step: int, sampled: bool) -> dict:
  """Held-out metrics of `params` under the greedy `topk_gumbel` rollout."""
  e = run.config.eval
  ctx = run.eval_context(LATENT_RULE, temperature=e.temperature)
  return held_out.evaluate_at(run, phase, step, {"model": params, "rule": {}, "heads": {}}, ctx,
                              prompt_suffix(ctx), sampled=sampled)


def _stage2(run, exs, dec: dict, labels: dict) -> dict:
  s = run.config.latent_sft
  steps = int(s.stage2_steps)
  if not steps:
    return dec
  frozen = () if s.train_embeddings else FROZEN
  optimizer = _optimizer(s, float(s.stage2_lr), steps)
  os.makedirs(_dir(run, "stage2"), exist_ok=True)
  state = initial_state(run, {}, dec, optimizer, ("dec",), frozen)
  fn = make_stage2_step(run.model_cfg, optimizer, frozen, s, layout.end_marker(run.tokenizer),
                        state_layout=parallel.shardings_of(state))
  base_key = jax.random.key(run.config.seed + 7331)

  def batch_fn(step):
    idx = data_indices(run.config.seed + 505, len(exs), step, s.batch_size)
    return layout.stage2_batch([exs[j] for j in idx], labels["n"][idx], labels["ids"][idx],
                               labels["probs"][idx], run.tokenizer.pad_token_id, s.max_len)

  def evaluate(state, step):
    evaluate_latent(run, state["dec"], f"{PHASE}/stage2", step, sampled=step == steps)

  state = _train(run, "stage2", state, steps,
                 lambda st, b, step, poison: fn(st, b, jax.random.fold_in(base_key, step),
                                                poison), batch_fn,
                 evaluate)
  return state["dec"]


@jax.jit
def initial_encoder(params: dict) -> dict:
  """A copy of the backbone and a compress embedding at the mean input embedding
  (HF's `resize_token_embeddings` initialises new rows at the mean)."""
  table = params["embed"]["embedding"]
  return {"model": jax.tree.map(jnp.array, params),
          "compress": jnp.mean(table.astype(jnp.float32), axis=0).astype(table.dtype)}


def run_latent_sft(run) -> None:
  """Trains (or reuses, with `<workdir>/latent_sft/DONE`) the Latent-SFT decoder into run.params."""
  check_config(run.config)
  pdir = workdir.phase_dir(run, PHASE)
  if workdir.is_done(run, PHASE):
    _, run.params = load_hf(os.path.join(pdir, "export"), dtype=run.config.model.dtype,
                            param_dtype=run.config.model.param_dtype)
    run.model_num_latent = 0
    say(f"[lrjax] reusing the finished Latent-SFT model in {pdir}")
    return
  if run.params is None:
    raise ConfigError("the latent_sft phase needs a model: run 'sft' before it in config.mode "
                      "or set config.init")
  os.makedirs(pdir, exist_ok=True)
  exs = _examples(run)
  dec = jax.tree.map(jnp.asarray, run.params)
  enc, dec = _stage1(run, exs, initial_encoder(dec), dec)
  labels = _labels(run, exs, enc, dec)
  dec = _stage2(run, exs, dec, labels)
  run.params, run.model_num_latent = dec, 0
  workdir.export(run, PHASE, dec)
  s = run.config.latent_sft
  workdir.mark_done(run, PHASE, {k: int(s[f"{k}_steps"]) for k in
                                 ("encoder", "decoder", "union", "stage2")})
  with open(os.path.join(pdir, "labels_summary.json"), "w") as f:
    json.dump({"mean_latents": float(np.mean(labels["n"]))}, f)
