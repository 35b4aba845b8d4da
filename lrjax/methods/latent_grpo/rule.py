"""`topk_gumbel`: Latent-GRPO's noisy top-K latent rollout and its Gumbel-density
surrogate (Latent-GRPO, arXiv 2604.27998; official code DJC-GO-SOLO/Latent-GRPO);
docs/latent_grpo.md.

Latent mode runs from the first response position until the emitted token is
the end-of-thinking token e (the first token of `latent_grpo.end_token`). In latent
mode, with ℓ_t = log_softmax(l_t) at temperature 1 in float32:

    M_t   = the smallest top set of ℓ_t with mass >= top_p, at least K tokens   (nucleus)
    g_v   = (clip(G_v, −1.5, 3) + 1.5) · noise_scale,  G_v ~ Gumbel(0, 1)       (one-sided, g >= 0)
    y_v   = ℓ_{t,v} + g_v on M_t  (−inf elsewhere);  S_t = top-K of y             (g = 0 greedy)
    w_t   = softmax(y_{S_t} / τ_gs);  x_{t+1} = Σ_k w_{t,k} E[v_{t,k}]
    shown token = v_1 = argmax y  (the top noisy score)

The step that shows e is latent (it is scored by the surrogate) but its next
input is E[e]; after it, answer tokens are sampled with the rollout's own
sampling settings (temperature / top-k / top-p of ctx.sampling), x_{t+1} = E[y_t].
The record holds S_t (`ids`), y_{S_t} (`scores`) and `soft` (x_{t+1} is the
mixture), enough to rebuild every input exactly (`replay_inputs`).

What the learner scores, both inside the PPO ratio (old terms recomputed by
the learner before the first update, on the same stored inputs):

    latent:  log p_θ = (1/K) Σ_k f(y_k − ℓ^θ_{v_k}),  f(g) = −g − e^{−g}     (`gumbel_surrogate`)
    answer:  log_softmax(l^θ_t / T)[y_t]

f is the log-density of the standard Gumbel: at the rollout's parameters
g' = y − ℓ = g is the noise that was drawn. Where A <= 0 and g' < 0 the
gradient is that of g ↦ f(−g) (conditional straight-through): same sign,
magnitude capped at 1/K, so an update that pushed ℓ above a stored score
cannot blow up on a negative sample.

Rule settings (ctx.rule_cfg, the `latent_grpo` config section, `LatentGRPOOptions`):
top_k (K, 10), top_p (0.95), tau (τ_gs, 1.0), noise_scale (1.0), end_token ("####").
aux: {"end_id": int32 []}, the id of e (`make_aux`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lrjax import config_checks as checks
from lrjax.latent.base import (ANSWER, LATENT, RuleContext, StepOut, ThoughtRule,
                               embedding_table, latent_top_weight, mix_inputs, record_width,
                               rule_options)
from lrjax.latent.objective import Masks, Objective, Terms
from lrjax.latent.readable import mix_pairs
from lrjax.method import Options
from lrjax.model.vocab import record_and_token_logp
from lrjax.sampling import (first_argmax, gumbel, if_greedy, kth_largest, sample, token_logp,
                            top_k_ids, top_p_cut)

NAME = "topk_gumbel"
SECTION = "latent_grpo"


@dataclasses.dataclass(frozen=True)
class LatentGRPOOptions(Options):
  """The `latent_grpo` config section: the `topk_gumbel` rule's settings (the paper's,
  but the end token: its "</think>", the `:paper` preset's)."""
  top_k: int = 10  # K, the candidates mixed per latent input
  top_p: float = 0.95
  tau: float = 1.0  # τ_gs of the mixture weights
  noise_scale: float = 1.0  # s of the one-sided Gumbel noise
  end_token: str = "####"  # its first token e ends the latent span

  CHECKS = {"top_k": (checks.positive_int, ()),
            "top_p": (checks.in_unit_interval(False, True), ()),
            "tau": (checks.positive, ()), "noise_scale": (checks.non_negative, ()),
            "end_token": (checks.non_empty_str, ())}
NOISE_LOW, NOISE_HIGH = -1.5, 3.0  # the clamp of the Gumbel draw; g = (clip + 1.5) * scale


