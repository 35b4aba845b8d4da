"""Qwen2 / Llama decoder in Flax Linen, used purely.

The forward reads **input embeddings** (latent reasoning feeds hidden states
back as inputs), explicit positions and a key-padding mask, and an optional KV
cache that is a plain pytree argument and return value:

    cache = {"k": [L, B, S, K, D], "v": [L, B, S, K, D],
             "mask": [B, S] bool (slot holds a real token),
             "index": int32 [] (next slot to write)}

Layers are stacked with `nn.scan` (parameters carry a leading layer axis), so
a 28-layer model compiles as fast as a 2-layer one.

Shape legend: B batch, T new positions, S cache slots, H hidden, N query
heads, K key/value heads, G = N // K, D head dim, F MLP width, V vocab.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lrjax.model.config import ModelConfig, mask_suppressed
from lrjax.parallel import constrain_rows

INIT_STD = 0.02
_INIT = nn.initializers.normal(stddev=INIT_STD)


def _init_outside_scan(key, shape, dtype=jnp.float32):
  """N(0, INIT_STD) for the tables outside the scanned blocks, with the same bits whether
  `init` runs eagerly or under `jax.jit` (the barrier keeps XLA from folding the std into
  the normal's own scale, which changes the last bit of a quarter of the values)."""
  return jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype)) * INIT_STD


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [D/2] of RoPE, default or `llama3`-scaled (as in HF)."""
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
  scaling = dict(cfg.rope_scaling)
  if scaling.get("rope_type", "default") == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray,
                dtype) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) [..., D] of RoPE angles positions [...] x inv_freq, in `dtype`."""
  freqs = positions[..., None].astype(jnp.float32) * inv_freq  # ... D/2
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # ... D
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin (HF's layout); cos/sin broadcast against x [..., D]."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates x [B, T, N, D] by positions [B, T] (HF's rotate-half layout)."""
  cos, sin = rope_tables(positions, inv_freq, x.dtype)  # B T D
  return rotate(x, cos[:, :, None, :], sin[:, :, None, :])


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, axis: int = -1) -> jax.Array:
  """scale * (x / sqrt(mean(x^2) + eps)) over `axis` (the features), the statistics in float32,
  the result in x's dtype."""
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=axis, keepdims=True) + eps)
  return scale.astype(x.dtype) * y.astype(x.dtype)


class RMSNorm(nn.Module):
  """y = w * (x / sqrt(mean(x^2) + eps)), the statistics in float32; w stored in param_dtype."""
  eps: float
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    return rms_norm(x, scale, self.eps)


def _dense(features, use_bias, cfg, name):
  return nn.Dense(features, use_bias=use_bias, dtype=cfg.jnp_dtype,
                  param_dtype=cfg.param_jnp_dtype, kernel_init=_INIT, name=name)


class Attention(nn.Module):
  """Grouped-query attention with RoPE over [cached keys, new keys].

  The layer never writes the cache: it attends to the old cache slice
  (read-only, `old_mask` marks its filled slots) and to the T new positions
  (causal among themselves), and returns the new keys/values; the decoder
  writes them for all layers at once after the layer scan. Keeping the
  update out of the scan lets XLA update the cache in place inside the
  rollout's while_loop instead of copying it every step.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, new_mask, old_kv, old_mask):
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    b, t, _ = x.shape
    n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = n // k
    q = _dense(n * d, cfg.qkv_bias, cfg, "q")(x).reshape(b, t, n, d)
    key = _dense(k * d, cfg.qkv_bias, cfg, "k")(x).reshape(b, t, k, d)
    val = _dense(k * d, cfg.qkv_bias, cfg, "v")(x).reshape(b, t, k, d)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions, inv_freq).reshape(b, t, k, g, d)  # B T K G D
    key = apply_rope(key, positions, inv_freq)  # B T K D
    neg = jnp.finfo(jnp.float32).min

    def scores_of(keys, mask):  # keys B S K D, mask B T S -> B K G T S (float32)
      sc = jnp.einsum("btkgd,bskd->bkgts", q, keys.astype(dt)) * (d ** -0.5)
      return jnp.where(mask[:, None, None], sc.astype(jnp.float32), neg)

    scores = scores_of(key, new_mask)  # B K G T T
    if old_kv is not None:
      old = scores_of(old_kv[0], jnp.broadcast_to(old_mask[:, None, :], (b, t, old_mask.shape[1])))
      scores = jnp.concatenate([old, scores], axis=-1)  # B K G T S+T
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("bkgts,bskd->btkgd", probs[..., -t:], val.astype(dt))
    if old_kv is not None:
      out = out + jnp.einsum("bkgts,bskd->btkgd", probs[..., :-t], old_kv[1].astype(dt))
    out = out.reshape(b, t, n * d)
    return _dense(cfg.hidden_size, cfg.o_bias, cfg, "o")(out), (key, val)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    gate = _dense(cfg.intermediate_size, cfg.mlp_bias, cfg, "gate")(x)
    up = _dense(cfg.intermediate_size, cfg.mlp_bias, cfg, "up")(x)
    return _dense(cfg.hidden_size, cfg.mlp_bias, cfg, "down")(nn.silu(gate) * up)


class Block(nn.Module):
  """Pre-norm decoder block; the scan carry is the residual stream."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, old_kv, positions, new_mask, old_mask):
    cfg, pdt = self.cfg, self.cfg.param_jnp_dtype
    x = constrain_rows(x)  # B T H, rows over (data, fsdp) under a mesh
    h, kv = Attention(cfg, name="attn")(
        RMSNorm(cfg.rms_norm_eps, pdt, name="input_norm")(x), positions, new_mask, old_kv, old_mask)
    x = x + h
    x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, pdt, name="post_attn_norm")(x))
    return x, kv


