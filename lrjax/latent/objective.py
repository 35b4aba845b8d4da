"""What the learner scores at each response position: a thought rule's `Objective`.

Methods differ in the per-position quantity their policy loss uses, so the
thought rule declares it (`ThoughtRule.objective`), not the learner:

    masks = objective.masks(ctx, traj)                          # from the trajectory alone
    terms = objective.terms(ctx, params, traj, replay_out, aux)  # from the replayed logits/hidden

Two kinds of terms, each with its [B, N] mask:

* `ratio` terms s_t go inside the importance ratio ρ_t = exp(s_t − s^old_t) of
  the policy loss (PPO clip; value 1 in HRPO's on-policy form) and into the KL
  to the reference. `token`/`hybrid`: s_t = log_softmax(l_t/τ)[y_t] at the
  sampled positions. `hidden` (LatR, arXiv 2512.11816): the same at the forced
  `<eot>` and every language token after it, nothing at the latent positions.
* `direct` terms d_t enter the per-position loss as −A_t · d_t, with no ratio
  and no clip (e.g. LEPO's soft cross-entropy, arXiv 2604.17892, as
  d_t = Σ_k z_k log_softmax(l_t)[v_k]).

The policy loss aggregates both together over the union of the two masks with
the configured aggregation (`rl.aggregation`).

`stored_old` marks the ratio positions whose old (behaviour) term is the
sampler's stored `traj.logp`; at every other ratio position the learner
recomputes the old term with the parameters before the first update, on the
same stored inputs (`lrjax.rl.learner.behaviour_logp`). A rule that wants all
old terms recomputed (Latent-GRPO, arXiv 2604.27998) returns an all-False
`stored_old`.

An objective can also be chosen by name instead of the rule's own
(`rl.objective`, a name in `OBJECTIVES`; '' = the rule's): Latent RL's
value-guided objective (`lrjax.methods.latr.latent_rl`) scores the `hidden` rule's
thoughts with a value head instead of scoring tokens. Such an objective names
the heads it reads (`heads`, entries of params["heads"]) and the config section
its settings come from (`config_section`, frozen into ctx.objective_cfg).

Shape legend: B rows, N response positions.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from lrjax.model.vocab import token_logp_from_hidden
from lrjax.registry import Registry


class Masks(NamedTuple):
  """Where the learner scores a trajectory (bool [B, N] each)."""
  ratio: jax.Array  # positions whose term goes inside the ratio (and the KL)
  stored_old: jax.Array  # ratio positions whose old term is traj.logp (else recomputed)
  direct: jax.Array | None = None  # positions whose term is used directly, weighted by A


class Terms(NamedTuple):
  """Per-position terms (float32 [B, N] each), differentiable in params."""
  ratio: jax.Array  # s_t, e.g. log_softmax(l_t/τ)[y_t]
  direct: jax.Array | None = None  # d_t, the loss is −A_t · d_t


class Objective(NamedTuple):
  """masks(ctx, traj) -> Masks;  terms(ctx, params, traj, replay_out, aux) -> Terms.

  With `uses_advantages`, the learner calls terms(..., advantages=A) with the
  batch's advantages ([B] or [B, N]) when it differentiates the policy terms,
  and without them (advantages=None) where it only needs their values (old and
  reference terms): a rule may shape a term's gradient by the sign of A, never
  its value (Latent-GRPO's conditional straight-through, arXiv 2604.27998).

  `has_direct` declares that the terms include direct ones (`Terms.direct`, at
  `Masks.direct`): the config validation then refuses a policy loss that does not
  add them (`lrjax.rl.losses.PolicyLoss.supports_direct`), and the learner checks
  the declaration against the terms when it traces the loss.

  `heads` names the entries of params["heads"] the objective reads (the RL phase
  refuses to start without them); `config_section` the config section whose
  fields become ctx.objective_cfg; `metrics` (optional) gives training metrics of a
  rollout batch before its update, logged as train/<name>.

  `init_heads` makes the heads the objective reads when no earlier phase did (DLR's
  assistant); `reward` wraps the task's reward into the one the RL phase trains on
  (held-out evaluation keeps the task's); a training reward above `correct_above`
  means a correct answer (`train/correct`, the share of correct rollouts).

  `replay_out` is the teacher-forced replay of the trajectory
  (`lrjax.rollout.ReplayOut`: hidden [B, N, H], logits [B, N, V] float32; l_t at
  index t is the distribution y_t was drawn from). Terms that score ids read
  them from the hidden states with `lrjax.model.vocab` (in vocabulary chunks
  of `model_cfg.logits_chunk`, so the [B, N, V] logits are never built).
  `masks` must not depend on parameters: the learner evaluates it outside the
  differentiated function too.
  """
  masks: Callable[[Any, Any], Masks]
  terms: Callable[..., Terms]
  uses_advantages: bool = False
  has_direct: bool = False  # terms.direct is not None (LEPO's soft CE, Latent RL's value)
  heads: tuple[str, ...] = ()  # params["heads"] entries the terms read
  config_section: str = ""  # the config section frozen into ctx.objective_cfg
  metrics: Callable[..., dict] | None = None  # (ctx, params, traj, aux) -> {name: scalar}
  # (ctx, key) -> the `heads` entries, made fresh when no earlier phase made them (DLR)
  init_heads: Callable[..., dict] | None = None
  # (task_reward_fn, ctx) -> the training reward fn (e.g. DLR's dual reward); None: the task's
  reward: Callable[..., Callable[[str, str], float]] | None = None
  correct_above: float = 0.5  # the task rewards are 1 (correct) or 0


def token_masks(ctx, traj) -> Masks:
  """Every sampled position, its old term stored by the sampler."""
  return Masks(ratio=traj.sampled, stored_old=traj.sampled)


def token_terms(ctx, params: dict, traj, replay_out, aux=None) -> Terms:
  """s_t = log_softmax(l_t / τ)[y_t] with the sampler's τ (the quantity it stored),
  l_t = h_t W from the replayed hidden states (`lrjax.model.vocab`)."""
  return Terms(ratio=token_logp_from_hidden(ctx.model_cfg, params["model"], replay_out.hidden,
                                            traj.ids, ctx.sampling.temperature))


TOKEN_OBJECTIVE = Objective(masks=token_masks, terms=token_terms)


# name -> Objective chosen by `rl.objective` instead of the thought rule's own
OBJECTIVES: Registry[Objective] = Registry("objective")


class Head(NamedTuple):
  """An entry of params["heads"] that an earlier phase makes (e.g. a value head).

  init(run, key) -> a fresh head of the run's shapes (the RL phase's checks before
      that phase ran read its shapes); phase: the phase that trains it, which must
      come before `rl` in `config.mode` when the objective reads it.
  """
  init: Callable[[Any, jax.Array], Any]
  phase: str


# head name -> Head (entries of params["heads"] that objectives read, `Objective.heads`)
HEADS: Registry[Head] = Registry("head")
