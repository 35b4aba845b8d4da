"""`token`: ordinary sampling, x_{t+1} = E[y_t] (CoT SFT evaluation, GRPO baseline).

    y_t ~ softmax(process(l_t)),  logp_t = log_softmax(l_t/τ)[y_t],  x_{t+1} = E[y_t]

Nothing is recorded: the ids are in the trajectory. The learner scores
log_softmax(l_t/τ)[y_t] at every sampled position, inside the ratio
(`TOKEN_OBJECTIVE`), with the sampler's stored value as the old term.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.latent.base import (ANSWER, RULES, RuleContext, StepOut, ThoughtRule, embedding_table,
                               spans)
from lrjax.latent.objective import TOKEN_OBJECTIVE
from lrjax.sampling import sample, token_logp


def sample_token(ctx: RuleContext, logits: jax.Array,
                 key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(y [B] int32, log_softmax(l/τ)[y] [B] f32) under ctx.sampling."""
  y = sample(key, logits, ctx.sampling)  # B
  return y, token_logp(logits, y, ctx.sampling.temperature)


def step(ctx: RuleContext, params: dict, logits: jax.Array, hidden: jax.Array, key: jax.Array,
         state: dict, aux=None) -> StepOut:
  y, logp = sample_token(ctx, logits, key)  # B, B
  b = y.shape[0]
  return StepOut(y, logp, jnp.ones((b,), bool), spans(b, ANSWER), embedding_table(params)[y], {},
                 state)


def replay_inputs(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  return embedding_table(params)[traj.ids]  # B N H


TOKEN = RULES.register("token")(ThoughtRule(step=step, replay_inputs=replay_inputs,
                                            objective=TOKEN_OBJECTIVE))
