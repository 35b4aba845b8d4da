"""Pure functions over (cfg, params): init, embed, forward, logits, KV cache.

Every function takes the static `ModelConfig` first and the parameter pytree
second; none holds state. `forward` is the one entry point the rollout, the
SFT scan and the RL learner share.

Parameters are stored in `cfg.param_dtype` and computed with in `cfg.dtype`:
`compute_params` casts them (float32 master weights under bfloat16 compute); `forward`
and `decode.prepare` call it, and the rollout and the learner's replay call it once at
their start, so one cast per step serves every position and the gradient of a loss
reaches the stored (master) parameters.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lrjax.model import lora
from lrjax.model.config import ModelConfig
from lrjax.model.transformer import Decoder


class Output(NamedTuple):
  hidden: jax.Array  # [B, T, H] last hidden states, after the final norm
  logits: jax.Array  # [B, T, V] float32
  cache: dict | None  # the updated KV cache (None when none was given)


@functools.lru_cache(maxsize=None)
def module(cfg: ModelConfig) -> Decoder:
  return Decoder(cfg)


def compute_params(cfg: ModelConfig, params: dict) -> dict:
  """`params` with every floating leaf in the compute dtype `cfg.dtype` (leaves already in
  it are passed through: the identity when the parameters are stored in `cfg.dtype`)."""
  dt = cfg.jnp_dtype

  def cast(x):
    return x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dt else x
  return jax.tree.map(cast, params)


@functools.partial(jax.jit, static_argnums=0)
def init(cfg: ModelConfig, key: jax.Array) -> dict:
  """Random parameters (N(0, 0.02) weights, unit norms, zero biases) in cfg.param_dtype.

  One compiled program (flax's eager init dispatches each of the model's ops on its own);
  the values are the eager init's, bit for bit."""
  ids = jnp.zeros((1, 1), jnp.int32)
  dummy = jnp.zeros((1, 1, cfg.hidden_size), cfg.jnp_dtype)
  variables = module(cfg).init(key, dummy, ids, jnp.ones((1, 1), bool))
  return variables["params"]


def embed(cfg: ModelConfig, params: dict, ids: jax.Array) -> jax.Array:
  """Token embeddings E[ids]: [B, T] -> [B, T, H]."""
  return params["embed"]["embedding"][ids]


def lm_logits(cfg: ModelConfig, params: dict, hidden: jax.Array) -> jax.Array:
  """float32 logits from final hidden states [..., H] -> [..., V] (the weights in the compute
  dtype, then the product in float32)."""
  return module(cfg).apply({"params": compute_params(cfg, lora.base(params))}, hidden,
                           method=Decoder.head)


def forward(cfg: ModelConfig, params: dict, embeds: jax.Array, positions: jax.Array,
            attention_mask: jax.Array, cache: dict | None = None,
            fresh_cache: bool = False) -> Output:
  """One decoder pass over input embeddings.

  Args:
    embeds: [B, T, H] input embeddings.
    positions: [B, T] int RoPE positions.
    attention_mask: [B, T] 1 for real positions, 0 for padding (causal attention), or
      [B, T, T] bool keep[b, query, key] used as is (no cache).
    cache: optional KV cache (see `init_cache`); the new positions are written
      at slots [cache.index, cache.index + T).
    fresh_cache: (static) the cache is empty, so it is written but not read.

  LoRA adapters in `params` are merged first (`lora.merged`), then the weights are cast
  to the compute dtype (`compute_params`).
  """
  hidden, logits_, new_cache = module(cfg).apply(
      {"params": compute_params(cfg, lora.merged(cfg, params))}, embeds, positions,
      attention_mask, cache, fresh_cache)
  return Output(hidden, logits_, new_cache)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """HF `generate` positions: cumsum(mask) - 1, clipped at 0 on left padding."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def logits(cfg: ModelConfig, params: dict, ids: jax.Array,
           attention_mask: jax.Array | None = None) -> jax.Array:
  """Token ids [B, T] (left-padded, mask 0 on padding) -> float32 logits [B, T, V]."""
  if attention_mask is None:
    attention_mask = jnp.ones(ids.shape, jnp.int32)
  out = forward(cfg, params, embed(cfg, params, ids), positions_from_mask(attention_mask),
                attention_mask)
  return out.logits


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache with `max_len` slots per row."""
  dtype = dtype or cfg.jnp_dtype
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "mask": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}


@functools.partial(jax.jit, static_argnums=(0, 4))
def prefill(cfg: ModelConfig, params: dict, ids: jax.Array, attention_mask: jax.Array,
            max_len: int) -> Output:
  """Runs a left-padded prompt [B, T] into a fresh cache of `max_len` slots."""
  cache = init_cache(cfg, ids.shape[0], max_len)
  return forward(cfg, params, embed(cfg, params, ids), positions_from_mask(attention_mask),
                 attention_mask, cache, fresh_cache=True)


@functools.partial(jax.jit, static_argnums=0, donate_argnames="cache")
def decode_step(cfg: ModelConfig, params: dict, embeds: jax.Array, positions: jax.Array,
                cache: dict) -> Output:
  """One cached step: embeds [B, 1, H] at positions [B, 1] -> logits [B, 1, V]."""
  mask = jnp.ones(embeds.shape[:2], bool)
  return forward(cfg, params, embeds, positions, mask, cache)
