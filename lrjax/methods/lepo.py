"""LEPO: the `gumbel_soft` rule, a Gumbel-softmax latent rollout and its unified objective
(Latent Reasoning Policy Optimization, arXiv 2604.17892; official code
YuyanZhou/lepo); docs/lepo.md.

With x_t = l_t / T (T = ctx.sampling.temperature), the candidates v_t = the
top-k ids of x_t and s_t = x_t[v_t], −inf where top-p of their renormalised
distribution cuts (`candidates`: HF's warper order, temperature then top-k then
top-p; every other id has probability 0), and L = `latent_len`:

    t <  L (latent):  z_t = softmax((s_t + g_t) / τ),  g_t ~ Gumbel(0, 1) iid  (g = 0 greedy)
                      y_t = argmax s_t  (shown, not sampled),  x_{t+1} = Σ_k z_{t,k} E[v_{t,k}]
    t >= L (text):    y_t ~ softmax(s_t)  (argmax l_t greedy),  x_{t+1} = E[y_t]

z_t over the whole vocabulary is exactly zero outside v_t, so the record
(`ids` v_t and `z` z_t, [B, K] at latent positions, zeros after) rebuilds
x_{t+1} exactly: the rollout makes its next input from the record with the
same function the replay uses (`mix_inputs`). A row may end with eos inside
its latent positions.

What the learner scores (`objective`), on one teacher-forced replay of the
stored inputs (l^θ the replayed logits, A the advantage):

    t <  L:  A · CE_t,  CE_t = −Σ_k z_{t,k} log_softmax(l^θ_t)[v_{t,k}]  (direct term:
             raw logits, no temperature, no truncation, no ratio, no clip)
    t >= L:  log_softmax(l^θ_t / T)[y_t] inside the policy loss's ratio (and its KL)

with the configured aggregation over both (LEPO: `seq_mean`). Every term,
old and reference ones included, is computed on the same stored inputs.

Rule settings (ctx.rule_cfg, the `lepo` config section, `LEPOOptions`): tau (τ, 0.3),
latent_len (L, 64), top_k (K, 30), top_p (0.95); they set the processing of
every position, so ctx.sampling.top_k / top_p are not read by this rule.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lrjax import config_checks as checks
from lrjax.latent.base import (ANSWER, LATENT, RuleContext, StepOut, ThoughtRule,
                               embedding_table, latent_top_weight, mix_inputs, record_width,
                               rule_options)
from lrjax.latent.objective import Masks, Objective, Terms
from lrjax.latent.readable import mix_pairs
from lrjax.method import Method, Options
from lrjax.model.vocab import record_and_token_logp
from lrjax.sampling import first_argmax, gumbel, token_logp, top_k_ids

NAME = "gumbel_soft"
SECTION = "lepo"


@dataclasses.dataclass(frozen=True)
class LEPOOptions(Options):
  """The `lepo` config section: the `gumbel_soft` rule's settings (the paper's)."""
  tau: float = 0.3  # τ of the Gumbel-Softmax mixture
  latent_len: int = 64  # L, latent positions per rollout
  top_k: int = 30  # K, candidates of every position
  top_p: float = 0.95

  CHECKS = {"tau": (checks.positive, ()), "latent_len": (checks.positive_int, ()),
            "top_k": (checks.positive_int, ()),
            "top_p": (checks.in_unit_interval(False, True), ())}


def candidates(logits: jax.Array, temperature: float, top_k: int,
               top_p: float) -> tuple[jax.Array, jax.Array]:
  """The processed logits on the top-k: (ids [..., K] int32, s [..., K] float32).

  HF's warper order: x = l / T; the K = top_k largest x (`top_k_ids`); top-p on
  their renormalised distribution: s_i = x_i where the mass of the strictly
  larger candidates is < top_p (the largest is always kept), else −inf. Every
  id outside `ids` has s = −inf. This is `lrjax.sampling.process_logits`
  restricted to the top-k, except that a tie at the k-th value keeps exactly k
  entries (lower ids first) where process_logits keeps all tied ones.
  """
  x = logits.astype(jnp.float32) / temperature  # ... V
  ids = top_k_ids(x, top_k)  # ... K
  s = jnp.take_along_axis(x, ids, axis=-1)  # ... K
  if top_p < 1.0:
    p = jax.nn.softmax(s, axis=-1)  # ... K
    larger = s[..., None, :] > s[..., :, None]  # ... K K: [i, j] = s_j > s_i
    before = jnp.sum(jnp.where(larger, p[..., None, :], 0.0), axis=-1)  # ... K
    s = jnp.where(before < top_p, s, -jnp.inf)
  return ids, s


def mixture(s: jax.Array, tau: float, noise: jax.Array | None = None) -> jax.Array:
  """z = softmax((s + g) / τ) over the candidates, g = `noise` (None: 0). [..., K]

  Candidates at −inf (cut by top-p) get z = 0 exactly.
  """
  return jax.nn.softmax((s if noise is None else s + noise) / tau, axis=-1)


def soft_cross_entropy(logits: jax.Array, ids: jax.Array, weights: jax.Array) -> jax.Array:
  """CE = −Σ_k weights_k · log_softmax(logits)[ids_k] on the raw logits.

  logits [B, N, V]; ids, weights [B, N, K] -> float32 [B, N]. No temperature, no
  truncation (LEPO's latent-position loss, arXiv 2604.17892). Repeated ids add up.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # B N V
  picked = jnp.take_along_axis(logp, ids.astype(jnp.int32), axis=-1)  # B N K
  return -jnp.sum(weights.astype(jnp.float32) * picked, axis=-1)


def init_state(ctx: RuleContext, batch: int) -> dict:
  return {"t": jnp.zeros((batch,), jnp.int32)}  # B, steps taken


def record_spec(ctx: RuleContext, batch: int, max_new: int) -> dict:
  k = record_width(ctx)
  return {"ids": jax.ShapeDtypeStruct((batch, max_new, k), jnp.int32),
          "z": jax.ShapeDtypeStruct((batch, max_new, k), jnp.float32)}


def step(ctx: RuleContext, params: dict, logits: jax.Array, hidden: jax.Array, key: jax.Array,
         state: dict, aux=None) -> StepOut:
  o = rule_options(NAME, ctx.rule_cfg)
  emb = embedding_table(params)  # V H
  temperature, greedy = ctx.sampling.temperature, ctx.sampling.greedy
  k = record_width(ctx)
  ids, s = candidates(logits, temperature, k, o["top_p"])  # B K, B K
  g = None if greedy else gumbel(key, s.shape)  # B K, one draw for either branch
  z = mixture(s, o["tau"], g)  # B K
  latent = state["t"] < o["latent_len"]  # B
  pick = lambda c: jnp.take_along_axis(ids, c[:, None], axis=-1)[:, 0]  # B
  shown = pick(first_argmax(s))  # B, argmax s_t (= argmax l_t, lowest id on ties)
  y = jnp.where(latent, shown, shown if greedy else pick(first_argmax(s + g)))  # B
  soft = mix_inputs(emb, ids, z)  # B H
  next_embed = jnp.where(latent[:, None], soft, emb[y].astype(jnp.float32)).astype(emb.dtype)
  record = {"ids": jnp.where(latent[:, None], ids, 0), "z": jnp.where(latent[:, None], z, 0.0)}
  span = jnp.where(latent, LATENT, ANSWER).astype(jnp.int8)  # B
  return StepOut(y, token_logp(logits, y, temperature), ~latent, span, next_embed, record,
                 {"t": state["t"] + 1})


def _latent_cols(ctx: RuleContext, n: int) -> int:
  """Response columns that can be latent: min(L, N)."""
  return min(int(rule_options(NAME, ctx.rule_cfg)["latent_len"]), n)


def replay_inputs(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  """x_1..x_N: Σ_k z_k E[ids_k] (stored z, no gradient; live E) at latent positions,
  E[y_t] after them."""
  emb = embedding_table(params)  # V H
  n = traj.ids.shape[1]
  m = _latent_cols(ctx, n)
  x = emb[traj.ids].astype(jnp.float32)  # B N H
  z = jax.lax.stop_gradient(traj.records["z"][:, :m])  # B m K
  soft = mix_inputs(emb, traj.records["ids"][:, :m], z)  # B m H
  latent = (traj.span[:, :m] == LATENT)[..., None]  # B m 1
  x = x.at[:, :m].set(jnp.where(latent, soft, x[:, :m]))
  return x.astype(emb.dtype)  # B N H


def objective_masks(ctx: RuleContext, traj) -> Masks:
  """Direct (soft CE) terms at the latent positions, ratio terms at the sampled text."""
  return Masks(ratio=traj.sampled, stored_old=traj.sampled, direct=traj.span == LATENT)


def objective_terms(ctx: RuleContext, params: dict, traj, replay_out, aux=None) -> Terms:
  """ratio: log_softmax(l_t / T)[y_t];  direct: −CE_t = Σ_k z_k log_softmax(l_t)[ids_k]
  (0 past the latent columns). [B, N] each; l_t = h_t W read in vocabulary chunks
  (`lrjax.model.vocab`)."""
  b, n = traj.ids.shape
  m = _latent_cols(ctx, n)
  picked, text = record_and_token_logp(ctx.model_cfg, params["model"], replay_out.hidden,
                                       traj.records["ids"], traj.ids,
                                       ctx.sampling.temperature)  # B N K, B N
  z = jax.lax.stop_gradient(traj.records["z"][:, :m]).astype(jnp.float32)  # B m K
  soft = jnp.sum(z * picked[:, :m], axis=-1)  # B m
  direct = jnp.concatenate([soft, jnp.zeros((b, n - m), jnp.float32)], axis=1)  # B N
  return Terms(ratio=text, direct=direct)


def metrics(ctx: RuleContext, params: dict, traj, aux=None) -> dict:
  """latent_top_weight: mean over latent positions of max_k z (1 = one-hot inputs)."""
  return latent_top_weight(traj, traj.records["z"])


def readable(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  """"mix": the recorded (token, weight z) pairs of each latent input, largest first."""
  span, rec = np.asarray(traj.span[row]), traj.records
  return [{"t": t, "mix": mix_pairs(tokenizer, np.asarray(rec["ids"][row, t]),
                                    np.asarray(rec["z"][row, t], np.float64))}
          for t in np.flatnonzero(span == LATENT).tolist()]


GUMBEL_SOFT = ThoughtRule(
    step=step, replay_inputs=replay_inputs, init_state=init_state, record_spec=record_spec,
    metrics=metrics, objective=Objective(masks=objective_masks, terms=objective_terms,
                                         has_direct=True),
    config_section=SECTION)

LEPO = Method(name="lepo", rules={NAME: GUMBEL_SOFT}, readable={NAME: readable},
              options={SECTION: LEPOOptions}, prompt="lepo")
