"""DLR's assistant: features a_t of a latent chain and the Gaussian placed on them.

DeepLatent Reasoning (DLR, arXiv 2601.17275) lets a lightweight assistant read
the question and emit a latent chain z_1 .. z_T that a frozen main model then
reads. The paper leaves the assistant's architecture and the chain's density
open; lrjax's choice (ours), in the style of SoftCoT / CoLaR:

    a_t   = features of the question and of the chain so far (autoregressive)
    μ_t   = s · (W_up a_t + b_up)                       [H] (the main model's width)
    log σ_t = log s + clip(W_σ a_t + b_σ, lo, hi)       [H]
    z_t   = μ_t + σ_t · ε_t,  ε_t ~ N(0, I)              (z_t = μ_t when greedy)

with s the RMS of the main model's embedding table (so chains live at the scale
of the inputs it was trained on) and the Gaussian placed *after* the
projection to the main model's width, so W_up, W_σ and everything below them
get a policy gradient. Two kinds of features:

* `decoder` (an lrjax decoder preset of its own, e.g. `tiny-assistant`): it
  reads the question's ids with its own embedding table and then, at chain step
  t + 1, the input W_in (z_t / s); a_t is its last hidden state (after the
  final norm). Its KV cache is carried by the chain's `lax.scan`.
* `mlp` (fast tests): a_t = MLP(pool + P_t + W_in (z_{t-1} / s)), with pool the
  mean of the main model's prompt hidden states and P_t a learned position.

Parameters (float32 dict under params["heads"]["assistant"]):
{"net": decoder params | {"pos", "dense_0", "dense_1"}, "in": {"kernel"},
"up": {"kernel", "bias"}, "log_sigma": {"kernel", "bias"}}.

`chain` samples the whole chain (its own loop, before the main model reads
it); `replay_features` recomputes a_0 .. a_{T-1} teacher-forced from stored
chains (one forward, the stored z under stop_gradient). Shape legend: B rows,
P prompt, T chain length, H main width, A assistant width.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrjax.model import decode
from lrjax.model.api import embed, forward, init, positions_from_mask
from lrjax.model.config import ModelConfig
from lrjax.model.presets import preset
from lrjax.sampling import if_greedy

KINDS = ("decoder", "mlp")
MLP_WIDTH = 128
sg = jax.lax.stop_gradient


class Chain(NamedTuple):
  """A sampled chain (float32): z = μ + σ·ε."""
  z: jax.Array  # B T H
  eps: jax.Array  # B T H, 0 when greedy
  mu: jax.Array  # B T H
  log_sigma: jax.Array  # B T H


def kind_of(name: str) -> str:
  """`mlp`, or `decoder` for a model preset name."""
  return "mlp" if name == "mlp" else "decoder"


def assistant_config(name: str, main_cfg: ModelConfig) -> ModelConfig:
  """The decoder preset `name` with the main model's vocabulary (it reads the same ids)."""
  return preset(name, vocab_size=main_cfg.vocab_size, dtype="float32",
                pad_token_id=main_cfg.pad_token_id, eos_token_id=main_cfg.eos_token_id)


def embed_rms(main_params: dict) -> jax.Array:
  """s = sqrt(mean(E²)) of the main model's embedding table (a constant). []"""
  e = sg(main_params["embed"]["embedding"]).astype(jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.square(e)))


def _dense(key, d_in: int, d_out: int, scale: float | None = None) -> dict:
  s = 1.0 / np.sqrt(d_in) if scale is None else scale
  return {"kernel": s * jax.random.normal(key, (d_in, d_out), jnp.float32),
          "bias": jnp.zeros((d_out,), jnp.float32)}


def init_assistant(name: str, main_cfg: ModelConfig, num_latent: int, key: jax.Array,
                   sigma_init: float = 0.5) -> dict:
  """Fresh assistant parameters: W_up ~ N(0, 1/A) (μ starts at the embedding scale), W_σ = 0,
  b_σ = log σ_0 (σ starts at σ_0 · s everywhere), W_in ~ N(0, 1/H)."""
  h = main_cfg.hidden_size
  k_net, k_in, k_up, k_p, k_0, k_1 = jax.random.split(key, 6)
  if kind_of(name) == "decoder":
    acfg = assistant_config(name, main_cfg)
    net, width = jax.tree.map(lambda x: x.astype(jnp.float32), init(acfg, k_net)), acfg.hidden_size
  else:
    width = MLP_WIDTH
    net = {"pos": 0.02 * jax.random.normal(k_p, (max(num_latent, 1), h), jnp.float32),
           "dense_0": _dense(k_0, h, width), "dense_1": _dense(k_1, width, width)}
  return {"net": net, "in": {"kernel": _dense(k_in, h, width if kind_of(name) == "decoder"
                                               else h)["kernel"]},
          "up": _dense(k_up, width, h),
          "log_sigma": {"kernel": jnp.zeros((width, h), jnp.float32),
                        "bias": jnp.full((h,), np.log(sigma_init), jnp.float32)}}


