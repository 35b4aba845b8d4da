"""One-position decoding for the rollout loop, in a layout fit for it.

`forward` (transformer.py) serves every caller with one generic cache,
[L, B, S, K, D] arrays sliced per layer inside nn.scan. In a while_loop that
costs, per step and per layer, a copy of the layer's cache slice and of its
weights (slices of the stacked [L, ...] parameters), and a transpose of the
keys before q·k (measured: ~60% of a CPU rollout step). This module decodes
one position with the same math but

- per-layer parameters split out of the stack once, before the loop, with
  q/k/v and gate/up fused into one matmul each and kernels transposed
  (`prepare`): the residual stream is carried feature-major [H, B];
- per-layer cache buffers (tuples, so each is its own loop-carried buffer,
  updated in place), keys stored transposed: k [B, K, D, S], v [B, K, S, D],
  so both attention products are plain batched matmuls;
- the new key/value written at slot `index` first, then attention over all S
  slots under a [B, S] visibility mask built once per step. S is static: a
  caller that knows a bound on `index` for a stretch of steps keeps S small
  and `grow`s the cache between stretches (the rollout does).

    cache = {"k": L x [B, K, D, S], "v": L x [B, K, S, D],
             "mask": [B, S] bool (slot holds a real token), "index": int32 [],
             "cos", "sin": [S, D] RoPE tables of positions 0 .. S-1}

Positions must be < S (a left-padded row's position never exceeds its slot).

`prefill` runs a prompt into this cache; its and `step`'s logits agree with
`forward` to float rounding (tests/test_model.py).
Shape legend as in transformer.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.model import lora
from lrjax.model.api import compute_params
from lrjax.model.config import ModelConfig, mask_suppressed
from lrjax.model.transformer import rms_norm, rope_inv_freq, rope_tables, rotate


def prepare(cfg: ModelConfig, params: dict) -> dict:
  """Decode parameters (call outside loops): per-layer tuples of TRANSPOSED kernels [out, in],
  q/k/v and gate/up fused, biases as [out, 1] columns; LoRA adapters merged (`lora.merged`);
  in the compute dtype (`api.compute_params`)."""
  params = compute_params(cfg, lora.merged(cfg, params))
  lp = params["layers"]
  a, m = lp["attn"], lp["mlp"]
  t = lambda w: jnp.swapaxes(w, -1, -2)  # noqa: E731  [..., in, out] -> [..., out, in]
  col = lambda b: None if b is None else b[:, None]  # noqa: E731
  qkv_w = t(jnp.concatenate([a["q"]["kernel"], a["k"]["kernel"], a["v"]["kernel"]], -1))  # L (N+2K)D H
  qkv_b = (jnp.concatenate([a["q"]["bias"], a["k"]["bias"], a["v"]["bias"]], -1)
           if cfg.qkv_bias else None)  # L (N+2K)D
  gate_up = t(jnp.concatenate([m["gate"]["kernel"], m["up"]["kernel"]], -1))  # L 2F H
  layers = []
  for l in range(cfg.num_layers):
    layers.append({
        "input_norm": col(lp["input_norm"]["scale"][l]),
        "post_attn_norm": col(lp["post_attn_norm"]["scale"][l]),
        "qkv_w": qkv_w[l], "qkv_b": None if qkv_b is None else col(qkv_b[l]),
        "o_w": t(a["o"]["kernel"][l]), "o_b": col(a["o"]["bias"][l]) if cfg.o_bias else None,
        "gate_up_w": gate_up[l],
        "gate_up_b": (col(jnp.concatenate([m["gate"]["bias"][l], m["up"]["bias"][l]], -1))
                      if cfg.mlp_bias else None),
        "down_w": t(m["down"]["kernel"][l]),
        "down_b": col(m["down"]["bias"][l]) if cfg.mlp_bias else None,
    })
  head = (params["embed"]["embedding"] if cfg.tie_word_embeddings
          else t(params["lm_head"]["kernel"]))  # V H
  return {"layers": tuple(layers), "final_norm": params["final_norm"]["scale"], "head": head}


def grow(cfg: ModelConfig, cache: dict, max_len: int) -> dict:
  """The same cache with `max_len` slots (more than now; the new ones empty, masked)."""
  pad = max_len - cache["mask"].shape[1]
  cos, sin = rope_tables(jnp.arange(max_len), rope_inv_freq(cfg), cfg.jnp_dtype)  # S D
  return {"k": tuple(jnp.pad(k, ((0, 0),) * 3 + ((0, pad),)) for k in cache["k"]),
          "v": tuple(jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0))) for v in cache["v"]),
          "mask": jnp.pad(cache["mask"], ((0, 0), (0, pad))), "index": cache["index"],
          "cos": cos, "sin": sin}


def _dense_t(xt, w, b):
  """Transposed dense: w [out, in] @ xt [in, B] (+ b [out, 1]) -> [out, B]."""
  y = w.astype(xt.dtype) @ xt
  return y if b is None else y + b.astype(xt.dtype)


def _qkv(cfg: ModelConfig, p: dict, xt: jax.Array, cos: jax.Array, sin: jax.Array):
  """xt [H, R] (R = rows, ... their leading shape in cos/sin [..., 1, D]) -> q [..., N, D],
  k [..., K, D] (both rotated) and v [..., K, D]."""
  n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  lead = cos.shape[:-2]
  qkv = _dense_t(rms_norm(xt, p["input_norm"], cfg.rms_norm_eps, axis=0), p["qkv_w"], p["qkv_b"]).T
  q = rotate(qkv[:, :n * d].reshape(*lead, n, d), cos, sin)
  key = rotate(qkv[:, n * d:(n + k) * d].reshape(*lead, k, d), cos, sin)
  return q, key, qkv[:, (n + k) * d:].reshape(*lead, k, d)


def _attn_out_mlp(cfg: ModelConfig, p: dict, xt: jax.Array, out: jax.Array) -> jax.Array:
  """The residual stream xt [H, R] after the output projection of the attention out [R, N*D]
  and the SwiGLU MLP."""
  f = cfg.intermediate_size
  xt = xt + _dense_t(out.T, p["o_w"], p["o_b"])  # H R
  gu = _dense_t(rms_norm(xt, p["post_attn_norm"], cfg.rms_norm_eps, axis=0), p["gate_up_w"],
                p["gate_up_b"])  # 2F R
  return xt + _dense_t(jax.nn.silu(gu[:f]) * gu[f:], p["down_w"], p["down_b"])  # H R


def _softmax(scores: jax.Array, visible: jax.Array, dt) -> jax.Array:
  """softmax of float32 scores over the last axis, finfo.min where not visible (as forward)."""
  neg = jnp.finfo(jnp.float32).min
  return jax.nn.softmax(jnp.where(visible, scores.astype(jnp.float32), neg), axis=-1).astype(dt)


def _head(cfg: ModelConfig, dparams: dict, xt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(hidden [B, H], float32 logits [B, V]) of the residual stream xt [H, B]."""
  hidden = rms_norm(xt, dparams["final_norm"][:, None], cfg.rms_norm_eps, axis=0)  # H B
  logits = dparams["head"].astype(jnp.float32) @ hidden.astype(jnp.float32)  # V B
  # The barrier keeps XLA from folding the transpose into the product: dot(h, E^T)
  # is a plain Eigen dot on CPU, ~2x slower than this one (measured).
  return hidden.T, mask_suppressed(cfg, jax.lax.optimization_barrier(logits).T)