def one_sided_noise(key: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
  """g = (clip(G, −1.5, 3) + 1.5) · scale, G ~ Gumbel(0, 1): in [0, 4.5 · scale]."""
  return (jnp.clip(gumbel(key, shape), NOISE_LOW, NOISE_HIGH) - NOISE_LOW) * scale


def nucleus(logp: jax.Array, top_p: float, min_keep: int) -> jax.Array:
  """bool [..., V]: the smallest top set of log-probs `logp` whose mass reaches
  top_p, and at least the `min_keep` largest (ties at the cut are kept)."""
  v = logp.shape[-1]
  if top_p >= 1.0 or min_keep >= v:
    return jnp.ones(logp.shape, bool)
  # both are top sets: their union is the one with the lower cut (sort-free, sampling.py)
  cut = jnp.minimum(top_p_cut(logp, top_p), kth_largest(logp, min_keep))  # ... 1
  return logp >= cut


def noisy_top_k(logits: jax.Array, k: int, top_p: float, noise: jax.Array | None
                ) -> tuple[jax.Array, jax.Array]:
  """(S [..., K] int32 in id order, y_S [..., K] float32): the top-K of
  y = ℓ + noise on the nucleus, ℓ = log_softmax(logits) (noise None: y = ℓ, and
  the nucleus does not matter, it always holds the top K)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # ... V
  if noise is None:
    y = logp
  else:
    y = jnp.where(nucleus(logp, top_p, k), logp + noise, -jnp.inf)  # ... V
  ids = top_k_ids(y, k)  # ... K
  return ids, jnp.take_along_axis(y, ids, axis=-1)


def weights(scores: jax.Array, tau: float) -> jax.Array:
  """w = softmax(y_S / τ_gs) [..., K]."""
  return jax.nn.softmax(scores / tau, axis=-1)


def gumbel_surrogate(logp: jax.Array, scores: jax.Array, advantages: Any = None) -> jax.Array:
  """Latent-GRPO's latent-step log-likelihood (arXiv 2604.27998), [B, N].

      g'_k = scores_k − logp_k,   value = (1/K) Σ_k f(g'_k),   f(g) = −g − e^{−g}

  logp [B, N, K]: log_softmax(l) at temperature 1 of the recorded ids; scores
  [B, N, K]: the stored noisy scores y; advantages: broadcastable to [B, N]
  ([B] or [B, N]; None = no straight-through). Gradient w.r.t. logp_k:
  (1 − e^{−g'_k}) / K, except where A <= 0 and g'_k < 0, where it is
  (e^{g'_k} − 1) / K (the gradient of g ↦ f(−g); the value is unchanged).
  """
  logp = logp.astype(jnp.float32)
  g = scores.astype(jnp.float32) - logp  # B N K
  f = -g - jnp.exp(-g)  # B N K
  if advantages is not None:
    a = jnp.asarray(advantages, jnp.float32)
    a = a[:, None] if a.ndim == 1 else a
    capped = (jnp.broadcast_to(a, g.shape[:-1])[..., None] <= 0) & (g < 0)  # B N K
    gc = jnp.minimum(g, 0.0)  # the capped branch only reads g < 0 (no overflow elsewhere)
    h = gc - jnp.exp(gc)  # f(−g)
    f = jnp.where(capped, jax.lax.stop_gradient(f) + h - jax.lax.stop_gradient(h), f)
  return jnp.mean(f, axis=-1)


# --------------------------------------------------------------------------- the rule


def make_aux(tokenizer: Any, rule_cfg: Mapping) -> dict:
  """{"end_id": the first token of latent_grpo.end_token} (as the official code takes the
  first sub-token of `</think>`)."""
  text = rule_options(NAME, rule_cfg)["end_token"]
  ids = tokenizer.encode(text, add_special_tokens=False)
  if not ids:
    raise ValueError(f"config.{SECTION}.end_token={text!r} encodes to no token")
  return {"end_id": jnp.asarray(ids[0], jnp.int32)}


def init_state(ctx: RuleContext, batch: int) -> dict:
  return {"thinking": jnp.ones((batch,), bool)}  # B, still in latent mode


def record_spec(ctx: RuleContext, batch: int, max_new: int) -> dict:
  k = record_width(ctx)
  return {"ids": jax.ShapeDtypeStruct((batch, max_new, k), jnp.int32),
          "scores": jax.ShapeDtypeStruct((batch, max_new, k), jnp.float32),
          "soft": jax.ShapeDtypeStruct((batch, max_new), bool)}


def step(ctx: RuleContext, params: dict, logits: jax.Array, hidden: jax.Array, key: jax.Array,
         state: dict, aux=None) -> StepOut:
  if aux is None or "end_id" not in aux:
    raise ValueError("the topk_gumbel rule needs aux={'end_id': ...}: pass "
                     "lrjax.latent.rule_aux('topk_gumbel', tokenizer, rule_cfg)")
  o = rule_options(NAME, ctx.rule_cfg)
  emb = embedding_table(params)  # V H
  k = record_width(ctx)
  k_noise, k_token = jax.random.split(key)
  ids, scores = if_greedy(  # B K, B K; noise [B, V] only when sampling
      ctx.sampling.greedy, lambda: noisy_top_k(logits, k, o["top_p"], None),
      lambda: noisy_top_k(logits, k, o["top_p"],
                          one_sided_noise(k_noise, logits.shape, o["noise_scale"])))
  shown = jnp.take_along_axis(ids, first_argmax(scores)[:, None], axis=-1)[:, 0]  # B, v_1
  drawn = sample(k_token, logits, ctx.sampling)  # B, the answer token
  latent = state["thinking"]  # B
  y = jnp.where(latent, shown, drawn)  # B
  soft = latent & (y != aux["end_id"])  # B, x_{t+1} is the mixture
  mix = mix_inputs(emb, ids, weights(scores, o["tau"]))  # B H
  next_embed = jnp.where(soft[:, None], mix, emb[y].astype(jnp.float32)).astype(emb.dtype)
  record = {"ids": jnp.where(latent[:, None], ids, 0),
            "scores": jnp.where(latent[:, None], scores, 0.0), "soft": soft}
  span = jnp.where(latent, LATENT, ANSWER).astype(jnp.int8)  # B
  return StepOut(y, token_logp(logits, y, ctx.sampling.temperature), ~latent, span, next_embed,
                 record, {"thinking": soft})


def replay_inputs(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  """x_1..x_N: Σ_k w_k E[v_k] (w from the stored scores, no gradient; live E) where
  the record says `soft`, E[y_t] elsewhere."""
  emb = embedding_table(params)  # V H
  w = jax.lax.stop_gradient(weights(traj.records["scores"],
                                    rule_options(NAME, ctx.rule_cfg)["tau"]))
  mix = mix_inputs(emb, traj.records["ids"], w)  # B N H
  x = jnp.where(traj.records["soft"][..., None], mix, emb[traj.ids].astype(jnp.float32))
  return x.astype(emb.dtype)  # B N H


def objective_masks(ctx: RuleContext, traj) -> Masks:
  """Every latent and sampled answer position inside the ratio; all old terms recomputed."""
  ratio = (traj.span == LATENT) | traj.sampled  # B N
  return Masks(ratio=ratio, stored_old=jnp.zeros_like(ratio))


def objective_terms(ctx: RuleContext, params: dict, traj, replay_out, aux=None,
                    advantages=None) -> Terms:
  """latent: `gumbel_surrogate` of the recorded ids; answer: log_softmax(l_t / T)[y_t]. [B, N]
  (l_t = h_t W read in vocabulary chunks, `lrjax.model.vocab`)."""
  picked, text = record_and_token_logp(ctx.model_cfg, params["model"], replay_out.hidden,
                                       traj.records["ids"], traj.ids,
                                       ctx.sampling.temperature)  # B N K, B N
  latent = gumbel_surrogate(picked, jax.lax.stop_gradient(traj.records["scores"]), advantages)
  return Terms(ratio=jnp.where(traj.span == LATENT, latent, text))


def metrics(ctx: RuleContext, params: dict, traj, aux=None) -> dict:
  """latent_top_weight: mean over latent positions of max_k w (1 = one-hot inputs)."""
  return latent_top_weight(traj, weights(traj.records["scores"],
                                         rule_options(NAME, ctx.rule_cfg)["tau"]))


def readable(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  """"mix": each soft input's (token, weight) pairs, w = softmax(scores / τ), largest first."""
  tau = rule_options(ctx.rule, ctx.rule_cfg)["tau"]
  rec = traj.records
  out = []
  for t in np.flatnonzero(np.asarray(rec["soft"][row])).tolist():
    s = np.asarray(rec["scores"][row, t], np.float64) / tau
    w = np.exp(s - s.max())
    out.append({"t": t, "mix": mix_pairs(tokenizer, np.asarray(rec["ids"][row, t]),
                                         w / w.sum())})
  return out


TOPK_GUMBEL = ThoughtRule(
    step=step, replay_inputs=replay_inputs, init_state=init_state, record_spec=record_spec,
    make_aux=make_aux, metrics=metrics,
    objective=Objective(masks=objective_masks, terms=objective_terms, uses_advantages=True),
    config_section=SECTION)
