"""The RL policy update: one teacher-forced replay, a registered policy loss, optax.

    logits   = replay(ctx, params, traj)            # inputs rebuilt from the records
    new_logp = log_softmax(logits / τ)[y]            # the quantity the sampler stored
    ref_logp = same with the frozen reference model on plain token embeddings
    loss     = POLICY_LOSSES[rl.loss](new_logp, traj.logp, A, traj.sampled, ...)

Per-group learning rates (HRPO: backbone, gate Linears, Λ) are an
`optax.multi_transform` over the parameter tree {"model", "rule", "heads"}.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lrjax.latent import RuleContext
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


def param_group(path: tuple[str, ...]) -> str:
  """Optimizer group of a parameter: backbone, gate, lambda or heads."""
  if path[0] == "rule":
    return "lambda" if path[-1] == "lambda" else "gate"
  return "heads" if path[0] == "heads" else "backbone"


def make_rl_optimizer(rl_cfg, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clip, then AdamW with one learning rate per parameter group."""
  def adamw(lr):
    if rl_cfg.schedule == "cosine":
      sched = optax.warmup_cosine_decay_schedule(0.0, lr, rl_cfg.warmup_steps, total_steps)
    elif rl_cfg.warmup_steps:
      sched = optax.warmup_constant_schedule(0.0, lr, rl_cfg.warmup_steps)
    else:
      sched = lr
    return optax.adamw(sched, b1=rl_cfg.b1, b2=rl_cfg.b2, weight_decay=rl_cfg.weight_decay)

  groups = {"backbone": adamw(rl_cfg.lr), "gate": adamw(rl_cfg.lr_gate),
            "lambda": adamw(rl_cfg.lr_lambda), "heads": adamw(rl_cfg.lr)}

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_group(tuple(str(getattr(k, "key", k)) for k in path)), params)

  tx = optax.multi_transform(groups, labels)
  return optax.chain(optax.clip_by_global_norm(rl_cfg.clip_norm), tx) if rl_cfg.clip_norm else tx


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
                optimizer: optax.GradientTransformation) -> Callable:
  """jit(fn(params, opt_state, ref_model, traj, advantages, aux) -> (params, opt_state, metrics))."""
  def update(params, opt_state, ref_model, traj, advantages, aux):
    grad_fn = jax.value_and_grad(
        lambda p: policy_loss(ctx, spec, p, ref_model, traj, advantages, aux), has_aux=True)
    (_, metrics), grads = grad_fn(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(metrics, grad_norm=optax.tree.norm(grads))
  return jax.jit(update, donate_argnums=(0, 1))
