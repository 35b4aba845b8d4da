"""DLR's learning signal (DeepLatent Reasoning, arXiv 2601.17275): a sequence-level
clipped ratio on the assistant's chain density, a KL to the starting assistant and
the contrastive term, as registered parts (`configs/dlr.py` names them).

The paper's loss is L = L_GRPO + γ·L_cl with L_GRPO the PPO clip on the
sequence-level ratio π(T_i)/π_old(T_i) of the G chains of a prompt, minus
β·KL(π‖π_ref). It gives neither the density nor ε. lrjax's reading (ours): with
s_t = mean_d log N(z_t; μ_t, σ_t) (the `dlr` objective, `lrjax.methods.dlr.rule`),

    ℓ_i  = (1/T) Σ_t (s_t − s_t^old)        the mean log-ratio over T·d (GSPO-style)
    ρ_i  = exp(ℓ_i)
    L_pg = −(1/B) Σ_i min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε) A_i)     (`gspo_clip`)
    L    = L_pg + β · KL̄ + γ · L_cl

with A_i the group-normalised advantages (`rl.advantage = "grpo"`), ε at the
scale of a per-dimension mean (`rl.clip_eps`, e.g. 3e-4), KL̄ the analytic
Gaussian KL to the frozen starting assistant averaged over T·d
(`dlr_chain_kl`, weight β = `dlr.beta`) and L_cl the paper's Eq 8 on the
reparameterised chains z̃ = μ_θ + σ_θ·ε with ε stored (`dlr_contrastive`,
weight γ = `dlr.gamma`). β and γ come from the `dlr` section (ctx.objective_cfg),
so `rl.aux_losses` lists both with weight 1 and `--config.dlr.gamma=0` is the
ablation; `train/aux_<name>` logs the weighted terms. The main model's
parameters are frozen (`rl.param_groups`); none of these terms reads them but
the embedding RMS s, a constant.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.methods.dlr.options import dlr_options
from lrjax.methods.dlr.rule import chain_contrastive, chain_kl
from lrjax.rl.losses import PolicyLoss, _kl_term

sg = jax.lax.stop_gradient


def gspo_clip(new_logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
              *, ref_logp: jax.Array | None = None, beta: float = 0.0, clip_eps: float = 3e-4,
              clip_eps_high: float | None = None, kl_estimator: str = "k3", kl_clamp: float = 0.0,
              direct: jax.Array | None = None, direct_mask: jax.Array | None = None,
              **kw) -> tuple[jax.Array, dict]:
  """Clipped surrogate on the length-normalised sequence ratio (GSPO, arXiv 2507.18071):

      ℓ_i = Σ_t m_it (new_it − old_it) / Σ_t m_it,   ρ_i = exp(ℓ_i)
      L   = −(1/B) Σ_i min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_h) A_i)   [+ β · mean_t KL_t]

  new_logp, old_logp, mask [B, T]; advantages [B] (or [B, T]: their mean over the
  row's mask). A row with no masked position has ρ = 1 and A counts as given. The
  optional KL (β > 0 with ref_logp; DLR uses the auxiliary loss `dlr_chain_kl`
  instead) is the per-position estimate averaged over the mask. `dual_clip` and
  `aggregation` do not apply (the loss is per sequence). Metrics as `ppo_clip`'s,
  `ratio_mean`, `clip_frac` and `approx_kl` at the sequence level. It has no
  per-position loss to add direct terms to (`supports_direct=False`): `direct`
  must be None.
  """
  if direct is not None or direct_mask is not None:
    raise ValueError("gspo_clip takes no direct terms: its objective must score every "
                     "position inside the ratio")
  m = mask.astype(bool)  # B T
  n = jnp.maximum(m.sum(-1), 1).astype(jnp.float32)  # B
  adv = jnp.asarray(advantages, jnp.float32)
  if adv.ndim == 2:
    adv = jnp.where(m, adv, 0.0).sum(-1) / n
  adv = sg(adv)  # B
  new = jnp.where(m, new_logp.astype(jnp.float32), 0.0)  # B T
  diff = new - sg(jnp.where(m, old_logp.astype(jnp.float32), 0.0))  # B T
  log_ratio = diff.sum(-1) / n  # B
  ratio = jnp.exp(log_ratio)  # B
  hi = clip_eps if clip_eps_high is None else clip_eps_high
  pg1, pg2 = -adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)  # B, B
  pg = jnp.maximum(pg1, pg2).mean()
  kl, kl_active = _kl_term(new, ref_logp, m, beta, kl_estimator, kl_clamp)  # B T
  kl_mean = jnp.where(m, kl, 0.0).sum() / jnp.maximum(m.sum(), 1).astype(jnp.float32)
  loss = pg + beta * kl_mean if kl_active else pg
  zero = jnp.zeros((), jnp.float32)
  return loss, {"loss": sg(loss), "pg_loss": sg(pg), "kl_mean": sg(kl_mean),
                "ratio_mean": sg(ratio.mean()), "clip_frac": sg((pg2 > pg1).mean()),
                "dual_clip_frac": zero, "approx_kl": sg(-log_ratio.mean())}


def dlr_chain_kl(params: dict, traj, replay_out, *, ctx, **kw) -> tuple[jax.Array, dict]:
  """β · KL̄(π_θ ‖ π_start) over T·d (β = `dlr.beta`); metric `kl` is KL̄ itself."""
  del kw
  beta = float(dlr_options(ctx).beta)
  value = chain_kl(ctx, params, traj)
  return beta * value, {"kl": value}


def dlr_contrastive(params: dict, traj, replay_out, *, ctx, **kw) -> tuple[jax.Array, dict]:
  """γ · L_cl on the reparameterised chains (γ = `dlr.gamma`; skipped at γ = 0)."""
  del kw
  gamma = float(dlr_options(ctx).gamma)
  if gamma == 0.0:
    return jnp.zeros((), jnp.float32), {}
  value = chain_contrastive(ctx, params, traj)
  return gamma * value, {"l_cl": value}


# one clipped ratio per sequence: no per-position loss to add direct terms to
GSPO_CLIP = PolicyLoss(gspo_clip, supports_direct=False, per_sequence_metrics=True)
