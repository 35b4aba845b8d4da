"""Teacher-forced replay of a trajectory: one forward, no recurrence.

The inputs are [E[prompt_ids] (P), x_1 .. x_{N-1}] with x_{t+1} rebuilt by the
rule's `replay_inputs` from the stored records (stop_gradient on stored
vectors; live rule params and embedding table), at positions prompt_len + t.
The logits at sequence indices P-1 .. P+N-2 are l_0 .. l_{N-1}, the logits the
rollout sampled y_0 .. y_{N-1} from (the scan decode must match a full
teacher-forced forward; tests/test_replay.py checks it for every rule). The last input x_N is never read.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lrjax.latent.base import DONE, RuleContext, rule_of
from lrjax.model.api import compute_params, embed, forward, positions_from_mask
from lrjax.sampling import token_logp
from lrjax.rollout.trajectory import Trajectory

__all__ = ["ReplayOut", "replay", "replay_inputs", "token_logp"]


class ReplayOut(NamedTuple):
  """The replay of a trajectory: h_t and l_t for t = 0 .. N-1."""
  hidden: jax.Array  # B N H, last hidden state (after the final norm)
  # B N V float32; the learner's objectives score ids from `hidden` instead
  # (`lrjax.model.vocab`, in vocabulary chunks) and XLA drops these when unread
  logits: jax.Array


def replay_inputs(ctx: RuleContext, params: dict, traj: Trajectory, aux=None) -> jax.Array:
  """x_1 .. x_N [B, N, H] from the rule's records (differentiable in params)."""
  return rule_of(ctx).replay_inputs(ctx, params, traj, aux)


def replay(ctx: RuleContext, params: dict, traj: Trajectory, aux=None,
           inputs: jax.Array | None = None) -> ReplayOut:
  """`ReplayOut(hidden [B, N, H], logits [B, N, V] float32)`: h_t and l_t, t = 0 .. N-1.

  The attention mask is the prompt mask, then 1 where the input was produced by
  a live step (span of y_t != DONE); later DONE positions are never attended by
  live ones, so masking them changes no live logit. `inputs` [B, N, H] replaces
  the rule's x_1 .. x_N (e.g. plain token embeddings for a reference model).
  """
  cfg = ctx.model_cfg
  params = {**params, "model": compute_params(cfg, params["model"])}  # one cast (masters)
  b, p = traj.prompt_ids.shape
  n = traj.ids.shape[1]
  if inputs is None:
    inputs = replay_inputs(ctx, params, traj, aux)
  xs = inputs[:, :n - 1]  # B N-1 H
  emb = jnp.concatenate([embed(cfg, params["model"], traj.prompt_ids),
                         xs.astype(cfg.jnp_dtype)], axis=1)  # B P+N-1 H
  pmask = traj.prompt_mask.astype(bool)  # B P
  mask = jnp.concatenate([pmask, traj.span[:, :n - 1] != DONE], axis=1)  # B P+N-1
  plen = jnp.sum(pmask, axis=-1, dtype=jnp.int32)  # B
  pos = jnp.concatenate([positions_from_mask(pmask),
                         plen[:, None] + jnp.arange(n - 1, dtype=jnp.int32)[None]], axis=1)
  out = forward(cfg, params["model"], emb, pos, mask)
  return ReplayOut(out.hidden[:, p - 1:], out.logits[:, p - 1:])  # B N H, B N V
