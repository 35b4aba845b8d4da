"""Coconut: the `hidden` rule, continuous thoughts (Hao et al., arXiv 2412.06769;
Özeren & Aßenmacher, arXiv 2512.11816).

The prompt already ends with `<bot>`. With N = ctx.num_latent:

    t <  N:  y_t = <latent>, x_{t+1} = h_t             (span LATENT, not sampled)
    t == N:  y_t = <eot>,    x_{t+1} = E[<eot>]        (forced, span LATENT)
    t >  N:  y_t ~ process(l_t), x_{t+1} = E[y_t]      (span ANSWER, sampled)

Record `hidden` [B, H]: h_t at latent steps, zeros elsewhere; replay reads it
under stop_gradient (the RL update does not backpropagate through the chain).

What the learner scores (LatR's GRPO, arXiv 2512.11816): log_softmax(l_t/τ)[y_t]
inside the ratio at the forced `<eot>` (t = N) and at every language token after
it; nothing at the latent positions (and `<bot>` is part of the prompt). The
sampler stored no log-prob for the forced `<eot>`, so the learner recomputes its
old term before the first update. The rule needs `<bot>`, `<latent>`, `<eot>` in
the vocabulary, appends `<bot>` to every prompt and spends N + 1 response
positions before the answer.

    curriculum.py   the `coconut` SFT method's rows (Coconut's curriculum, LatR's variant)
    forward.py      the SFT loss's forward of those rows (continuous thoughts)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrjax.data.tokenizer import LATENT_TOKENS
from lrjax.latent.base import (ANSWER, DONE, LATENT, RuleContext, StepOut, ThoughtRule,
                               embedding_table)
from lrjax.latent.objective import Masks, Objective, token_terms
from lrjax.latent.readable import nearest_tokens
from lrjax.latent.token import sample_token
from lrjax.method import Method
from lrjax.methods.coconut.curriculum import encode_latent_curriculum
from lrjax.methods.coconut.forward import coconut_forward
from lrjax.sft.sequences import SFTMethod

NAME = "hidden"


def _check(ctx: RuleContext) -> None:
  if ctx.latent_id < 0 or ctx.eot_id < 0:
    raise ValueError(
        "the `hidden` rule needs ctx.latent_id and ctx.eot_id (the <latent>/<eot> ids)")


def init_state(ctx: RuleContext, batch: int) -> dict:
  return {"t": jnp.zeros((batch,), jnp.int32)}  # B, steps taken


def record_spec(ctx: RuleContext, batch: int, max_new: int) -> dict:
  h = ctx.model_cfg.hidden_size
  return {"hidden": jax.ShapeDtypeStruct((batch, max_new, h), ctx.model_cfg.jnp_dtype)}


def step(ctx: RuleContext, params: dict, logits: jax.Array, hidden: jax.Array, key: jax.Array,
         state: dict, aux=None) -> StepOut:
  _check(ctx)
  emb = embedding_table(params)  # V H
  t = state["t"]  # B
  latent = t < ctx.num_latent  # B
  eot = t == ctx.num_latent  # B
  y_s, logp_s = sample_token(ctx, logits, key)  # B, B
  y = jnp.where(latent, ctx.latent_id, jnp.where(eot, ctx.eot_id, y_s)).astype(jnp.int32)  # B
  sampled = ~(latent | eot)  # B
  h = hidden.astype(emb.dtype)  # B H
  next_embed = jnp.where(latent[:, None], h, emb[y])  # B H
  span = jnp.where(sampled, ANSWER, LATENT).astype(jnp.int8)  # B
  record = {"hidden": jnp.where(latent[:, None], h, 0).astype(ctx.model_cfg.jnp_dtype)}  # B H
  return StepOut(y, jnp.where(sampled, logp_s, 0.0), sampled, span, next_embed, record,
                 {"t": t + 1})


def replay_inputs(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  emb = embedding_table(params)  # V H
  n = traj.ids.shape[1]
  latent = (jnp.arange(n) < ctx.num_latent)[None] & (traj.span != DONE)  # B N
  stored = jax.lax.stop_gradient(traj.records["hidden"]).astype(emb.dtype)  # B N H
  return jnp.where(latent[..., None], stored, emb[traj.ids])  # B N H


def objective_masks(ctx: RuleContext, traj) -> Masks:
  """Ratio positions: the forced `<eot>` (t = N) and every live position after it."""
  n = traj.ids.shape[1]
  ratio = (traj.span != DONE) & (jnp.arange(n) >= ctx.num_latent)[None]  # B N
  return Masks(ratio=ratio, stored_old=traj.sampled)


def prompt_suffix(ctx: RuleContext) -> tuple[int, ...]:
  if ctx.bot_id < 0:
    raise ValueError("the `hidden` rule needs ctx.bot_id (the <bot> id) to end every prompt")
  return (ctx.bot_id,)


def extra_positions(num_latent: int) -> int:
  return num_latent + 1  # the latents and the forced <eot>


def readable(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  """"nearest": the vocabulary tokens nearest (cosine) to each fed-back hidden state."""
  return nearest_tokens(params, traj.records["hidden"][row], ctx.num_latent, tokenizer)


HIDDEN = ThoughtRule(
    step=step, replay_inputs=replay_inputs, init_state=init_state, record_spec=record_spec,
    objective=Objective(masks=objective_masks, terms=token_terms), prompt_suffix=prompt_suffix,
    special_tokens=LATENT_TOKENS, extra_positions=extra_positions)

# the SFT method: the Coconut curriculum (rows with latent thoughts) read by the Coconut
# forward (curriculum.py, forward.py), evaluated with `hidden`
COCONUT_SFT = SFTMethod(encode_latent_curriculum, latent=True, special_tokens=LATENT_TOKENS,
                        eval_rule=NAME, forward=coconut_forward)

COCONUT = Method(name="coconut", rules={NAME: HIDDEN}, sft_methods={"coconut": COCONUT_SFT},
                 readable={NAME: readable})
