"""Policy losses and their token aggregations, as registries.

Every entry of `POLICY_LOSSES` is a `PolicyLoss` record: the loss function `fn`
and what it can take (`uses_ratio`, `supports_direct`), registered with

    @register_policy_loss("my_loss", uses_ratio=True, supports_direct=True)
    def my_loss(new_logp, old_logp, advantages, mask, **settings): ...

The config validation reads the record: a loss without a ratio refuses
`rl.updates_per_batch > 1`; one without direct terms refuses an objective that
makes them. A record is called like its function. `fn` has the signature

    fn(new_logp [B, T], old_logp [B, T], advantages [B] or [B, T], mask [B, T], *,
       ref_logp [B, T] | None = None, beta: float = 0.0, clip_eps: float = 0.2,
       clip_eps_high: float | None = None, dual_clip: float | None = None,
       kl_estimator: str = "k3", kl_clamp: float = 0.0,
       direct: [B, T] | None = None, direct_mask: [B, T] | None = None,
       aggregation: str = "token_mean", **kw) -> (loss [], metrics {str: []})

`new_logp` are the current policy's ratio terms (the log-probs of the taken
actions, or a rule's surrogate; see `lrjax.latent.objective`), carrying the
gradient; `old_logp` the behaviour policy's (from the rollout, or recomputed
before the first update), `ref_logp` the frozen reference's. [B] advantages
are broadcast over tokens; [B, T] ones are used as given (e.g. after
`advantages.first_token_advantages`). Advantages, `old_logp` and `ref_logp`
are treated as constants (stop_gradient). The per-token loss L_{b,t} is
reduced by `AGGREGATIONS[aggregation]`; extra keywords (`**kw`) are passed on
to the aggregation (e.g. `max_len`).

`direct` terms d_t (with `direct_mask`) are a rule's terms used without a
ratio (LEPO's soft cross-entropy, arXiv 2604.17892): they add −A_t · d_t at
their positions, and the aggregation runs over `mask | direct_mask` together.
The KL covers the ratio positions only. `kl_estimator` names an entry of
`lrjax.rl.kl.KL_ESTIMATORS`; `kl_clamp` c > 0 clamps each estimate to
[−c, c] (verl's clamp of k3 to ±10, used by Latent-GRPO arXiv 2604.27998).

A loss that has no importance ratio (it is only correct on-policy, one update
per rollout batch) declares `uses_ratio=False`; the config validation then
refuses `rl.updates_per_batch > 1` with it. A loss that does not add the
direct terms (`gspo_clip`, one term per sequence) declares
`supports_direct=False`: paired with an objective that makes them (LEPO's,
Latent RL's) it would train nothing at those positions, so the config
validation refuses the pairing and the learner refuses to trace it.

Masked positions may hold anything (padding log-probs of −inf included): they
are selected away with `where` before any exp, never multiplied, so neither the
loss nor its gradient sees them. Rows with no valid token contribute 0.

Metrics (token means over the mask, independent of the aggregation, no
gradient): `loss`, `pg_loss` (the aggregated policy term alone, direct terms
included), `kl_mean` (the KL estimate vs. the reference; 0 without
`ref_logp`), `ratio_mean` (exp(new − old)), `clip_frac`, `dual_clip_frac`,
`approx_kl` (mean of old − new).

Shape legend: B batch rows, T response positions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from lrjax.registry import Registry
from lrjax.rl.kl import KL_ESTIMATORS



@dataclasses.dataclass(frozen=True)
class PolicyLoss:
  """A registered policy loss: its function and what it can take.

  fn: the loss, fn(new_logp, old_logp, advantages, mask, **settings) -> (loss, metrics).
  uses_ratio: it has an importance ratio exp(new − old), so several updates per
      rollout batch stay correct (False: on-policy only, `rl.updates_per_batch` 1).
  supports_direct: it adds an objective's direct terms −A·d at `direct_mask`
      (False: it must not be paired with an objective that makes them).
  per_sequence_metrics: its metrics other than the loss are means over rows, not
      over the ratio positions (a chunked update weighs them by rows, not positions).
  """
  fn: Callable[..., tuple[jax.Array, dict]]
  uses_ratio: bool = True
  supports_direct: bool = True
  per_sequence_metrics: bool = False

  def __call__(self, *args, **kw) -> tuple[jax.Array, dict]:
    return self.fn(*args, **kw)


AGGREGATIONS = Registry("loss aggregation")
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")

sg = jax.lax.stop_gradient


def register_policy_loss(name: str, *, uses_ratio: bool = True,
                         supports_direct: bool = True) -> Callable[[Callable], Callable]:
  """Registers the decorated function as `POLICY_LOSSES[name]`, a `PolicyLoss` record;
  returns the function unchanged."""
  def deco(fn: Callable) -> Callable:
    POLICY_LOSSES.register(name)(PolicyLoss(fn, uses_ratio, supports_direct))
    return fn
  return deco


# --------------------------------------------------------------------------- aggregations


@AGGREGATIONS.register("token_mean")
def token_mean(per_token: jax.Array, mask: jax.Array, **kw) -> jax.Array:
  """L = Σ_{b,t} L_{b,t} m_{b,t} / Σ_{b,t} m_{b,t}  (DAPO, arXiv 2503.14476). [B, T] -> []

  Every valid token of the batch weighs the same; an all-masked batch gives 0.
  """
  del kw
  m = mask.astype(bool)  # B T
  total = jnp.where(m, per_token, 0.0).sum()
  return total / jnp.maximum(m.sum(), 1).astype(jnp.float32)


@AGGREGATIONS.register("seq_mean")
def seq_mean(per_token: jax.Array, mask: jax.Array, **kw) -> jax.Array:
  """L = (1/B) Σ_b (1/|y_b|) Σ_t L_{b,t} m_{b,t}. [B, T] -> []

  GRPO's original (DeepSeekMath, arXiv 2402.03300, eq. 3) and HRPO's
  (arXiv 2505.18454). |y_b| = Σ_t m_{b,t}; a row with |y_b| = 0 contributes 0
  and still counts in B (as TRL's `clamp(min=1)`).
  """
  del kw
  m = mask.astype(bool)  # B T
  row = jnp.where(m, per_token, 0.0).sum(-1)  # B
  return (row / jnp.maximum(m.sum(-1), 1).astype(jnp.float32)).mean()


@AGGREGATIONS.register("seq_sum_norm")
def seq_sum_norm(per_token: jax.Array, mask: jax.Array, *, max_len: int | None = None,
                 **kw) -> jax.Array:
  """L = Σ_{b,t} L_{b,t} m_{b,t} / (B · T_max). [B, T] -> []

  Dr. GRPO (arXiv 2503.20783): a constant normaliser instead of 1/|y_b|.
  T_max = `max_len` (keep it fixed across steps, e.g. the generation budget) or
  the array's T.
  """
  del kw
  b, t = per_token.shape
  m = mask.astype(bool)  # B T
  return jnp.where(m, per_token, 0.0).sum() / float(b * (t if max_len is None else max_len))


# --------------------------------------------------------------------------- helpers


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Σ x m / max(Σ m, 1) over all axes, without gradient. -> []"""
  return sg(jnp.where(mask, x, 0.0).sum() / jnp.maximum(mask.sum(), 1).astype(jnp.float32))


def _prepare(new_logp: jax.Array, advantages: jax.Array, mask: jax.Array):
  """float32 log-probs [B, T], constant advantages [B, T], bool mask [B, T]."""
  if new_logp.ndim != 2 or mask.shape != new_logp.shape:
    raise ValueError(f"new_logp and mask must both be [B, T]; got {new_logp.shape}, {mask.shape}")
  adv = jnp.asarray(advantages, jnp.float32)
  if adv.ndim == 1:
    adv = adv[:, None]  # B 1
  b, t = new_logp.shape
  if adv.ndim != 2 or adv.shape[0] != b or adv.shape[1] not in (1, t):
    raise ValueError(f"advantages must be [B] or [B, T] for B, T = {new_logp.shape}; "
                     f"got {jnp.shape(advantages)}")
  m = mask.astype(bool)  # B T
  adv = sg(_zero_masked(jnp.broadcast_to(adv, new_logp.shape), m))  # B T
  return _zero_masked(new_logp, m), adv, m


def _zero_masked(x: jax.Array, mask: jax.Array) -> jax.Array:
  """float32 x with masked positions set to 0 by `where` (their gradient is exactly 0,
  and −inf/NaN padding can no longer reach an exp or a 0·inf in the backward pass)."""
  return jnp.where(mask, x.astype(jnp.float32), 0.0)


def _kl_term(new: jax.Array, ref_logp: jax.Array | None, mask: jax.Array, beta: float,
             kl_estimator: str = "k3", kl_clamp: float = 0.0) -> tuple[jax.Array, bool]:
  """Per-token KL estimate [B, T] (0 at masked positions; clamped to ±kl_clamp when
  kl_clamp > 0) and whether β·KL enters the loss."""
  if ref_logp is None:
    if not isinstance(beta, (int, float)) or beta != 0:
      raise ValueError("beta != 0 needs ref_logp")
    return jnp.zeros_like(new), False
  ref = sg(_zero_masked(ref_logp, mask))  # B T
  est = KL_ESTIMATORS.get(kl_estimator)(new, ref)  # B T
  if kl_clamp:
    est = jnp.clip(est, -kl_clamp, kl_clamp)  # gradient 0 where it clamps
  kl = jnp.where(mask, est, 0.0)  # B T; masked: KL(0, 0) = 0 anyway
  active = not (isinstance(beta, (int, float)) and beta == 0)
  return kl, active


def _finish(pg: jax.Array, kl: jax.Array, kl_active: bool, beta, mask: jax.Array,
            aggregation: str, agg_kw: dict, metrics: dict, advantages: jax.Array | None = None,
            direct: jax.Array | None = None,
            direct_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Adds β·KL and the direct terms −A·d, aggregates over mask | direct_mask, and
  fills the common metrics (kl_mean: the mean KL over the ratio positions, where it
  is defined). New losses should end with it."""
  agg: Callable = AGGREGATIONS.get(aggregation)
  kl_mean = _masked_mean(kl, mask)
  if direct is not None:
    if direct_mask is None or advantages is None:
      raise ValueError("direct terms need direct_mask and the advantages")
    dm = direct_mask.astype(bool)  # B T
    adv = jnp.asarray(advantages, jnp.float32)
    adv = sg(jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, dm.shape))  # B T
    d = jnp.where(dm, -adv * jnp.where(dm, direct.astype(jnp.float32), 0.0), 0.0)  # B T
    pg = jnp.where(mask, pg, 0.0) + d
    kl = jnp.where(mask, kl, 0.0)
    mask = mask | dm
  per_token = pg + beta * kl if kl_active else pg  # B T
  loss = agg(per_token, mask, **agg_kw)
  metrics = dict(metrics)
  metrics["loss"] = sg(loss)
  metrics["pg_loss"] = sg(agg(pg, mask, **agg_kw))
  metrics["kl_mean"] = kl_mean
  return loss, metrics


# --------------------------------------------------------------------------- losses


@register_policy_loss("ppo_clip")
def ppo_clip(new_logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
             *, ref_logp: jax.Array | None = None, beta: float = 0.0, clip_eps: float = 0.2,
             clip_eps_high: float | None = None, dual_clip: float | None = None,
             kl_estimator: str = "k3", kl_clamp: float = 0.0, direct: jax.Array | None = None,
             direct_mask: jax.Array | None = None, aggregation: str = "token_mean",
             **kw) -> tuple[jax.Array, dict]:
  """Clipped-surrogate policy loss (PPO/GRPO), optional clip-higher, dual clip and KL.

  Per valid token, with ρ_t = exp(new_t − old_t), ε_h = clip_eps_high or ε:

      L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε_h) A_t)
      L_t = min(L_t, −c A_t)            if A_t < 0 and c = dual_clip is set
      L_t += β KL_t,   KL_t = exp(ref_t − new_t) − (ref_t − new_t) − 1   (k3, kl_estimator)

  (PPO, arXiv 1707.06347; GRPO, DeepSeekMath arXiv 2402.03300, eq. 3–4; dual
  clip, Ye et al. 2020 arXiv 1912.09729, used by Latent-GRPO arXiv 2604.27998
  with c = 3.)

  ε_h > ε is DAPO's clip-higher (arXiv 2503.14476). The dual clip is the
  objective max(min(ρA, clip(ρ)A), cA) for A < 0: it bounds the loss of a
  negative-advantage token whose ratio has blown up (gradient 0 there).
  Gradient w.r.t. new_t: −ρ_t A_t where the unclipped term is active, 0 where
  the clipped or dual-clipped one is, plus β (1 − exp(ref_t − new_t)).

  Metrics `clip_frac`: fraction of valid tokens where the clipped term is
  strictly active; `dual_clip_frac`: where the dual clip is.
  """
  if old_logp is None:
    raise ValueError("ppo_clip needs old_logp")
  new, adv, m = _prepare(new_logp, advantages, mask)
  old = sg(_zero_masked(old_logp, m))  # B T
  eps_high = clip_eps if clip_eps_high is None else clip_eps_high
  log_ratio = new - old  # B T; 0 at masked positions
  ratio = jnp.exp(log_ratio)  # B T
  pg1 = -adv * ratio  # B T
  pg2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)  # B T
  pg = jnp.maximum(pg1, pg2)  # B T
  clipped = pg2 > pg1  # B T
  if dual_clip is not None:
    if dual_clip <= 1.0:
      raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    pg3 = -adv * dual_clip  # B T
    dual = (adv < 0) & (pg > pg3)  # B T
    pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
  else:
    dual = jnp.zeros_like(m)
  kl, kl_active = _kl_term(new, ref_logp, m, beta, kl_estimator, kl_clamp)
  metrics = {
      "ratio_mean": _masked_mean(ratio, m),
      "clip_frac": _masked_mean(clipped.astype(jnp.float32), m),
      "dual_clip_frac": _masked_mean(dual.astype(jnp.float32), m),
      "approx_kl": _masked_mean(-log_ratio, m),
  }
  return _finish(pg, kl, kl_active, beta, m, aggregation, kw, metrics, advantages, direct,
                 direct_mask)


@register_policy_loss("reinforce_onpolicy", uses_ratio=False)
def reinforce_onpolicy(new_logp: jax.Array, old_logp: jax.Array | None, advantages: jax.Array,
                       mask: jax.Array, *, ref_logp: jax.Array | None = None, beta: float = 0.0,
                       clip_eps: float = 0.2, clip_eps_high: float | None = None,
                       dual_clip: float | None = None, kl_estimator: str = "k3",
                       kl_clamp: float = 0.0, direct: jax.Array | None = None,
                       direct_mask: jax.Array | None = None, aggregation: str = "token_mean",
                       **kw) -> tuple[jax.Array, dict]:
  """HRPO's on-policy REINFORCE-style GRPO loss (no ratio, no clipping).

      L_t = −(exp(new_t − sg(new_t)) A_t − β KL_t),
      KL_t = exp(ref_t − new_t) − (ref_t − new_t) − 1

  (HRPO, arXiv 2505.18454, with aggregation="seq_mean" for its
  L = mean_i (1/|y_i|) Σ_t L_t.) exp(new − sg(new)) = 1, so the value is
  −A_t + β KL_t while the gradient w.r.t. new_t is −A_t + β (1 − exp(ref_t − new_t)).
  `old_logp` (may be None), `clip_eps*` and `dual_clip` are unused except for
  the `ratio_mean`/`approx_kl` metrics, which compare new with old when given.
  It has no ratio, so it is only correct for one update per rollout batch
  (`uses_ratio=False`: the config refuses `rl.updates_per_batch > 1`).
  """
  del clip_eps, clip_eps_high, dual_clip
  new, adv, m = _prepare(new_logp, advantages, mask)
  one = jnp.exp(new - sg(new))  # B T, value 1, gradient 1 w.r.t. new
  pg = -one * adv  # B T
  kl, kl_active = _kl_term(new, ref_logp, m, beta, kl_estimator, kl_clamp)
  if old_logp is None:
    log_ratio = jnp.zeros_like(new)
  else:
    log_ratio = new - sg(_zero_masked(old_logp, m))  # B T
  metrics = {
      "ratio_mean": _masked_mean(jnp.exp(log_ratio), m),
      "clip_frac": jnp.zeros((), jnp.float32),
      "dual_clip_frac": jnp.zeros((), jnp.float32),
      "approx_kl": _masked_mean(-log_ratio, m),
  }
  return _finish(pg, kl, kl_active, beta, m, aggregation, kw, metrics, advantages, direct,
                 direct_mask)

