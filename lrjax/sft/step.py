"""SFT loss, curriculum schedule and the jitted train step.

The loss is the token-mean next-token cross-entropy over the response
(`loss_mask`, see `lrjax.sft.sequences` for the label alignment):

    L = sum_{b,t} m_{b,t} * -log softmax(logits_{b,t})[labels_{b,t}] / max(1, sum m)

with the logits of a teacher-forced forward (CoT, No-CoT) or of the SFT method's
own forward (`SFTMethod.forward`: Coconut's continuous thoughts). Coconut (Hao et al.,
arXiv 2412.06769) trains with AdamW (lr 1e-4, wd 0.01) and resets the
optimizer state at every curriculum stage switch: the SFT phase calls
`optimizer.init(params)` again when `stage_switched(step, ...)` is true (or
uses `reset_on_stage_switch`). The optimizer itself (AdamW after a global-norm
clip, constant or cosine schedule) is `lrjax.optim.make_optimizer`, shared with RL.

`params` everywhere here is the **backbone** tree (what `lrjax.model.init`
returns, i.e. `params["model"]` of the full `{"model", "rule", "heads"}` tree).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from lrjax.faults import guarded_update

from lrjax.model import ModelConfig, embed, forward, positions_from_mask
from lrjax.model.vocab import chunked, vocab_stats
from lrjax.parallel import on_mesh, shardings_of
from lrjax.sft.sequences import SFTBatch, sft_method
from lrjax.sft.span import span_forward

_STEP_IDS = itertools.count()


def masked_cross_entropy(logits: jax.Array, labels: jax.Array,
                         loss_mask: jax.Array) -> tuple[jax.Array, dict]:
  """Token-mean CE over loss_mask; aux: next-token accuracy and the token count."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # B T V
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # B T
  return _token_mean(nll, jnp.argmax(logits, axis=-1), labels, loss_mask)


def hidden_cross_entropy(cfg: ModelConfig, params: dict, hidden: jax.Array, labels: jax.Array,
                         loss_mask: jax.Array) -> tuple[jax.Array, dict]:
  """`masked_cross_entropy` of the logits h W, read in vocabulary chunks of
  cfg.logits_chunk (`lrjax.model.vocab`: no [B, T, V] tensor)."""
  lse, picked, pred = vocab_stats(cfg, params, hidden, labels[..., None])  # B T, B T 1, B T
  return _token_mean(lse - picked[..., 0], pred, labels, loss_mask)


def _token_mean(nll: jax.Array, pred: jax.Array, labels: jax.Array,
                loss_mask: jax.Array) -> tuple[jax.Array, dict]:
  m = loss_mask.astype(jnp.float32)  # B T
  count = m.sum()
  denom = jnp.maximum(count, 1.0)
  loss = (nll * m).sum() / denom
  correct = (pred == labels).astype(jnp.float32)  # B T
  return loss, {"loss": loss, "accuracy": (correct * m).sum() / denom, "num_tokens": count}


def token_forward(cfg: ModelConfig, params: dict, batch: SFTBatch) -> tuple[jax.Array, jax.Array]:
  """(hidden [B, T, H], logits f32 [B, T, V]): the teacher-forced forward of the rows'
  token embeddings."""
  mask = jnp.asarray(batch.mask)
  positions = positions_from_mask(mask)  # B T
  tok = embed(cfg, params, jnp.asarray(batch.ids))  # B T H
  out = forward(cfg, params, tok, positions, mask)
  return out.hidden, out.logits


def sft_loss(cfg: ModelConfig, params: dict, batch: SFTBatch, mode: str,
             latent_grad: bool = True, span_scale: float = 0.0,
             key: jax.Array | None = None, span_tokens: bool = False) -> tuple[jax.Array, dict]:
  """(loss, aux) of an `SFTBatch`: aux = {loss, accuracy, num_tokens}.

  modes without latent rows ('cot'/'nocot') require a batch without latents;
  a method with its own forward (`SFTMethod.forward`, e.g. 'coconut': the Coconut
  forward, the plain one at stage 0) runs it, through the thought chain with
  `latent_grad` (Coconut) or on its detached thoughts (LatR).
  With cfg.logits_chunk in (0, V) the CE is read from the hidden states in
  vocabulary chunks (`hidden_cross_entropy`). With `span_scale` > 0 (and a `key`), a
  'cot'/'nocot' batch's latent_mask columns read noise (`lrjax.sft.span`, r_max = span_scale),
  added to their token embeddings with `span_tokens` (hint rows).
  """
  if not sft_method(mode).latent and batch.n_latent_max:
    raise ValueError(f"mode {mode!r} got a batch with {batch.n_latent_max} latent slots")
  if span_scale > 0 and not sft_method(mode).latent:
    if key is None:
      raise ValueError("a latent span (span_scale > 0) needs a key")
    hidden, logits = span_forward(cfg, params, batch, span_scale, key, span_tokens)  # B T H, B T V
  else:
    method_forward = sft_method(mode).forward
    if method_forward is None:
      hidden, logits = token_forward(cfg, params, batch)  # B T H, B T V
    else:
      hidden, logits = method_forward(cfg, params, batch, latent_grad)  # B T H, B T V
  labels, loss_mask = jnp.asarray(batch.labels), jnp.asarray(batch.loss_mask)
  if chunked(cfg):
    return hidden_cross_entropy(cfg, params, hidden, labels, loss_mask)
  return masked_cross_entropy(logits, labels, loss_mask)


