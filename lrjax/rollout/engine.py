"""The jitted rollout: one prefill, then one `lax.while_loop` over max_new steps.

    prefill(prompt) -> l_0, h_0, cache          (decode.prefill)
    for t < max_new while some row is live:
      y_t, logp_t, x_{t+1}, record_t = rule.step(l_t, h_t)
      h_{t+1}, l_{t+1} = decode.step(x_{t+1} at position prompt_len + t, cache)

All buffers are preallocated ([B, N, ...], N = max_new) and written at column
t; a row is done after it emits eos in any span (a `gumbel_soft` row may end
inside its latent positions, whose shown token is not sampled), and finished
rows stop changing (ids pad, span DONE, logp 0, records 0, rule state frozen).
The loop stops early when every row is done. The KV cache is built inside the
program and carried by the loop, so XLA updates it in place (there is nothing
to donate at the jit boundary; `params` must not be donated, the
learner reuses them). The steps use `lrjax.model.decode`: per-layer cache
buffers and weights split out of the layer stack once, before the loop (the
generic `forward` copied a layer's cache slice and weights every step).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lrjax.latent.base import DONE, RuleContext, rule_of
from lrjax.model import decode
from lrjax.model.api import compute_params, embed, positions_from_mask
from lrjax.rollout.trajectory import Trajectory
from lrjax.sampling import with_knobs


PREPARE_STREAM = 2**30  # fold_in(key, ·) of a rule's `prepare` (steps use fold_in(key, t))


def _rows(mask: jax.Array, new, old):
  """Per-row select over pytrees whose leaves lead with the batch axis B."""
  def sel(n, o):
    m = mask.reshape(mask.shape + (1,) * (n.ndim - 1))
    return jnp.where(m, n, o).astype(o.dtype)
  return jax.tree.map(sel, new, old)


def _write(buf: jax.Array, t: jax.Array, value: jax.Array) -> jax.Array:
  """buf [B, N, ...] with column t set to value [B, ...]."""
  return jax.lax.dynamic_update_index_in_dim(buf, value.astype(buf.dtype), t, axis=1)


def phase_ends(max_new: int, min_steps: int = 32, max_phases: int = 4) -> list[int]:
  """Step counts at which the decode cache grows: [end_1, ..., max_new].

  Attention reads every slot of the cache, filled or not, so the loop runs
  in up to `max_phases` while_loops of >= `min_steps` steps, each over a
  cache just long enough for it (p + end slots), grown in between: 4 phases
  read 5/8 of the slots one full-length cache would. Each phase compiles the
  step again, so short rollouts keep one.
  """
  k = max(1, min(max_phases, max_new // min_steps))
  return [-(-max_new * (i + 1) // k) for i in range(k)]


def sample_trajectory(ctx: RuleContext, params: dict, prompt_ids: jax.Array,
                      prompt_mask: jax.Array, key: jax.Array, aux=None,
                      knobs: jax.Array | None = None) -> Trajectory:
  """Unjitted rollout (see `rollout`); ctx must be static under jit."""
  if knobs is not None:  # temperature and greedy traced: one program for both
    ctx = ctx.replace(sampling=with_knobs(ctx.sampling, knobs))
  cfg, rule, n = ctx.model_cfg, rule_of(ctx), ctx.max_new
  b, p = prompt_ids.shape
  mask = prompt_mask.astype(bool)  # B P
  prompt_len = jnp.sum(mask, axis=-1, dtype=jnp.int32)  # B
  params = {**params, "model": compute_params(cfg, params["model"])}  # once, not per step
  dparams = decode.prepare(cfg, params["model"])  # per-layer, fused: split once, not per step
  ends = phase_ends(n)
  hidden, logits, cache = decode.prefill(cfg, dparams, embed(cfg, params["model"], prompt_ids),
                                         positions_from_mask(mask), mask, p + ends[0])
  bufs = {
      "ids": jnp.full((b, n), ctx.pad_id, jnp.int32),  # B N
      "span": jnp.full((b, n), DONE, jnp.int8),  # B N
      "sampled": jnp.zeros((b, n), bool),  # B N
      "logp": jnp.zeros((b, n), jnp.float32),  # B N
      "records": {k: jnp.zeros(s.shape, s.dtype) for k, s in rule.record_spec(ctx, b, n).items()},
  }
  if ctx.return_logits:
    bufs["logits"] = jnp.zeros((b, n, cfg.vocab_size), jnp.float32)  # B N V
  carry = dict(t=jnp.zeros((), jnp.int32), cache=cache, logits=logits, last_hidden=hidden,
               state=(rule.init_state(ctx, b) if rule.prepare is None else rule.prepare(
                   ctx, params, prompt_ids, prompt_mask, jax.random.fold_in(key, PREPARE_STREAM),
                   aux)),
               done=jnp.zeros((b,), bool), ended=jnp.zeros((b,), bool), bufs=bufs)


  def body(c):
    t, live = c["t"], ~c["done"]  # [], B
    so = rule.step(ctx, params, c["logits"], c["last_hidden"], jax.random.fold_in(key, t),
                   c["state"], aux)
    token = jnp.where(live, so.token, ctx.pad_id)  # B
    sampled = live & so.sampled  # B
    span = jnp.where(live, so.span, DONE).astype(jnp.int8)  # B
    old = c["bufs"]
    bufs = {"ids": _write(old["ids"], t, token), "span": _write(old["span"], t, span),
            "sampled": _write(old["sampled"], t, sampled),
            "logp": _write(old["logp"], t, jnp.where(sampled, so.logp, 0.0)),
            "records": {k: _write(v, t, _rows(live, so.record[k], jnp.zeros_like(so.record[k])))
                        for k, v in old["records"].items()}}
    if ctx.return_logits:
      bufs["logits"] = _write(old["logits"], t, c["logits"])
    eos = live & ctx.is_eos(token)  # B
    x = so.next_embed.astype(cfg.jnp_dtype)  # B H
    hidden, logits, cache = decode.step(cfg, dparams, x, prompt_len + t, c["cache"])
    return dict(t=t + 1, cache=cache, logits=logits, last_hidden=hidden,
                state=_rows(live, so.state, c["state"]),
                done=c["done"] | eos, ended=c["ended"] | eos, bufs=bufs)

  c = carry
  for end in ends:  # phase: steps t < end attend over p + end cache slots
    c = dict(c, cache=decode.grow(cfg, c["cache"], p + end))
    c = jax.lax.while_loop(lambda c, end=end: (c["t"] < end) & ~jnp.all(c["done"]), body, c)
  bufs = c["bufs"]
  return Trajectory(
      prompt_ids=prompt_ids, prompt_mask=prompt_mask, ids=bufs["ids"], span=bufs["span"],
      sampled=bufs["sampled"], logp=bufs["logp"], records=bufs["records"],
      lengths=jnp.sum(bufs["span"] != DONE, axis=-1, dtype=jnp.int32), truncated=~c["ended"],
      logits=bufs.get("logits"))


@functools.partial(jax.jit, static_argnums=0)
def rollout(ctx: RuleContext, params: dict, prompt_ids: jax.Array, prompt_mask: jax.Array,
            key: jax.Array, aux=None, knobs: jax.Array | None = None) -> Trajectory:
  """Samples a `Trajectory` for left-padded prompts (jitted, ctx static).

  Args:
    ctx: the static `RuleContext` (rule, sampling, special ids, max_new).
    params: {"model": backbone, "rule": rule params, "heads": ...}.
    prompt_ids: [B, P] int32, left-padded to a bucket (`pad_prompts`).
    prompt_mask: [B, P], 1 on real tokens.
    key: PRNG key; step t uses fold_in(key, t).
    aux: the rule's array pytree (e.g. hybrid's delimiter tables), or None.
    knobs: None, or `lrjax.sampling.knobs(s)`: sample at s's temperature and greedy
      instead of ctx.sampling's, which are then not part of the program (greedy and
      sampled evaluation share one compile; top-k / top-p stay ctx's).
  """
  return sample_trajectory(ctx, params, prompt_ids, prompt_mask, key, aux, knobs)