def gaussian(head: dict, a: jax.Array, scale: jax.Array, lo: float,
             hi: float) -> tuple[jax.Array, jax.Array]:
  """(μ, log σ) [..., H] of features a [..., A]."""
  a = a.astype(jnp.float32)
  mu = scale * (a @ head["up"]["kernel"] + head["up"]["bias"])
  raw = a @ head["log_sigma"]["kernel"] + head["log_sigma"]["bias"]
  return mu, jnp.log(scale) + jnp.clip(raw, lo, hi)


def _mlp(net: dict, u: jax.Array) -> jax.Array:
  """a = gelu(W_1 gelu(W_0 u)) [..., A] of u [..., H]."""
  x = jax.nn.gelu(u @ net["dense_0"]["kernel"] + net["dense_0"]["bias"])
  return jax.nn.gelu(x @ net["dense_1"]["kernel"] + net["dense_1"]["bias"])


def _pool(main_cfg: ModelConfig, main_params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the main model's last hidden states over the real prompt tokens. [B, H]"""
  m = mask.astype(bool)
  out = forward(main_cfg, sg(main_params), embed(main_cfg, sg(main_params), ids),
                positions_from_mask(m), m)
  w = m.astype(jnp.float32)[..., None]  # B P 1
  return sg((out.hidden.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0))


def _feed(head: dict, z: jax.Array, scale: jax.Array) -> jax.Array:
  """The assistant's input for a chain element: W_in (z / s). [..., A or H]"""
  return (z / scale) @ head["in"]["kernel"]


def chain(name: str, main_cfg: ModelConfig, head: dict, main_params: dict, ids: jax.Array,
          mask: jax.Array, num_latent: int, key: jax.Array, greedy, lo: float,
          hi: float) -> Chain:
  """Samples a chain of `num_latent` latents for left-padded prompts ids/mask [B, P]
  (step t draws ε_t from fold_in(key, t)); greedy (a bool, or traced: `if_greedy`): z = μ."""
  b, p = ids.shape
  h = main_cfg.hidden_size
  scale = embed_rms(main_params)
  m = mask.astype(bool)
  plen = jnp.sum(m, axis=-1, dtype=jnp.int32)  # B
  if kind_of(name) == "decoder":
    acfg = assistant_config(name, main_cfg)
    dp = decode.prepare(acfg, head["net"])
    a0, _, cache = decode.prefill(acfg, dp, embed(acfg, head["net"], ids), positions_from_mask(m),
                                  m, p + num_latent)

    def advance(carry, z, t):
      a, _, cache = decode.step(acfg, dp, _feed(head, z, scale), plen + t, carry[1])
      return (a, cache)
  else:
    pool = _pool(main_cfg, main_params, ids, m)  # B H
    a0, cache = _mlp(head["net"], pool + head["net"]["pos"][0]), pool

    def advance(carry, z, t):
      pos = head["net"]["pos"][jnp.minimum(t + 1, head["net"]["pos"].shape[0] - 1)]
      return (_mlp(head["net"], carry[1] + pos + _feed(head, z, scale)), carry[1])

  def body(carry, t):
    mu, log_sigma = gaussian(head, carry[0], scale, lo, hi)  # B H, B H
    eps = if_greedy(greedy, lambda: jnp.zeros((b, h), jnp.float32),
                    lambda: jax.random.normal(jax.random.fold_in(key, t), (b, h), jnp.float32))
    z = mu + jnp.exp(log_sigma) * eps  # B H
    return advance(carry, z, t), Chain(z, eps, mu, log_sigma)

  _, out = jax.lax.scan(body, (a0, cache), jnp.arange(num_latent, dtype=jnp.int32))
  return Chain(*(jnp.swapaxes(x, 0, 1) for x in out))  # each B T H


def replay_features(name: str, main_cfg: ModelConfig, head: dict, main_params: dict,
                    ids: jax.Array, mask: jax.Array, z: jax.Array) -> jax.Array:
  """a_0 .. a_{T-1} [B, T, A] of stored chains z [B, T, H] (under stop_gradient), teacher-forced:
  one forward over [question, W_in z_0 / s, .., W_in z_{T-2} / s]."""
  scale = embed_rms(main_params)
  m = mask.astype(bool)
  b, p = ids.shape
  t = z.shape[1]
  feeds = _feed(head, sg(z[:, :t - 1]).astype(jnp.float32), scale)  # B T-1 A|H
  if kind_of(name) == "decoder":
    acfg = assistant_config(name, main_cfg)
    emb = jnp.concatenate([embed(acfg, head["net"], ids), feeds.astype(acfg.jnp_dtype)], axis=1)
    plen = jnp.sum(m, axis=-1, dtype=jnp.int32)  # B
    pos = jnp.concatenate([positions_from_mask(m),
                           plen[:, None] + jnp.arange(t - 1, dtype=jnp.int32)[None]], axis=1)
    full = jnp.concatenate([m, jnp.ones((b, t - 1), bool)], axis=1)  # B P+T-1
    return forward(acfg, head["net"], emb, pos, full).hidden[:, p - 1:].astype(jnp.float32)
  pool = _pool(main_cfg, main_params, ids, m)  # B H
  prev = jnp.concatenate([jnp.zeros_like(feeds[:, :1]), feeds], axis=1)  # B T H
  pos = head["net"]["pos"][jnp.minimum(jnp.arange(t), head["net"]["pos"].shape[0] - 1)]  # T H
  return _mlp(head["net"], pool[:, None] + pos[None] + prev)
