"""The RL policy update: one teacher-forced replay, a registered policy loss, optax.

    logits   = replay(ctx, params, traj)            # inputs rebuilt from the records
    new_logp = log_softmax(logits / τ)[y]            # the quantity the sampler stored
    ref_logp = same with the frozen reference model on plain token embeddings
    loss     = POLICY_LOSSES[rl.loss](new_logp, traj.logp, A, traj.sampled, ...)

The optimizer works on parameter groups of the tree {"model", "rule", "heads"}
(`rl.param_groups`, see `lrjax.optim`): each group has its own learning rate
(HRPO: backbone, gate Linears, Λ), or none (frozen). The update differentiates
the loss with respect to the trainable parameters only, clips their global norm
and applies AdamW to them; frozen ones are carried through unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lrjax.latent import RuleContext
from lrjax.optim import GroupedOptimizer, ParamGroups, make_grouped_optimizer
from lrjax.rl.losses import POLICY_LOSSES
from lrjax.rollout import replay, token_logp


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static loss settings (hashable: part of the update's jit key)."""
  loss: str = "ppo_clip"
  aggregation: str = "token_mean"
  clip_eps: float = 0.2
  beta: float = 0.0
  temperature: float = 1.0


def make_rl_optimizer(rl_cfg, total_steps: int) -> GroupedOptimizer:
  """Global-norm clip over the trainable gradients, then AdamW with one learning
  rate per `rl.param_groups` entry (lr None = frozen)."""
  return make_grouped_optimizer(
      ParamGroups(tuple(rl_cfg.param_groups)), schedule=rl_cfg.schedule,
      warmup_steps=rl_cfg.warmup_steps, total_steps=total_steps, clip_norm=rl_cfg.clip_norm,
      weight_decay=rl_cfg.weight_decay, b1=rl_cfg.b1, b2=rl_cfg.b2, field="rl.schedule")


def policy_loss(ctx: RuleContext, spec: LossSpec, params: dict, ref_model: dict | None,
                traj: Any, advantages: jax.Array, aux: Any) -> tuple[jax.Array, dict]:
  """The scalar loss of one batch of trajectories, and its metrics."""
  _, logits = replay(ctx, params, traj, aux)  # B N V
  new_logp = token_logp(logits, traj.ids, spec.temperature)  # B N
  ref_logp = None
  if spec.beta > 0 and ref_model is not None:
    ref_ctx = ctx.replace(rule="token", rule_cfg=())
    ref_params = {"model": ref_model, "rule": {}, "heads": {}}
    _, ref_logits = replay(ref_ctx, ref_params, traj, None)
    ref_logp = jax.lax.stop_gradient(token_logp(ref_logits, traj.ids, spec.temperature))
  mask = traj.sampled.astype(jnp.float32)  # B N
  loss, metrics = POLICY_LOSSES.get(spec.loss)(
      new_logp, traj.logp, advantages, mask, ref_logp=ref_logp, beta=spec.beta,
      clip_eps=spec.clip_eps, aggregation=spec.aggregation)
  return loss, dict(metrics, loss=loss)


def make_update(ctx: RuleContext, spec: LossSpec,
                optimizer: GroupedOptimizer | optax.GradientTransformation) -> Callable:
  """jit(fn(params, opt_state, ref_model, traj, advantages, aux) -> (params, opt_state, metrics)).

  With a `GroupedOptimizer` only its trainable parameters are differentiated
  and updated (opt_state = `optimizer.init(params)`); a plain optax
  transformation trains every parameter. metrics["grad_norm"] is the global
  norm of the trainable gradients, before clipping.
  """
  groups = getattr(optimizer, "groups", None)

  def update(params, opt_state, ref_model, traj, advantages, aux):
    trainable, frozen = groups.split(params) if groups is not None else (params, None)
    full = (lambda t: ParamGroups.merge(t, frozen)) if groups is not None else (lambda t: t)
    grad_fn = jax.value_and_grad(
        lambda t: policy_loss(ctx, spec, full(t), ref_model, traj, advantages, aux), has_aux=True)
    (_, metrics), grads = grad_fn(trainable)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return full(trainable), opt_state, dict(metrics, grad_norm=optax.tree.norm(grads))
  return jax.jit(update, donate_argnums=(0, 1))
