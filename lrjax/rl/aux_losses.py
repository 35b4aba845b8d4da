"""Auxiliary losses added to the policy loss, as a registry (`rl.aux_losses`).

Every entry of `AUX_LOSSES` has the signature

    fn(params, traj, replay_out, **kw) -> (loss [], metrics {str: []})

`params` is the full tree {"model", "rule", "heads"} being differentiated,
`traj` the (mini-)batch's `Trajectory` and `replay_out` its teacher-forced
replay under `params` (`lrjax.rollout.ReplayOut`: hidden [B, N, H], logits
[B, N, V]), so a value head on the latent hidden states or a contrastive term
over a group's chains reads them without a second forward. Keywords: `ctx`
(the `RuleContext`), `advantages` ([B] or [B, N]), `rewards` ([B], e.g. a
value head's correctness label), `masks` (the rule's `Masks`); ignore what you
do not need (`**kw`).

`rl.aux_losses` lists (name, weight) pairs; the learner minimises

    L = L_policy + Σ_i weight_i · loss_i

and logs each loss_i as `train/aux_<name>` (and its metrics as
`train/aux_<name>_<key>`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.registry import Registry

AUX_LOSSES = Registry("auxiliary loss")


@AUX_LOSSES.register("heads_l2")
def heads_l2(params: dict, traj, replay_out, **kw) -> tuple[jax.Array, dict]:
  """½ Σ w² over every leaf of params["heads"] (0 without heads): a weight penalty
  on the extra heads. Gradient: w."""
  leaves = jax.tree.leaves(params.get("heads", {}))
  loss = sum((0.5 * jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves),
             jnp.zeros((), jnp.float32))
  return loss, {}
