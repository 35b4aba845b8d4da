"""Latent-SFT's latent mixture and losses over lrjax's pure-functional model
(DJC-GO-SOLO/Latent-SFT `src/modeling/modeling_stage1.py`, `modeling_stage2.py`).

Encoder parameters: {"model": a backbone tree, "compress": [H] the compress
input's embedding}; the decoder is a backbone tree.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lrjax.methods.latent_grpo.latent_sft.layout import Stage1Batch, Stage2Batch
from lrjax.model import ModelConfig, forward

GUMBEL_LOW, GUMBEL_HIGH = -1.5, 3.0  # `apply_gumbel_noise`'s clamp


class Mixture(NamedTuple):
  latent: jax.Array  # [..., H] float32  Σ_k p_k E[v_k]
  ids: jax.Array  # [..., K] int32
  probs: jax.Array  # [..., K] float32


def mixture(h: jax.Array, emb: jax.Array, top_k: int) -> Mixture:
  """`softmax_over_embedding_topk`: logits = h·Eᵀ with E [V, H] held fixed (no
  gradient), p = softmax over the top-K logits (top_k 0 or >= V: the whole
  vocabulary, `softmax_over_embedding`), latent = Σ_k p_k E[v_k]. h [..., H]."""
  e = jax.lax.stop_gradient(emb).astype(jnp.float32)  # V H
  logits = h.astype(jnp.float32) @ e.T  # ... V
  v = e.shape[0]
  if top_k <= 0 or top_k >= v:
    ids = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), logits.shape)
    top = logits
  else:
    top, ids = jax.lax.top_k(logits, top_k)  # ... K
    ids = ids.astype(jnp.int32)
  probs = jax.nn.softmax(top, axis=-1)
  return Mixture(jnp.einsum("...k,...kh->...h", probs, e[ids]), ids, probs)


def encode(cfg: ModelConfig, enc: dict, b: Stage1Batch) -> jax.Array:
  """The encoder's last hidden states at its compress inputs: [B, N, H] (induction
  mask, sequential positions)."""
  table = enc["model"]["embed"]["embedding"]  # V H
  x = jnp.where(b.enc_compress[..., None], enc["compress"][None, None].astype(table.dtype),
                table[b.enc_ids])  # B Te H
  hidden = forward(cfg, enc["model"], x, b.enc_pos, b.enc_mask).hidden  # B Te H
  return jnp.take_along_axis(hidden, b.comp_cols[..., None], axis=1)  # B N H


def masked_ce(logits: jax.Array, labels: jax.Array, loss_mask: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """(mean NLL over the loss mask, token accuracy there): CrossEntropyLoss(ignore_index)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # B T V
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # B T
  denom = jnp.maximum(jnp.sum(loss_mask), 1.0)
  acc = jnp.sum((jnp.argmax(logits, -1) == labels) * loss_mask) / denom
  return jnp.sum(nll * loss_mask) / denom, acc


def stage1_loss(cfg: ModelConfig, enc: dict, dec: dict, b: Stage1Batch, top_k: int
                ) -> tuple[jax.Array, dict]:
  """CE on the text chunks and the tail of `prompt L_1 c_2 … L_n tail`, L_i the
  mixture of the encoder's i-th compress state (supervision mask, dual-track
  positions). Gradient reaches the encoder only through the latents."""
  mix = mixture(encode(cfg, enc, b), dec["embed"]["embedding"], top_k)  # B N H
  loss, m = decoder_ce(cfg, dec, b, mix.latent)
  return loss, {**m, "latent_top_weight": _top_weight(mix.probs, b.latent_cols < b.ids.shape[1])}


def decoder_ce(cfg: ModelConfig, dec: dict, b: Stage1Batch, latents: jax.Array
               ) -> tuple[jax.Array, dict]:
  """Stage 1's decoder CE with latents [B, N, H] at `b.latent_cols`."""
  table = dec["embed"]["embedding"]  # V H
  x = table[b.ids].astype(jnp.float32)  # B T H
  rows = jnp.arange(x.shape[0])[:, None]
  x = x.at[rows, b.latent_cols].set(latents.astype(jnp.float32), mode="drop")  # T: dropped
  out = forward(cfg, dec, x.astype(table.dtype), b.pos, b.mask)
  loss, acc = masked_ce(out.logits, b.labels, b.loss_mask)
  return loss, {"loss": loss, "accuracy": acc}


