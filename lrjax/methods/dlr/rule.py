"""`dlr`: a trained assistant's latent chain read by a frozen main model (DLR, arXiv 2601.17275).

The prompt (question) ends with `<bot>`. Before the main model's loop, the
assistant (`lrjax.methods.dlr.assistant`, params["heads"]["assistant"]) samples the
whole chain z_0 .. z_{T-1} (T = ctx.num_latent) in its own `lax.scan`, its KV
cache carried by that loop (`prepare`); the chain depends on the question only,
not on the main model's states. The main model then reads it:

    t <  T:  y_t = <latent>, x_{t+1} = z_t            (span LATENT, sampled: the chain)
    t == T:  y_t = <eot>,    x_{t+1} = E[<eot>]       (forced, span LATENT)
    t >  T:  y_t = argmax l_t, x_{t+1} = E[y_t]       (span ANSWER, greedy: the paper's T = 0)

Greedy rollouts (evaluation) use the chain means, z_t = μ_t. Records: `z` and
`eps` [B, H] at the chain positions (zeros elsewhere); `traj.logp` holds the
per-position mean over d of log N(z_t; μ_t, σ_t).

What the learner scores (objective `dlr`, the rule's own): the ratio term
s_t = mean_d log N(z_t; μ_t, σ_t) at the T chain positions, μ_t and σ_t replayed
teacher-forced from the stored chain with the live assistant; the old terms are
recomputed before the first update (ratio exactly 1 there). The `gspo_clip`
loss (`lrjax.methods.dlr.losses`) averages them over T into one length-normalised
sequence ratio. The main model's tokens are never scored: it gets no gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lrjax import rewards
from lrjax.data.tokenizer import LATENT_TOKENS
from lrjax.latent.base import (ANSWER, LATENT, RuleContext, StepOut, ThoughtRule,
                               embedding_table, thought_positions)
from lrjax.latent.objective import Masks, Objective, Terms
from lrjax.methods.dlr import assistant as asst
from lrjax.methods.dlr.gaussian import contrastive, kl, mean_logpdf
from lrjax.methods.dlr.options import SECTION, dlr_options

NAME = "dlr"


def _opts(ctx: RuleContext) -> tuple[str, float, float]:
  """(assistant preset or 'mlp', clip lo, clip hi) of log σ / s."""
  o = dlr_options(ctx)
  return str(o.assistant), float(o.log_sigma_min), float(o.log_sigma_max)


def _check(ctx: RuleContext) -> None:
  if ctx.latent_id < 0 or ctx.eot_id < 0:
    raise ValueError("the `dlr` rule needs ctx.latent_id and ctx.eot_id (<latent>/<eot> ids)")
  if ctx.num_latent < 1:
    raise ValueError(f"the `dlr` rule needs a chain of >= 1 latents, got {ctx.num_latent}")


def prepare(ctx: RuleContext, params: dict, prompt_ids: jax.Array, prompt_mask: jax.Array,
            key: jax.Array, aux=None) -> dict:
  """The assistant's chain for the batch, as the rule's per-row state."""
  _check(ctx)
  name, lo, hi = _opts(ctx)
  c = asst.chain(name, ctx.model_cfg, params["heads"]["assistant"], params["model"], prompt_ids,
                 prompt_mask, ctx.num_latent, key, ctx.sampling.greedy, lo, hi)
  return {"t": jnp.zeros((prompt_ids.shape[0],), jnp.int32), "z": c.z, "eps": c.eps,
          "logp": mean_logpdf(c.z, c.mu, c.log_sigma)}  # B, B T H, B T H, B T


def init_state(ctx: RuleContext, batch: int) -> dict:
  """Shapes only (the rollout uses `prepare`)."""
  h, n = ctx.model_cfg.hidden_size, max(ctx.num_latent, 1)
  return {"t": jnp.zeros((batch,), jnp.int32), "z": jnp.zeros((batch, n, h), jnp.float32),
          "eps": jnp.zeros((batch, n, h), jnp.float32), "logp": jnp.zeros((batch, n), jnp.float32)}


def record_spec(ctx: RuleContext, batch: int, max_new: int) -> dict:
  h = ctx.model_cfg.hidden_size
  return {k: jax.ShapeDtypeStruct((batch, max_new, h), jnp.float32) for k in ("z", "eps")}


def step(ctx: RuleContext, params: dict, logits: jax.Array, hidden: jax.Array, key: jax.Array,
         state: dict, aux=None) -> StepOut:
  emb = embedding_table(params)  # V H
  t = state["t"]  # B
  latent, eot = t < ctx.num_latent, t == ctx.num_latent  # B, B
  i = jnp.minimum(t, ctx.num_latent - 1)[:, None]  # B 1
  z = jnp.take_along_axis(state["z"], i[..., None], axis=1)[:, 0]  # B H
  eps = jnp.take_along_axis(state["eps"], i[..., None], axis=1)[:, 0]  # B H
  logp = jnp.take_along_axis(state["logp"], i, axis=1)[:, 0]  # B
  y = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # B, the main model decodes greedily
  y = jnp.where(latent, ctx.latent_id, jnp.where(eot, ctx.eot_id, y)).astype(jnp.int32)
  next_embed = jnp.where(latent[:, None], z.astype(emb.dtype), emb[y])  # B H
  span = jnp.where(latent | eot, LATENT, ANSWER).astype(jnp.int8)
  keep = latent[:, None]
  record = {"z": jnp.where(keep, z, 0.0), "eps": jnp.where(keep, eps, 0.0)}
  return StepOut(y, jnp.where(latent, logp, 0.0), latent, span, next_embed, record,
                 dict(state, t=t + 1))


def replay_inputs(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  emb = embedding_table(params)  # V H
  stored = jax.lax.stop_gradient(traj.records["z"]).astype(emb.dtype)  # B N H
  return jnp.where(thought_positions(ctx, traj)[..., None], stored, emb[traj.ids])  # B N H


def chain_stats(ctx: RuleContext, params: dict, traj,
                head: str = "assistant") -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(z, ε, μ, log σ) [B, T, H] of the stored chains, μ and σ replayed with
  params["heads"][head] (differentiable in it; z and ε are constants)."""
  name, lo, hi = _opts(ctx)
  t = ctx.num_latent
  z = jax.lax.stop_gradient(traj.records["z"][:, :t]).astype(jnp.float32)
  eps = jax.lax.stop_gradient(traj.records["eps"][:, :t]).astype(jnp.float32)
  p = params["heads"][head]
  a = asst.replay_features(name, ctx.model_cfg, p, params["model"], traj.prompt_ids,
                           traj.prompt_mask, z)  # B T A
  mu, log_sigma = asst.gaussian(p, a, asst.embed_rms(params["model"]), lo, hi)
  return z, eps, mu, log_sigma


