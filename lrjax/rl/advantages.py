"""Group-relative advantage estimators (outcome rewards, one scalar per sample).

Batch layout: B = P * G rows, consecutive groups of G = `group_size` samples of
the same prompt (rows [p*G, (p+1)*G) belong to prompt p). Every estimator in
`ADVANTAGES` has the signature

    fn(rewards [B] f32, group_size: int, *, eps: float = 1e-4,
       valid: [B] bool | None = None, exclude_invalid_from_stats: bool = False,
       **kw) -> advantages [B] f32

`valid` is Latent-GRPO's invalid-sample masking (arXiv 2604.27998; a response
that hit the length limit is invalid): invalid rows get A = 0, and with
`exclude_invalid_from_stats=True` they are also left out of the group mean and
std. A group whose statistics rows all have the same reward (including a group
with at most one statistics row) gives A = 0 exactly for all its rows: it
carries no group-relative signal. (The official Latent-GRPO/verl code instead
uses mean 0, std 1 for a singleton group, i.e. A = r; lrjax does not.)

An estimator that is only meaningful with several samples per prompt declares
`fn.min_group_size` (2 for the group-relative ones here); the config
validation (`lrjax.validate`) refuses a smaller `rl.group_size`.

`first_token_selection` and `first_token_advantages` implement Latent-GRPO's
optimal correct-path first-token selection on top of any estimator.

Shape legend: B batch rows, P prompts, G group size, T response positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.registry import Registry

ADVANTAGES = Registry("advantage estimator")


def _grouped(x: jax.Array, group_size: int) -> jax.Array:
  """[B] -> [P, G], checking that B is a multiple of G."""
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  if x.ndim != 1 or x.shape[0] % group_size:
    raise ValueError(f"expected a [B] array with B a multiple of group_size={group_size}, "
                     f"got shape {x.shape}")
  return x.reshape(-1, group_size)


def _centered_and_std(rewards: jax.Array, group_size: int, valid: jax.Array | None,
                      exclude_invalid_from_stats: bool):
  """Group-centred rewards, unbiased group std and the valid mask, all [P, G].

  Statistics run over the rows of `stats` (all rows, or only the valid ones):
      n = Σ_stats 1,  μ = (1/n) Σ_stats r,  σ = sqrt(Σ_stats (r − μ)² / (n − 1)).
  Groups whose statistics rows are all equal (or n ≤ 1) get centred value 0 and
  σ = 0 exactly.
  """
  r = _grouped(rewards.astype(jnp.float32), group_size)  # P G
  ok = (jnp.ones(r.shape, bool) if valid is None
        else _grouped(jnp.asarray(valid).astype(bool), group_size))  # P G
  stats = ok if exclude_invalid_from_stats else jnp.ones(r.shape, bool)  # P G
  n = stats.sum(-1, keepdims=True).astype(jnp.float32)  # P 1
  mean = jnp.where(stats, r, 0.0).sum(-1, keepdims=True) / jnp.maximum(n, 1.0)  # P 1
  dev = jnp.where(stats, r - mean, 0.0)  # P G
  var = (dev * dev).sum(-1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)  # P 1, ddof = 1
  hi = jnp.where(stats, r, -jnp.inf).max(-1, keepdims=True)  # P 1
  lo = jnp.where(stats, r, jnp.inf).min(-1, keepdims=True)  # P 1
  flat = (hi == lo) | (n <= 1.0)  # P 1: no group-relative signal
  centered = jnp.where(flat, 0.0, r - mean)  # P G
  std = jnp.where(flat, 0.0, jnp.sqrt(var))  # P 1
  return centered, std, ok


@ADVANTAGES.register("grpo")
def grpo(rewards: jax.Array, group_size: int, *, eps: float = 1e-4,
         valid: jax.Array | None = None, exclude_invalid_from_stats: bool = False,
         **kw) -> jax.Array:
  """GRPO outcome advantages, group-normalised with the unbiased std. [B] -> [B]

      A_i = (r_i − mean_g r) / (std_g r + eps),   std with ddof = 1

  (DeepSeekMath, arXiv 2402.03300, §4.1.2; ddof = 1 as torch.std in TRL /
  tunix; eps = 1e-4 as HRPO, arXiv 2505.18454.) Invalid rows (`valid` False)
  get A = 0 (Latent-GRPO, arXiv 2604.27998). All-equal groups give A = 0.
  """
  del kw
  centered, std, ok = _centered_and_std(rewards, group_size, valid, exclude_invalid_from_stats)
  denom = std + eps  # P 1; 0 only for a flat group with eps = 0, whose centred values are 0
  adv = centered / jnp.where(denom > 0, denom, 1.0)  # P G
  return jnp.where(ok, adv, 0.0).reshape(-1)


grpo.min_group_size = 2  # a group of one has no group-relative signal (A = 0)


@ADVANTAGES.register("grpo_no_std")
def grpo_no_std(rewards: jax.Array, group_size: int, *, eps: float = 1e-4,
                valid: jax.Array | None = None, exclude_invalid_from_stats: bool = False,
                **kw) -> jax.Array:
  """Dr. GRPO advantages, mean-centred without std division. [B] -> [B]

      A_i = r_i − mean_g r

  (Dr. GRPO, "Understanding R1-Zero-Like Training", arXiv 2503.20783.) `eps`
  is accepted for a uniform signature and unused. Invalid rows get A = 0.
  """
  del eps, kw
  centered, _, ok = _centered_and_std(rewards, group_size, valid, exclude_invalid_from_stats)
  return jnp.where(ok, centered, 0.0).reshape(-1)


grpo_no_std.min_group_size = 2


def seq_logp_mean(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """Length-normalised sequence log-prob (1/|y_b|) Σ_t logp_{b,t} m_{b,t}. [B, T] -> [B]

  Rows with no valid token give 0. Masked positions may hold anything (even
  −inf): they are selected away, not multiplied.
  """
  m = mask.astype(bool)  # B T
  total = jnp.where(m, logp.astype(jnp.float32), 0.0).sum(-1)  # B
  return total / jnp.maximum(m.sum(-1), 1).astype(jnp.float32)


def first_token_selection(advantages: jax.Array, seq_logp_mean: jax.Array,
                          group_size: int) -> jax.Array:
  """Latent-GRPO's optimal correct-path first-token selection. [B], [B] -> [B]

  (Latent-GRPO, arXiv 2604.27998.) Returns the advantage to use at the *first*
  response position of every row. For each group g with positives
  P_g = {i : A_i > 0} ≠ ∅, let i* = argmax_{i ∈ P_g} seq_logp_mean_i (the
  length-normalised old log-prob; ties -> lowest index, as np.argmax):

      A^first_i = A_i if i = i*, else 0      (groups with P_g ≠ ∅)
      A^first_i = A_i                        (groups with P_g = ∅)

  Non-finite log-probs of positive rows rank lowest but still make the row a
  candidate.
  """
  a = _grouped(advantages.astype(jnp.float32), group_size)  # P G
  lp = _grouped(seq_logp_mean.astype(jnp.float32), group_size)  # P G
  big = jnp.finfo(jnp.float32).max
  lp = jnp.nan_to_num(lp, nan=-big, posinf=big, neginf=-big)
  pos = a > 0  # P G
  winner = jnp.argmax(jnp.where(pos, lp, -jnp.inf), axis=-1)  # P
  keep = jnp.arange(group_size)[None, :] == winner[:, None]  # P G
  out = jnp.where(pos.any(-1, keepdims=True), jnp.where(keep, a, 0.0), a)  # P G
  return out.reshape(-1)


def first_token_advantages(advantages: jax.Array, first_pos_advantages: jax.Array,
                           mask: jax.Array) -> jax.Array:
  """Per-token advantages [B, T]: A_b everywhere, A^first_b at the first valid position.

  The first response position of row b is the first t with mask[b, t] (as in
  the Latent-GRPO code, `response_mask.argmax(dim=1)`); rows without a valid
  position are returned as A_b (they are masked out of every loss anyway).
  """
  m = mask.astype(bool)  # B T
  first = jnp.argmax(m, axis=-1)  # B
  at_first = (jnp.arange(m.shape[-1])[None, :] == first[:, None]) & m  # B T
  return jnp.where(at_first, first_pos_advantages.astype(jnp.float32)[:, None],
                   advantages.astype(jnp.float32)[:, None])
