"""Latent RL (Özeren & Aßenmacher, arXiv 2512.11816): push continuous thoughts
toward states a value head rates as likely correct.

On the `hidden` rule's trajectories (greedy, one per prompt), with h_t the
hidden state that becomes thought t + 1 (t = 0 is the state at `<bot>`,
t < N = ctx.num_latent) and V the value head (`lrjax.methods.latr.value_head`):

    policy:  L_pol = −(1/|T|) Σ_{t ∈ T} σ(V_sg(h_t))     T: the live thought positions
    head:    L_V   = BCE_w(V(sg(h_t)), y)                 y: the response's correctness

L_pol is the registered objective `latent_value` (`rl.objective`): a *direct*
term d_t = σ(V(h_t)) at the thought positions with the head's parameters under
stop_gradient, so its gradient reaches the backbone only (through h_t, computed
by the teacher-forced replay from the stored, detached thought inputs: LatR's
no-gradient chain). With the `constant` advantage (A = 1) the learner's direct
term −A·d_t aggregated by `token_mean` is exactly L_pol; there is no ratio, no
clip and no group.

L_V is the registered auxiliary loss `value_bce` (`rl.aux_losses`): the head
keeps learning online from the batch's outcomes with the states under
stop_gradient, so its gradient reaches the head only; `rl.param_groups` gives
the head its own learning rate. Labels are reward > 0.5 (the 0/1 correctness
reward); the class weight `pos_weight` and the dropout come from ctx.objective_cfg
(the `latent_rl` config section, pos_weight resolved by the value phase).

The objective also reads "value_start", the pre-trained head kept frozen, only
for its metrics (`value_metrics`). Both losses read the head at the same positions t < N, the states the pre-training
(`lrjax.methods.latr.value_phase`) labelled. The official code reads the policy's head at
the outputs of the `<latent>` inputs, one position later than its pre-training
examples; lrjax uses the same positions in both stages.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.latent import Masks, Objective, RuleContext, Terms, thought_positions
from lrjax.methods.latr.value_head import value_logits, weighted_bce

sg = jax.lax.stop_gradient


def value_masks(ctx: RuleContext, traj) -> Masks:
  """No ratio positions; direct terms at the thought positions."""
  none = jnp.zeros(traj.ids.shape, bool)
  return Masks(ratio=none, stored_old=none, direct=thought_positions(ctx, traj))


def value_terms(ctx: RuleContext, params: dict, traj, replay_out, aux=None) -> Terms:
  """d_t = σ(V(h_t)) with the head frozen (the gradient goes into the backbone)."""
  head = sg(params["heads"]["value"])
  v = value_logits(head, replay_out.hidden)  # B N, eval mode (no dropout)
  return Terms(ratio=jnp.zeros(v.shape, jnp.float32), direct=jax.nn.sigmoid(v))


def value_metrics(ctx: RuleContext, params: dict, traj, aux=None) -> dict:
  """Mean σ(V(h_t)) over the batch's thought states (as rolled out, before the update)
  under the online head (`value_mean`) and under the frozen pre-trained one
  (`value_mean_start`): the latter rises only if the thoughts themselves moved
  toward states the pre-trained head rates as correct."""
  mask = thought_positions(ctx, traj).astype(jnp.float32)  # B N
  h = traj.records["hidden"]  # B N H
  denom = jnp.maximum(mask.sum(), 1.0)
  mean = lambda head: (jax.nn.sigmoid(value_logits(head, h)) * mask).sum() / denom  # noqa: E731
  return {"value_mean": mean(params["heads"]["value"]),
          "value_mean_start": mean(params["heads"]["value_start"])}


LATENT_VALUE = Objective(
    masks=value_masks, terms=value_terms, has_direct=True, heads=("value", "value_start"),
    config_section="latent_rl", metrics=value_metrics)


def batch_key(traj, seed: int = 0) -> jax.Array:
  """A dropout key that differs between batches: folded from the batch's emitted ids."""
  ids = traj.ids.astype(jnp.uint32)
  weights = jnp.arange(1, ids.shape[-1] + 1, dtype=jnp.uint32)[None] * jnp.uint32(2654435761)
  return jax.random.fold_in(jax.random.key(seed), jnp.sum(ids * weights, dtype=jnp.uint32))


def value_bce(params: dict, traj, replay_out, *, ctx: RuleContext, rewards=None,
              **kw) -> tuple[jax.Array, dict]:
  """BCE_w(V(sg(h_t)), 1[reward > 0.5]) over the thought positions; the head alone
  gets the gradient. Metrics: value_mean (mean σ(V(h_t)), eval mode), pos_rate."""
  del kw
  if rewards is None:
    raise ValueError("the value_bce auxiliary loss needs the batch's rewards")
  mask = thought_positions(ctx, traj)  # B N
  h = sg(replay_out.hidden)  # B N H
  labels = jnp.broadcast_to((rewards > 0.5)[:, None], mask.shape)  # B N
  head = params["heads"]["value"]
  v = value_logits(head, h, dropout=float(ctx.objective_opt("dropout", 0.0)),
                   key=batch_key(traj))
  loss = weighted_bce(v, labels, float(ctx.objective_opt("pos_weight", 1.0)), mask)
  m = mask.astype(jnp.float32)
  denom = jnp.maximum(m.sum(), 1.0)
  value_mean = (jax.nn.sigmoid(value_logits(sg(head), h)) * m).sum() / denom
  return loss, {"value_mean": value_mean, "pos_rate": (labels * m).sum() / denom}