def _pad(x: jax.Array, n: int) -> jax.Array:
  """[B, T] -> [B, N] with zeros after T."""
  return jnp.pad(x, ((0, 0), (0, n - x.shape[1])))


def objective_masks(ctx: RuleContext, traj) -> Masks:
  """Ratio positions: the chain; no old term is stored (recomputed before the update)."""
  pos = thought_positions(ctx, traj)
  return Masks(ratio=pos, stored_old=jnp.zeros_like(pos))


def objective_terms(ctx: RuleContext, params: dict, traj, replay_out, aux=None) -> Terms:
  """s_t = mean_d log N(z_t; μ_t, σ_t) at t < T (0 after)."""
  z, _, mu, log_sigma = chain_stats(ctx, params, traj)
  return Terms(ratio=_pad(mean_logpdf(z, mu, log_sigma), traj.ids.shape[1]))


def chain_kl(ctx: RuleContext, params: dict, traj) -> jax.Array:
  """Mean over rows and T·d of KL(π_θ(·|t) ‖ π_start(·|t)) on the stored chains. []"""
  _, _, mu, ls = chain_stats(ctx, params, traj)
  _, _, mu0, ls0 = chain_stats(ctx, params, traj, head="assistant_start")
  live = thought_positions(ctx, traj)[:, :ctx.num_latent].astype(jnp.float32)  # B T
  per = jnp.mean(kl(mu, ls, jax.lax.stop_gradient(mu0), jax.lax.stop_gradient(ls0)), -1)  # B T
  return (per * live).sum() / jnp.maximum(live.sum(), 1.0)