class LMHead(nn.Module):
  """Untied output projection [H, V]; the product is taken in float32."""
  vocab_size: int
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, h):
    kernel = self.param("kernel", _init_outside_scan, (h.shape[-1], self.vocab_size),
                        self.param_dtype)
    return h.astype(jnp.float32) @ kernel.astype(jnp.float32)


class Decoder(nn.Module):
  """Embedding table, scanned blocks, final norm and (untied) LM head."""
  cfg: ModelConfig

  def setup(self):
    cfg, dt, pdt = self.cfg, self.cfg.jnp_dtype, self.cfg.param_jnp_dtype
    self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt,
                          embedding_init=_init_outside_scan, name="embed")
    block = nn.remat(Block, prevent_cse=False) if cfg.remat else Block
    self.layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
        unroll=cfg.num_layers if cfg.num_layers <= 4 else 1,
    )(cfg, name="layers")
    self.final_norm = RMSNorm(cfg.rms_norm_eps, pdt, name="final_norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = LMHead(cfg.vocab_size, pdt, name="lm_head")

  def embed_ids(self, ids):
    return self.embed(ids)

  def head(self, hidden):
    """float32 logits from final hidden states (float32 matmul for RL log-probs)."""
    h = hidden.astype(jnp.float32)
    if self.cfg.tie_word_embeddings:
      return mask_suppressed(self.cfg, h @ self.embed.embedding.astype(jnp.float32).T)
    return mask_suppressed(self.cfg, self.lm_head(h))

  def __call__(self, embeds, positions, attention_mask, cache=None, fresh_cache=False):
    """embeds [B,T,H], positions [B,T], attention_mask [B,T] -> (hidden, logits, cache).

    attention_mask [B,T,T] (no cache) is used as is: keep[b, query, key], no causal mask added.

    `fresh_cache=True` (static) says the cache is empty: the new positions are
    written into it but not attended against it (a prefill skips S masked slots).
    """
    b, t, _ = embeds.shape
    attention_mask = attention_mask.astype(bool)
    if attention_mask.ndim == 3:  # B T T: a full keep[query, key] mask (Latent-SFT's)
      if cache is not None:
        raise ValueError("a [B, T, T] attention mask cannot be used with a KV cache")
      new_mask = attention_mask
    else:
      causal = jnp.tril(jnp.ones((t, t), bool))
      new_mask = attention_mask[:, None, :] & causal[None]  # B T T
    if cache is None or fresh_cache:
      old_kv, old_mask = None, None
    else:  # filled slots are exactly the ones before `index` that hold real tokens
      old_kv, old_mask = (cache["k"], cache["v"]), cache["mask"]
    if self.is_initializing():  # untied models never read the table in forward
      self.embed(jnp.zeros((1, 1), jnp.int32))
    x = embeds.astype(self.cfg.jnp_dtype)
    x, (k_new, v_new) = self.layers(x, old_kv, positions, new_mask, old_mask)  # L B T K D
    hidden = self.final_norm(x)
    logits = self.head(hidden)
    new_cache = None
    if cache is not None:
      index = cache["index"]
      write = lambda buf, new: jax.lax.dynamic_update_slice(  # noqa: E731
          buf, new.astype(buf.dtype), (0, 0, index, 0, 0))
      new_cache = {"k": write(cache["k"], k_new), "v": write(cache["v"], v_new),
                   "mask": jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index)),
                   "index": index + t}
    return hidden, logits, new_cache
