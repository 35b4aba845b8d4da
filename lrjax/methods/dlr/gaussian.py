"""Diagonal-Gaussian chain densities, their KL and DLR's contrastive term.

DeepLatent Reasoning (DLR, arXiv 2601.17275) samples latent chains
T = (z_1 .. z_T), z_t ∈ R^d. With z_t ~ N(μ_t, diag σ_t²) (lrjax's reading,
`lrjax.methods.dlr.assistant`):

    log N(z; μ, σ)      = Σ_d −½((z − μ)/σ)² − log σ − ½ log 2π
    KL(N(μ,σ)‖N(μ',σ')) = Σ_d log(σ'/σ) + (σ² + (μ − μ')²) / (2σ'²) − ½

Both are used per dimension and averaged over T·d (`mean_logpdf`, `mean_kl`),
so their scale does not grow with the chain's size.

The contrastive term is the paper's Eq 8 over the G chains of one prompt, each
chain its own positive and the other chains negatives:

    L_cl = −(1/G) Σ_k log [ exp(s_kk) / Σ_j exp(s_kj) ]

with s_kj = ⟨c_k, c_j⟩ / √(T·d) (`dot`, the paper's raw dot product scaled by
lrjax) or cos(c_k, c_j) / τ (`cosine`), c_k the chain flattened to T·d. For G
identical chains every s_kj is equal and L_cl = log G; it falls as the chains
spread apart (a diversity term). Shape legend: B rows (G per group), T, d.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))
SIMILARITIES = ("dot", "cosine")


def logpdf(z: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """log N(z; μ, σ) per dimension (elementwise, float32)."""
  u = (z - mu) * jnp.exp(-log_sigma)
  return -0.5 * jnp.square(u) - log_sigma - HALF_LOG_2PI


def mean_logpdf(z: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """[..., T, d] -> [..., T]: the per-position mean over d of `logpdf`."""
  return jnp.mean(logpdf(z, mu, log_sigma), axis=-1)


def kl(mu: jax.Array, log_sigma: jax.Array, mu_ref: jax.Array,
       log_sigma_ref: jax.Array) -> jax.Array:
  """KL(N(μ, σ) ‖ N(μ', σ')) per dimension (elementwise, float32, ≥ 0)."""
  return (log_sigma_ref - log_sigma
          + (jnp.exp(2.0 * log_sigma) + jnp.square(mu - mu_ref)) * 0.5
          * jnp.exp(-2.0 * log_sigma_ref) - 0.5)


def similarities(chains: jax.Array, mode: str = "dot", temperature: float = 0.1) -> jax.Array:
  """s_kj of chains [..., G, T, d] -> [..., G, G] (see the module doc)."""
  c = chains.reshape(chains.shape[:-2] + (-1,))  # ... G Td
  c = c.astype(jnp.promote_types(c.dtype, jnp.float32))  # float32, or float64 as given
  if mode == "dot":
    return jnp.einsum("...kf,...jf->...kj", c, c) / jnp.sqrt(float(c.shape[-1]))
  if mode == "cosine":
    u = c / jnp.sqrt(jnp.sum(jnp.square(c), -1, keepdims=True) + 1e-12)
    return jnp.einsum("...kf,...jf->...kj", u, u) / temperature
  raise ValueError(f"unknown contrastive similarity {mode!r}; expected one of {SIMILARITIES}")


def contrastive(chains: jax.Array, group_size: int, mode: str = "dot",
                temperature: float = 0.1) -> jax.Array:
  """L_cl averaged over the prompts: chains [B, T, d] in groups of `group_size`
  consecutive rows (B = prompts · G). []"""
  b = chains.shape[0]
  if b % group_size:
    raise ValueError(f"{b} chains do not split into groups of {group_size}")
  g = chains.reshape((b // group_size, group_size) + chains.shape[1:])  # P G T d
  s = similarities(g, mode, temperature)  # P G G
  diag = jnp.diagonal(jax.nn.log_softmax(s, axis=-1), axis1=-2, axis2=-1)  # P G
  return -jnp.mean(diag)
