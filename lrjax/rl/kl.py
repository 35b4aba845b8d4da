"""Per-token KL estimators between the policy and the frozen reference.

All take per-token log-probabilities of the *sampled* tokens under the current
policy (`new_logp`) and the reference (`ref_logp`), both [B, T], and return a
per-token estimate [B, T] of KL(π_θ || π_ref) (Schulman, "Approximating KL
divergence", 2020, http://joschu.net/blog/kl-approx.html). Masking and
aggregation are the caller's business (see `lrjax.rl.losses`). `rl.kl_estimator`
picks the estimator of the RL loss (default k3) and `rl.kl_clamp` > 0 clamps
its per-token value to [−c, c].

Shape legend: B batch, T response positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.registry import Registry

KL_ESTIMATORS = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(new_logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k1 = log π_θ − log π_ref = new − ref  (unbiased, can be negative). [B, T]"""
  return new_logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)


@KL_ESTIMATORS.register("k2")
def kl_k2(new_logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k2 = ½ (new − ref)²  (biased, non-negative). [B, T]"""
  d = new_logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
  return 0.5 * d * d


@KL_ESTIMATORS.register("k3")
def kl_k3(new_logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Schulman's k3, the "low-variance" KL of GRPO and HRPO. [B, T]

      KL_t = exp(ref_t − new_t) − (ref_t − new_t) − 1

  (DeepSeekMath / GRPO, arXiv 2402.03300, eq. 4; HRPO, arXiv 2505.18454.)
  Unbiased for KL(π_θ || π_ref) under samples of π_θ and ≥ 0 since e^x ≥ 1 + x.
  Computed as expm1(d) − d, d = ref − new, so that small |d| does not cancel
  catastrophically; the final max(·, 0) only removes rounding below zero.
  Gradient: d KL_t / d new_t = 1 − exp(ref_t − new_t).
  """
  d = ref_logp.astype(jnp.float32) - new_logp.astype(jnp.float32)
  return jnp.maximum(jnp.expm1(d) - d, 0.0)