def chain_contrastive(ctx: RuleContext, params: dict, traj) -> jax.Array:
  """L_cl (`lrjax.methods.dlr.gaussian.contrastive`) on the reparameterised chains
  z̃ = μ_θ + σ_θ·ε (ε stored), in units of the embedding RMS s. []"""
  _, eps, mu, ls = chain_stats(ctx, params, traj)
  chains = (mu + jnp.exp(ls) * eps) / asst.embed_rms(params["model"])  # B T H
  o = dlr_options(ctx)
  return contrastive(chains, int(o.group_size), str(o.similarity), float(o.temperature))


def objective_metrics(ctx: RuleContext, params: dict, traj, aux=None) -> dict:
  """Before the update: the chain KL to the starting assistant, L_cl, and the mean σ / s."""
  return _metrics(ctx, params, traj)


@functools.partial(jax.jit, static_argnums=0)
def _metrics(ctx: RuleContext, params: dict, traj) -> dict:
  _, _, _, ls = chain_stats(ctx, params, traj)
  s = asst.embed_rms(params["model"])
  return {"chain_kl": chain_kl(ctx, params, traj), "contrastive": chain_contrastive(
      ctx, params, traj), "sigma_mean": jnp.mean(jnp.exp(ls)) / s}


def init_heads(ctx: RuleContext, key: jax.Array) -> dict:
  """A fresh assistant, and its frozen copy `assistant_start` (the KL's reference)."""
  return _init_heads(_opts(ctx)[0], ctx.model_cfg, ctx.num_latent,
                     float(dlr_options(ctx).sigma_init), key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_heads(name: str, model_cfg, num_latent: int, sigma_init: float, key: jax.Array) -> dict:
  """One program per assistant shape."""
  head = asst.init_assistant(name, model_cfg, num_latent, key, sigma_init)
  return {"assistant": head, "assistant_start": jax.tree.map(jnp.copy, head)}


def dual_reward(task_reward, ctx: RuleContext):
  """DLR's training reward R = R_corr + λ·R_fmt, each ±1 (λ = `dlr.lambda_format`):
  R_corr = +1 iff the task reward says correct, R_fmt = +1 iff exactly one '####'
  with an answer after it. With λ < 1, R > 0 exactly when the answer is correct."""
  lam = float(dlr_options(ctx).lambda_format)

  def fn(completion: str, answer: str) -> float:
    r_corr = 1.0 if task_reward(completion, answer) > 0.5 else -1.0
    r_fmt = 1.0 if rewards.format_hash(completion, answer) > 0.5 else -1.0
    return r_corr + lam * r_fmt
  return fn


def extra_positions(num_latent: int) -> int:
  return num_latent + 1  # the chain and the forced <eot>


def prompt_suffix(ctx: RuleContext) -> tuple[int, ...]:
  if ctx.bot_id < 0:
    raise ValueError("the `dlr` rule needs ctx.bot_id (the <bot> id) to end every prompt")
  return (ctx.bot_id,)


DLR_OBJECTIVE = Objective(
    masks=objective_masks, terms=objective_terms, heads=("assistant", "assistant_start"),
    config_section=SECTION, metrics=objective_metrics, init_heads=init_heads, reward=dual_reward,
    correct_above=0.0)  # R > 0 exactly when correct (lambda_format < 1, validated)

DLR = ThoughtRule(
    step=step, replay_inputs=replay_inputs, init_state=init_state, record_spec=record_spec,
    objective=DLR_OBJECTIVE, prompt_suffix=prompt_suffix, special_tokens=LATENT_TOKENS,
    config_section=SECTION, extra_positions=extra_positions,
    prepare=prepare)