def _top_weight(probs: jax.Array, valid: jax.Array) -> jax.Array:
  top = jnp.max(probs, axis=-1)
  return jnp.sum(jnp.where(valid, top, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def soft_labels(cfg: ModelConfig, enc: dict, dec: dict, b: Stage1Batch, top_k: int
                ) -> tuple[jax.Array, jax.Array]:
  """(ids, probs) [B, N, K] of every latent (`generate_latent_soft_label_*_batch.py`)."""
  mix = mixture(encode(cfg, enc, b), dec["embed"]["embedding"], top_k)
  return mix.ids, mix.probs


def gumbel_perturb(key: jax.Array, probs: jax.Array, ids: jax.Array, valid: jax.Array,
                   end_id: int, scale: float, temperature: float, tries: int = 100
                   ) -> jax.Array:
  """`apply_gumbel_noise_safe`: p' = softmax((log(p + 1e-10) + clip(scale·G, −1.5, 3)) / T),
  G ~ Gumbel(0, 1), redrawn (up to `tries` times) for the whole row while the
  top-1 of some latent is `end_id`; the last draw is kept otherwise.
  probs / ids [B, N, K], valid [B, N]."""
  g = jax.random.gumbel(key, (tries,) + probs.shape)  # R B N K
  noisy = jax.nn.softmax((jnp.log(probs + 1e-10)[None] + jnp.clip(scale * g, GUMBEL_LOW,
                                                                   GUMBEL_HIGH)) / temperature, -1)
  top = jnp.take_along_axis(ids[None], jnp.argmax(noisy, -1)[..., None], axis=-1)[..., 0]  # R B N
  bad = jnp.any((top == end_id) & valid[None], axis=-1)  # R B
  pick = jnp.where(jnp.any(~bad, axis=0), jnp.argmax(~bad, axis=0), tries - 1)  # B
  return jnp.take_along_axis(noisy, pick[None, :, None, None], axis=0)[0]  # B N K


def topk_kl(logits: jax.Array, ids: jax.Array, probs: jax.Array, eps: float = 1e-12) -> jax.Array:
  """`kd_kl_loss_topk`: Σ_k q_k (log q_k − log p_{v_k}), q = probs renormalised, p the
  full-vocabulary softmax of `logits` [..., V]; -> [...]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, ids, axis=-1)  # ... K
  q = probs.astype(jnp.float32)
  q = q / (jnp.sum(q, -1, keepdims=True) + eps)
  return jnp.sum(q * jnp.log(jnp.maximum(q, eps)) - q * picked, axis=-1)


def stage2_loss(cfg: ModelConfig, dec: dict, b: Stage2Batch, label_probs: jax.Array,
                ce_weight: float, kl_weight: float) -> tuple[jax.Array, dict]:
  """ce_w · CE(tail) + kl_w · KL, teacher-forced on `prompt L_1 … L_n tail` (causal,
  sequential positions), L_i = Σ_k q_ik E[v_ik]; KL of row b = the mean over its
  latents of KL(q_i ‖ p at the position before L_i), averaged over rows."""
  table = dec["embed"]["embedding"]  # V H
  lat = jnp.einsum("bnk,bnkh->bnh", label_probs.astype(jnp.float32),
                   table[b.label_ids].astype(jnp.float32))  # B N H
  x = jax.lax.stop_gradient(table[b.ids]).astype(jnp.float32)  # B T H (`.detach()`)
  rows = jnp.arange(x.shape[0])[:, None]
  x = x.at[rows, b.latent_cols].set(lat, mode="drop")
  pos = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), b.ids.shape)
  out = forward(cfg, dec, x.astype(table.dtype), pos, b.mask)
  ce, acc = masked_ce(out.logits, b.labels, b.loss_mask)
  before = jnp.take_along_axis(out.logits, jnp.clip(b.latent_cols - 1, 0, None)[..., None],
                               axis=1)  # B N V
  kl_tok = topk_kl(before, b.label_ids, label_probs)  # B N
  v = b.latent_valid.astype(jnp.float32)
  kl = jnp.mean(jnp.sum(kl_tok * v, -1) / jnp.maximum(jnp.sum(v, -1), 1.0))
  loss = ce_weight * ce + kl_weight * kl
  return loss, {"loss": loss, "ce": ce, "kl": kl, "accuracy": acc}