def train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, mode: str,
               params: dict, opt_state: optax.OptState, batch: SFTBatch,
               latent_grad: bool = True, poison=False, span_scale: float = 0.0,
               key: jax.Array | None = None,
               span_tokens: bool = False) -> tuple[dict, optax.OptState, dict]:
  """One AdamW update on the SFT loss, skipped when the loss or the gradient norm is
  not finite (`lrjax.faults.guarded_update`; `poison` injects a NaN); metrics: loss,
  accuracy, num_tokens, grad_norm, ok (the update was applied)."""
  grad_fn = jax.value_and_grad(
      lambda p: sft_loss(cfg, p, batch, mode, latent_grad, span_scale, key, span_tokens),
      has_aux=True)
  (loss, aux), grads = grad_fn(params)
  params, opt_state, grad_norm, ok = guarded_update(optimizer, grads, opt_state, params, loss,
                                                    poison)
  return params, opt_state, dict(aux, grad_norm=grad_norm, ok=ok)


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, mode: str,
                    max_traces: int | None = None, latent_grad: bool = True,
                    mesh=None, span_scale: float = 0.0, span_tokens: bool = False) -> Callable:
  """jit(fn(params, opt_state, batch, poison=False, key=None) -> (params, opt_state, metrics)),
  params and
  opt_state donated. One compile per batch shape (B, T, n_latent_max);
  `max_traces` makes a further retrace fail (`chex.assert_max_traces`);
  `latent_grad`: see `sft_loss`; with a `mesh` every call runs under `jax.set_mesh(mesh)`
  (activation rows over (data, fsdp), `lrjax.parallel.constrain_rows`); `span_scale` > 0:
  noise at the span columns (`lrjax.sft.span`), drawn from `key`."""
  sft_method(mode)  # ValueError for an unknown mode

  def step(params, opt_state, batch, poison=False, key=None):
    return train_step(cfg, optimizer, mode, params, opt_state, batch, latent_grad, poison,
                      span_scale, key, span_tokens)

  if max_traces is not None:
    # chex counts traces per (definition stack, source, __name__): a unique name
    # gives every step function made here its own budget.
    step.__name__ = f"sft_train_step_{mode}_{next(_STEP_IDS)}"
    step = chex.assert_max_traces(step, n=max_traces)
  return on_mesh(jax.jit(step, donate_argnums=(0, 1)), mesh)


def curriculum_stage(step: int, stage_steps: Sequence[int] | int, num_stages: int) -> int:
  """The Coconut stage of a training step, in 0..num_stages.

  stage_steps: an int (every stage lasts that many steps, Coconut's
  `epochs_per_stage` in steps) or a list of per-stage durations (stage i lasts
  stage_steps[i] steps). After them (or from stage num_stages on) the stage
  stays num_stages, the last one (with `max_latent_stage = num_stages - 1`
  in `build_batch` it is the all-latent stage).
  """
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  if isinstance(stage_steps, int):
    if stage_steps <= 0:
      raise ValueError(f"stage_steps must be > 0, got {stage_steps}")
    return min(step // stage_steps, num_stages)
  stage, end = 0, 0
  for duration in stage_steps:
    end += duration
    if step < end:
      return min(stage, num_stages)
    stage += 1
  return min(stage, num_stages)


def stage_switched(step: int, stage_steps: Sequence[int] | int, num_stages: int) -> bool:
  """True when `step` is the first step of a new curriculum stage (step > 0)."""
  return step > 0 and (curriculum_stage(step, stage_steps, num_stages)
                       != curriculum_stage(step - 1, stage_steps, num_stages))


def reset_on_stage_switch(optimizer: optax.GradientTransformation, params: dict,
                          opt_state: optax.OptState, step: int,
                          stage_steps: Sequence[int] | int, num_stages: int) -> optax.OptState:
  """A fresh `optimizer.init(params)` at a stage switch (Coconut), else opt_state.

  Note: this also restarts the schedule's step count, as Coconut's new torch
  optimizer does; with a warmup, the warmup is repeated every stage.
  """
  if stage_switched(step, stage_steps, num_stages):
    return fresh_optimizer_state(optimizer, params, opt_state)
  return opt_state


def fresh_optimizer_state(optimizer: optax.GradientTransformation, params: dict,
                          opt_state: optax.OptState) -> optax.OptState:
  """`optimizer.init(params)` laid out as the `opt_state` it replaces (each leaf on its
  sharding): a fresh, unplaced state would make the jitted step compile again."""
  return jax.jit(optimizer.init, out_shardings=shardings_of(opt_state))(params)
