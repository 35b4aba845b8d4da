"""A latent span in the CoT warm-up: the main model learns to read `<bot> z_1..z_T <eot>`.

DLR (`lrjax.methods.dlr.rule`) puts an assistant's chain z_1 .. z_T between `<bot>` and
`<eot>` after the question of a frozen main model. A plain CoT warm-up never shows
the main model such a span, so any chain there throws it off. With
`sft.latent_span = T > 0` a share `sft.span_prob` of the CoT rows reads (ours)

    prompt <bot> <latent>*T <eot> | cot eos          (`|`: the loss starts; the span is no target)

and the input at each `<latent>` column is not E[<latent>] but a draw like an
untrained assistant's chain (whose means have RMS ≈ s per coordinate):

    x_{b,t} = s · ρ_{b,t} · ε_{b,t},   ρ_{b,t} ~ U(0, r_max),  ε_{b,t} ~ N(0, I_H)

with s = sqrt(mean(E²)) the embedding RMS (a constant, no gradient) and
r_max = `sft.span_scale`; ρ near 0 covers all-zero chains. With `sft.span_hint`
= q > 0 (an experiment, off by default), a share q of the span rows carries the
first T tokens of the final answer (`<latent>` past its end; `sequences.with_span`) and every
span input becomes x_{b,t} = E[ids_{b,t}] + s·ρ_{b,t}·ε_{b,t}, so the span can
also carry information the model learns to use. The other rows stay
plain CoT, so the model alone (no span) is trained as before. Loss: the token
mean CE on the solution only (`lrjax.sft.step`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lrjax.model import embed, forward, positions_from_mask


def span_rows(seed: int, step: int, batch_size: int, prob: float) -> np.ndarray:
  """[B] bool: the rows of step `step` that get a span (fixed by seed and step)."""
  rng = np.random.default_rng([int(seed), int(step), 7919])
  return rng.random(batch_size) < prob


def noise_inputs(tok: jax.Array, latent_mask: jax.Array, scale: jax.Array, max_ratio: float,
                 key: jax.Array, add_tokens: bool = False) -> jax.Array:
  """x = s · ρ · ε (+ tok with add_tokens) at latent_mask [B, T], tok [B, T, H] elsewhere."""
  k_r, k_e = jax.random.split(key)
  b, t, h = tok.shape
  rho = jax.random.uniform(k_r, (b, t, 1), jnp.float32, 0.0, max_ratio)  # B T 1
  eps = jax.random.normal(k_e, (b, t, h), jnp.float32)  # B T H
  z = (scale * rho * eps).astype(tok.dtype) + (tok if add_tokens else 0)
  return jnp.where(jnp.asarray(latent_mask)[..., None], z, tok)  # B T H


def span_forward(cfg, params: dict, batch, max_ratio: float, key: jax.Array,
                 add_tokens: bool = False) -> tuple[jax.Array, jax.Array]:
  """(hidden [B, T, H], logits [B, T, V]) with noise at the batch's span columns."""
  mask = jnp.asarray(batch.mask)
  tok = embed(cfg, params, jnp.asarray(batch.ids))  # B T H
  e = jax.lax.stop_gradient(params["embed"]["embedding"]).astype(jnp.float32)
  scale = jnp.sqrt(jnp.mean(jnp.square(e)))
  x = noise_inputs(tok, batch.latent_mask, scale, max_ratio, key, add_tokens)
  out = forward(cfg, params, x, positions_from_mask(mask), mask)
  return out.hidden, out.logits
