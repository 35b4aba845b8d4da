"""Group-relative advantage estimators (outcome rewards, one scalar per sample).

Batch layout: B = P * G rows, consecutive groups of G = `group_size` samples of
the same prompt (rows [p*G, (p+1)*G) belong to prompt p). Every estimator in
`ADVANTAGES` has the signature

    fn(rewards [B] f32, group_size: int, *, eps: float = 1e-4,
       valid: [B] bool | None = None, exclude_invalid_from_stats: bool = False,
       traj: Trajectory | None = None, old_logp: [B, T] | None = None,
       mask: [B, T] bool | None = None, **kw) -> advantages [B] or [B, T] f32

The learner passes the trajectory (`traj.truncated`, `traj.lengths`, spans,
records), the old per-position terms fixed before the first update
(`old_logp`) and the loss mask (`mask`); an estimator may use them and return
per-position advantages [B, T] (the losses take either shape). The registered
ones here return [B] and ignore them.

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

`compute_advantages(spec, rewards, ...)` is what the RL phase calls: the
estimator of `rl.advantage` with the config's switches (`AdvantageSpec`):
`rl.mask_truncated` (valid = not truncated), `rl.truncated_in_stats` (False:
exclude_invalid_from_stats) and `rl.first_token_selection`.

Shape legend: B batch rows, P prompts, G group size, T response positions.
"""
from __future__ import annotations

import dataclasses
from typing import Any

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


@ADVANTAGES.register("constant")
def constant(rewards: jax.Array, group_size: int, *, valid: jax.Array | None = None,
             **kw) -> jax.Array:
  """A_i = 1 for every (valid) row, whatever its reward. [B] -> [B]

  For objectives whose learning signal is in the scored terms themselves, not
  in an outcome advantage: Latent RL's value objective (arXiv 2512.11816,
  `lrjax.methods.latr.latent_rl`), one greedy rollout per prompt. Invalid rows get 0.
  """
  del group_size, kw
  ones = jnp.ones(rewards.shape, jnp.float32)
  return ones if valid is None else jnp.where(jnp.asarray(valid).astype(bool), ones, 0.0)


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


# --------------------------------------------------------------------------- the config path


@dataclasses.dataclass(frozen=True)
class AdvantageSpec:
  """The advantage settings of an RL run (`from_config(config.rl)`).

  estimator: a name in `ADVANTAGES` (`rl.advantage`); eps: `rl.adv_eps`.
  mask_truncated: rows that hit `rl.max_new` without eos are invalid: A = 0
    (Latent-GRPO's invalid-sample masking, arXiv 2604.27998).
  truncated_in_stats: with mask_truncated, whether the invalid rows still count
    in the group mean/std (True) or are excluded from them (False, Latent-GRPO's
    MATH script).
  first_token_selection: Latent-GRPO's first-token selection: at the first loss
    position only the best positive row of each group keeps its advantage.
  """
  estimator: str = "grpo"
  group_size: int = 8
  eps: float = 1e-4
  mask_truncated: bool = False
  truncated_in_stats: bool = True
  first_token_selection: bool = False

  @classmethod
  def from_config(cls, rl: Any) -> "AdvantageSpec":
    return cls(estimator=rl.advantage, group_size=int(rl.group_size), eps=rl.adv_eps,
               mask_truncated=bool(rl.mask_truncated),
               truncated_in_stats=bool(rl.truncated_in_stats),
               first_token_selection=bool(rl.first_token_selection))


def compute_advantages(spec: AdvantageSpec, rewards: jax.Array, traj: Any = None,
                       old_logp: jax.Array | None = None, ratio_mask: jax.Array | None = None,
                       loss_mask: jax.Array | None = None) -> jax.Array:
  """Advantages [B] (or [B, T]) of one rollout batch under `spec`.

  Args:
    rewards: [B] f32, groups of `spec.group_size` consecutive rows.
    traj: the batch's `Trajectory` (`truncated` is read for mask_truncated).
    old_logp: [B, T] old ratio terms, fixed before the first update.
    ratio_mask: [B, T] bool, where old_logp is defined (the rule's ratio positions).
    loss_mask: [B, T] bool, every position the loss covers (ratio | direct);
      its first True column per row is the row's first position.
  """
  valid = None
  if spec.mask_truncated:
    if traj is None:
      raise ValueError("mask_truncated needs the trajectory (traj.truncated)")
    valid = ~jnp.asarray(traj.truncated).astype(bool)  # B
  adv = ADVANTAGES.get(spec.estimator)(
      rewards, spec.group_size, eps=spec.eps, valid=valid,
      exclude_invalid_from_stats=spec.mask_truncated and not spec.truncated_in_stats,
      traj=traj, old_logp=old_logp, mask=ratio_mask)
  if spec.first_token_selection:
    if adv.ndim != 1:
      raise ValueError(f"first_token_selection needs [B] advantages; estimator "
                       f"{spec.estimator!r} returned shape {adv.shape}")
    if old_logp is None or ratio_mask is None:
      raise ValueError("first_token_selection needs old_logp and ratio_mask")
    first = first_token_selection(adv, seq_logp_mean(old_logp, ratio_mask), spec.group_size)
    adv = first_token_advantages(adv, first, ratio_mask if loss_mask is None else loss_mask)
  return adv