def prefill(cfg: ModelConfig, dparams: dict, embeds: jax.Array, positions: jax.Array,
            mask: jax.Array, max_len: int) -> tuple[jax.Array, jax.Array, dict]:
  """A left-padded prompt into a fresh cache of `max_len` slots (`forward(..., fresh_cache=True)`).

  embeds [B, P, H], positions [B, P], mask [B, P] (1 on real tokens) -> (hidden [B, H],
  float32 logits [B, V]) of the last position P-1, and the decode cache (index P).
  """
  dt = cfg.jnp_dtype
  b, p, h = embeds.shape
  n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  mask = mask.astype(bool)
  visible = (mask[:, None, :] & jnp.tril(jnp.ones((p, p), bool)))[:, None, None]  # B 1 1 P P
  cos, sin = rope_tables(positions, rope_inv_freq(cfg), dt)  # B P D
  cos, sin = cos[:, :, None], sin[:, :, None]  # B P 1 D
  xt = embeds.astype(dt).reshape(b * p, h).T  # H BP
  ks, vs = [], []
  for lp in dparams["layers"]:
    q, key, val = _qkv(cfg, lp, xt, cos, sin)  # B P N D, B P K D, B P K D
    ks.append(jnp.transpose(key, (0, 2, 3, 1)))  # B K D P
    vs.append(jnp.transpose(val, (0, 2, 1, 3)))  # B K P D
    sc = jnp.einsum("bpkgd,bkdq->bkgpq", q.reshape(b, p, k, n // k, d), ks[-1]) * (d ** -0.5)
    out = jnp.einsum("bkgpq,bkqd->bpkgd", _softmax(sc, visible, dt), vs[-1])  # B P K G D
    xt = _attn_out_mlp(cfg, lp, xt, out.reshape(b * p, n * d))  # H BP
  hidden, logits = _head(cfg, dparams, xt.reshape(h, b, p)[:, :, -1])
  cache = {"k": tuple(ks), "v": tuple(vs), "mask": mask, "index": jnp.asarray(p, jnp.int32)}
  return hidden, logits, grow(cfg, cache, max_len)


def step(cfg: ModelConfig, dparams: dict, x: jax.Array, positions: jax.Array,
         cache: dict) -> tuple[jax.Array, jax.Array, dict]:
  """One position: x [B, H] at positions [B] -> (hidden [B, H], float32 logits [B, V], cache).

  The residual stream is carried feature-major, xt [H, B], so every weight
  product is W [out, in] @ xt [in, B]: on CPU ~10% faster than x @ W at B = 64
  and ~35% at B = 8 (XNNPACK, measured), and gate/up split into row blocks.
  """
  dt = cfg.jnp_dtype
  b = x.shape[0]
  n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  index = cache["index"]
  mask = jax.lax.dynamic_update_slice(cache["mask"], jnp.ones((b, 1), bool), (0, index))  # B S
  visible = mask[:, None, None, :]  # B 1 1 S
  # RoPE cos/sin looked up, not computed: XLA fuses cos/sin into every layer's q
  # and k fusions and evaluates them per head (measured ~0.5 ms of a b64 CPU step).
  cos, sin = cache["cos"][positions][:, None], cache["sin"][positions][:, None]  # B 1 D
  xt = x.astype(dt).T  # H B
  ks, vs = list(cache["k"]), list(cache["v"])
  for l, lp in enumerate(dparams["layers"]):
    q, key, val = _qkv(cfg, lp, xt, cos, sin)  # B N D, B K D, B K D
    ks[l] = jax.lax.dynamic_update_slice(ks[l], key[..., None].astype(ks[l].dtype),
                                         (0, 0, 0, index))  # B K D S
    vs[l] = jax.lax.dynamic_update_slice(vs[l], val[:, :, None].astype(vs[l].dtype),
                                         (0, 0, index, 0))  # B K S D
    sc = jnp.einsum("bkgd,bkds->bkgs", q.reshape(b, k, n // k, d), ks[l].astype(dt)) * (d ** -0.5)
    out = jnp.einsum("bkgs,bksd->bkgd", _softmax(sc, visible, dt), vs[l].astype(dt))  # B K G D
    xt = _attn_out_mlp(cfg, lp, xt, out.reshape(b, n * d))  # H B
  hidden, logits = _head(cfg, dparams, xt)
  return hidden, logits, dict(cache, k=tuple(ks), v=tuple(vs), mask=mask, index=index + 1)
