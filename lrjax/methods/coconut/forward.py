"""The Coconut forward: latent thoughts are the previous position's last hidden state.

Coconut (Hao et al., arXiv 2412.06769; facebookresearch/coconut `coconut.py`)
feeds, at every latent position p, the final hidden state of position p - 1
(after the final norm) as the input embedding, and backpropagates through
the whole chain:

    x_t = h_{t-1}(x_{<t})  if the input at t is a latent thought, else E[ids_t]
    logits = W_out h(x),   loss = CE on the response tokens only

Rows of a batch may have `<bot>` at different columns (different question
lengths) and different numbers of latents (0 <= n_b <= n), n static. The
computation is done in three parts, all with static shapes:

  1. prefill: one forward over all T columns with the token embeddings (the
     `<latent>` placeholders too) into a KV cache of T + n - 1 slots. Only
     row b's prefix (columns <= bot_b) is kept visible: the cache key mask is
     reset to it, so the placeholder keys are never attended to.
  2. scan over j = 0 .. n-2: one cached single-position step per latent, fed
     h_j (h_0 = hidden at `<bot>`), at RoPE position pos[b, bot_b + 1 + j],
     writing slot T + j; it returns h_{j+1}. Each row reads its own prefix and
     its own earlier latents, so the rows need no alignment. Rows with
     n_b < n compute steps that are never used.
  3. one full forward over the T columns with the latent inputs h_0..h_{n_b-1}
     put in row b's latent columns: its logits (and hidden) are returned.

This equals the explicit loop (re-run `forward` on the growing embedding
sequence, append its last hidden state) because position t depends only on
inputs <= t. Cost: two full forwards over T plus n - 1 sequential
single-position steps over T + n - 1 cache slots (Coconut's own code: about
one full forward split into n + 1 KV-cached passes, after left-padding the
batch so the latents line up). The backward keeps one cache per scan step
(n - 1 copies of [L, B, T + n - 1, K, D] keys and values). With n == 0 it is
the plain teacher-forced forward (CoT, No-CoT, Coconut stage 0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.model import ModelConfig, embed, forward, init_cache, positions_from_mask
from lrjax.sft.sequences import SFTBatch


def latent_inputs(cfg: ModelConfig, params: dict, tok: jax.Array, positions: jax.Array,
                  mask: jax.Array, bot_pos: jax.Array, n: int) -> jax.Array:
  """The inputs h_0..h_{n-1} [B, n, H] of the n latent positions after each `<bot>`.

  Args:
    tok: [B, T, H] token embeddings (any value at the latent columns).
    positions: [B, T] RoPE positions; mask: [B, T] 1 on real tokens.
    bot_pos: [B] column of `<bot>` per row.
    n: static number of latents (the batch's n_latent_max), >= 1.
  """
  b, t, _ = tok.shape
  rows = jnp.arange(b)
  cache = init_cache(cfg, b, t + n - 1)
  pre = forward(cfg, params, tok, positions, mask, cache, fresh_cache=True)  # empty: not read
  prefix = mask.astype(bool) & (jnp.arange(t)[None, :] <= bot_pos[:, None])  # B T
  visible = jnp.concatenate([prefix, jnp.zeros((b, n - 1), bool)], axis=1)  # B T+n-1
  cache = dict(pre.cache, mask=visible)
  h0 = pre.hidden[rows, bot_pos]  # B H
  ones = jnp.ones((b, 1), jnp.int32)

  def step(carry, j):
    cache, h = carry  # h: B H, the input of latent j
    col = jnp.minimum(bot_pos + 1 + j, t - 1)  # B
    pos = positions[rows, col][:, None]  # B 1
    out = forward(cfg, params, h[:, None], pos, ones, cache)
    return (out.cache, out.hidden[:, 0]), h

  (_, h_last), hs = jax.lax.scan(step, (cache, h0), jnp.arange(n - 1))  # hs: n-1 B H
  return jnp.concatenate([jnp.swapaxes(hs, 0, 1), h_last[:, None]], axis=1)  # B n H


def substitute_latents(tok: jax.Array, latents: jax.Array, latent_mask: jax.Array,
                       bot_pos: jax.Array) -> jax.Array:
  """x[b, t] = latents[b, t - bot_b - 1] where latent_mask[b, t], else tok[b, t]."""
  t, n = tok.shape[1], latents.shape[1]
  idx = jnp.clip(jnp.arange(t)[None, :] - bot_pos[:, None] - 1, 0, n - 1)  # B T
  gathered = jnp.take_along_axis(latents, idx[..., None], axis=1)  # B T H
  return jnp.where(latent_mask[..., None], gathered.astype(tok.dtype), tok)  # B T H


def coconut_forward(cfg: ModelConfig, params: dict, batch: SFTBatch,
                    latent_grad: bool = True) -> tuple[jax.Array, jax.Array]:
  """(hidden [B, T, H], logits f32 [B, T, V]) of a batch with continuous thoughts.

  `params` is the backbone tree (what `lrjax.model.init` returns, i.e.
  `params["model"]` of the full tree). With `latent_grad` (Coconut) it is
  differentiable w.r.t. params through the whole thought chain; without it
  (LatR, arXiv 2512.11816) the thoughts are computed, then fed as constants
  (stop_gradient): the loss reaches params only through the final forward.
  """
  mask = jnp.asarray(batch.mask)
  positions = positions_from_mask(mask)  # B T
  tok = embed(cfg, params, jnp.asarray(batch.ids))  # B T H
  n = batch.n_latent_max
  x = tok
  if n > 0:
    bot_pos = jnp.asarray(batch.bot_pos)
    latents = latent_inputs(cfg, params, tok, positions, mask, bot_pos, n)  # B n H
    if not latent_grad:
      latents = jax.lax.stop_gradient(latents)
    x = substitute_latents(tok, latents, jnp.asarray(batch.latent_mask), bot_pos)  # B T H
  out = forward(cfg, params, x, positions, mask)
  return out.hidden, out.logits
