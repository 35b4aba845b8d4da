"""Log-probabilities of chosen ids from final hidden states, in vocabulary chunks.

With W [V, H] the output table (the embedding for tied models, the LM head's
kernel transposed otherwise), h the final hidden state and τ a temperature:

    z_v   = (h · W_v) / τ                       (float32, as `lm_logits` / τ)
    lse   = log Σ_v exp(z_v)
    log p(ids_k) = z_{ids_k} − lse                (= log_softmax(z)[ids_k])

`vocab_stats` computes lse and z[ids] without a [..., V] tensor: the V columns
are visited in chunks of C = `cfg.logits_chunk` (a `lax.scan` whose body is
rematerialised, so the backward pass recomputes each chunk instead of keeping
it), holding one [R, C] float32 block at a time, R = the number of rows. The
chunk lse's are combined by one logsumexp over the chunk axis; the gathered
z[ids] are added up chunk by chunk (each id lies in exactly one chunk).
C = 0, or C >= V, takes the plain path: full float32 logits, log_softmax,
gather (the same numbers up to float32 summation order; tests/test_vocab.py).

Shape legend: R rows (flattened leading axes), H hidden, V vocab, C chunk,
K ids per row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.model.api import compute_params, lm_logits
from lrjax.model.config import ModelConfig, mask_suppressed
from lrjax.parallel import constrain_rows


def output_table(cfg: ModelConfig, params: dict) -> jax.Array:
  """W [V, H] in the compute dtype: the tied embedding table, or the untied LM head's kernel
  transposed."""
  if cfg.tie_word_embeddings:
    return compute_params(cfg, params["embed"]["embedding"])
  return compute_params(cfg, params["lm_head"]["kernel"]).T


def chunked(cfg: ModelConfig) -> bool:
  """Whether `vocab_stats` visits the vocabulary in chunks (0 < logits_chunk < V)."""
  return 0 < cfg.logits_chunk < cfg.vocab_size


def _chunk_stats(cfg: ModelConfig, h: jax.Array, w: jax.Array, start, ids: jax.Array,
                 temperature: float):
  """One chunk: (lse_c [R], z[ids] where ids fall in [start, start + C) else 0 [R, K],
  max_c [R], first argmax_c + start [R])."""
  c = w.shape[0]
  z = mask_suppressed(cfg, h @ w.astype(jnp.float32).T, start) / temperature  # R C
  lse = jax.nn.logsumexp(z, axis=-1)  # R
  local = ids - start  # R K
  inside = (local >= 0) & (local < c)
  picked = jnp.take_along_axis(z, jnp.clip(local, 0, c - 1), axis=-1)  # R K
  zs = jax.lax.stop_gradient(z)
  top = jnp.max(zs, axis=-1)  # R
  arg = jnp.argmax(zs, axis=-1).astype(jnp.int32) + start  # R
  return lse, jnp.where(inside, picked, 0.0), top, arg


def vocab_stats(cfg: ModelConfig, params: dict, hidden: jax.Array, ids: jax.Array,
                temperature: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(lse [...], z[ids] [..., K], first argmax_v z_v [...] int32) of z = (h W) / τ.

  hidden [..., H] (final-norm output), ids [..., K] int. Differentiable in
  hidden and params (the argmax carries no gradient).
  """
  lead = hidden.shape[:-1]
  k = ids.shape[-1]
  ids = ids.astype(jnp.int32)
  if not chunked(cfg):
    z = lm_logits(cfg, params, hidden).astype(jnp.float32) / temperature  # ... V
    arg = jnp.argmax(jax.lax.stop_gradient(z), axis=-1).astype(jnp.int32)
    return jax.nn.logsumexp(z, axis=-1), jnp.take_along_axis(z, ids, axis=-1), arg
  h = constrain_rows(hidden.reshape(-1, hidden.shape[-1]).astype(jnp.float32))  # R H
  flat_ids = constrain_rows(ids.reshape(-1, k))  # R K
  table = output_table(cfg, params)  # V H
  v, c = cfg.vocab_size, cfg.logits_chunk
  q = v // c

  @jax.checkpoint
  def body(picked, xs):
    w, start = xs  # C H, []
    lse, got, top, arg = _chunk_stats(cfg, h, w, start, flat_ids, temperature)
    return picked + got, (lse, top, arg)

  starts = jnp.arange(q, dtype=jnp.int32) * c
  picked, (lses, tops, args) = jax.lax.scan(
      body, jnp.zeros(flat_ids.shape, jnp.float32),
      (table[:q * c].reshape(q, c, -1), starts))  # R K, q R (each)
  if q * c < v:  # the remainder chunk
    lse_r, got, top_r, arg_r = _chunk_stats(cfg, h, table[q * c:], q * c, flat_ids, temperature)
    picked = picked + got
    lses, tops, args = (jnp.concatenate([a, b[None]]) for a, b in
                        ((lses, lse_r), (tops, top_r), (args, arg_r)))
  lse = jax.nn.logsumexp(lses, axis=0)  # R
  # the first chunk holding the maximum holds its first index
  arg = jnp.take_along_axis(args, jnp.argmax(tops, axis=0)[None], axis=0)[0]  # R
  return lse.reshape(lead), picked.reshape(*lead, k), arg.reshape(lead)


def gather_logp(cfg: ModelConfig, params: dict, hidden: jax.Array, ids: jax.Array,
                temperature: float = 1.0) -> jax.Array:
  """log_softmax((h W) / τ)[ids]: hidden [..., H], ids [..., K] -> float32 [..., K]."""
  if not chunked(cfg):  # the plain path, as `lrjax.sampling.token_logp`
    logp = jax.nn.log_softmax(lm_logits(cfg, params, hidden).astype(jnp.float32) / temperature,
                              axis=-1)  # ... V
    return jnp.take_along_axis(logp, ids.astype(jnp.int32), axis=-1)
  lse, picked, _ = vocab_stats(cfg, params, hidden, ids, temperature)
  return picked - lse[..., None]


def token_logp_from_hidden(cfg: ModelConfig, params: dict, hidden: jax.Array, ids: jax.Array,
                           temperature: float = 1.0) -> jax.Array:
  """log_softmax((h W) / τ)[y]: hidden [..., H], ids [...] -> float32 [...]."""
  return gather_logp(cfg, params, hidden, ids[..., None], temperature)[..., 0]


def record_and_token_logp(cfg: ModelConfig, params: dict, hidden: jax.Array, ids: jax.Array,
                          tokens: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """(log_softmax(h W)[ids] [..., K] at temperature 1, log_softmax((h W) / τ)[tokens] [...]).

  A rule that scores recorded candidates at τ = 1 and the emitted token at the
  sampler's τ (LEPO, Latent-GRPO); one pass over the vocabulary when τ = 1.
  """
  if temperature == 1.0:
    logp = gather_logp(cfg, params, hidden, jnp.concatenate([tokens[..., None], ids], axis=-1))
    return logp[..., 1:], logp[..., 0]
  return (gather_logp(cfg, params, hidden, ids),
          token_logp_from_hidden(cfg, params, hidden, tokens, temperature))
