"""HRPO: the `hybrid` rule, gated hybrid latent reasoning (Yue et al., arXiv 2505.18454;
official code Yueeeeeeee/HRPO); docs/hrpo.md.

    p_t = softmax(top-k(l_t / τ)),  y_t ~ p_t,  logp_t = log_softmax(l_t/τ)[y_t]
    ĥ_t = (p_t E) / ||p_t||_2                                   soft embedding
    ê = E[y_t],  r = σ(W_r ê + b_r),  i = σ(W_i ê + b_i)
    a = exp(−c · softplus(−Λ) · r),  c = 8
    x_{t+1} = a ⊙ ê + sqrt(1 − a² + 1e-8) ⊙ (i ⊙ ĥ_t)   inside the think span, else ê

Λ is initialised from u ~ U[r_min, 0.999] as Λ = −log(u^(−1/c) − 1), so that
a = u^r (mostly the token embedding at the start). The think span runs from
the first response token until the delimiter `####` has been generated; the
flag is updated AFTER each emitted token, so the input following the token
that completes `####` and everything after are plain embeddings.
Greedy evaluation picks argmax l_t but still builds ĥ_t with the training τ.
The truncation is the rule's `top_k` (HF default 50, as in the official code)
and ctx.sampling.top_p; ctx.sampling.top_k is not used by this rule.

Rule settings (ctx.rule_cfg, the `hrpo` config section, `HRPOOptions`): top_k (50),
r_min (0.99), gate_c (c, 8.0).
aux: {"delimiter": tables from `lrjax.data.delimiter.delimiter_tables`}.
Records: `soft` ĥ_t [B, H] float32 (zeros where the gate is off) and `think`
[B] bool (the gate is applied to x_{t+1}).
The learner scores the sampled token, log_softmax(l_t/τ)[y_t], at every
position (think span and answer) inside the ratio, as `token` does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lrjax import config_checks as checks
from lrjax.data.delimiter import delimiter_step, delimiter_tables
from lrjax.latent.base import (ANSWER, LATENT, RuleContext, StepOut, ThoughtRule,
                               embedding_table, rule_options)
from lrjax.latent.objective import TOKEN_OBJECTIVE
from lrjax.latent.readable import token_text
from lrjax.method import Method, Options
from lrjax.model.config import ModelConfig
from lrjax.sampling import gumbel_max, if_greedy, process_logits, token_logp

NAME = "hybrid"
SECTION = "hrpo"


@dataclasses.dataclass(frozen=True)
class HRPOOptions(Options):
  """The `hrpo` config section: the `hybrid` rule's settings."""
  gate_c: float = 8.0  # c of the gate a = exp(-c softplus(-Λ) r) (the paper's)
  r_min: float = 0.99  # Λ's init draws u ~ U[r_min, 0.999] (the paper's)
  top_k: int = 50  # the soft embedding's truncation (HF's default, as the official code)

  CHECKS = {"gate_c": (checks.positive, ()),
            "r_min": (checks.in_unit_interval(False, False), ()),
            "top_k": (checks.positive_int, ())}

EPS = 1e-8


def delimiter_aux(tokenizer: Any, delimiter: str = "####", vocab_size: int | None = None) -> dict:
  """aux for this rule: the token-id automaton tables that detect `delimiter` inside jit.

  Tables shorter than the model's vocabulary are extended inside `step` (ids
  past the tokenizer have no text: the matcher state is kept).
  """
  tables = delimiter_tables(tokenizer, delimiter, vocab_size)
  return {"delimiter": jax.tree.map(jnp.asarray, tables)}


def _fit_tables(tables: dict, vocab_size: int) -> dict:
  """Pads {'next' [V', m], 'completed' [V', m]} to vocab_size rows (no-text tokens)."""
  extra = vocab_size - tables["next"].shape[0]
  if extra <= 0:
    return tables
  m = tables["next"].shape[1]
  keep = jnp.broadcast_to(jnp.arange(m, dtype=tables["next"].dtype), (extra, m))  # extra m
  return {"next": jnp.concatenate([jnp.asarray(tables["next"]), keep]),
          "completed": jnp.concatenate([jnp.asarray(tables["completed"]),
                                        jnp.zeros((extra, m), bool)])}


def lambda_init(key: jax.Array, hidden_size: int, r_min: float = 0.99, c: float = 8.0) -> jax.Array:
  """Λ [H] float32 with u ~ U[r_min, 0.999], Λ = −log(u^(−1/c) − 1), hence a = u^r."""
  u = jax.random.uniform(key, (hidden_size,), jnp.float32, r_min, 0.999)  # H
  return -jnp.log(u ** (-1.0 / c) - 1.0)


def init_params(model_cfg: ModelConfig, rule_cfg: Mapping | tuple, key: jax.Array) -> dict:
  """{"gate_r", "gate_i": {"kernel" [H,H] ~ N(0, 0.02), "bias" [H] = 0}, "lambda" [H]}."""
  o = rule_options(NAME, rule_cfg)
  h = model_cfg.hidden_size
  kr, ki, kl = jax.random.split(key, 3)
  dense = lambda k: {"kernel": 0.02 * jax.random.normal(k, (h, h), jnp.float32),
                     "bias": jnp.zeros((h,), jnp.float32)}
  return {"gate_r": dense(kr), "gate_i": dense(ki),
          "lambda": lambda_init(kl, h, o["r_min"], o["gate_c"])}


def gate(params_rule: dict, e: jax.Array, c: float = 8.0) -> tuple[jax.Array, jax.Array]:
  """(a, i) for token embeddings e [..., H], float32 [..., H] each.

  a = exp(−c · softplus(−Λ) · σ(W_r e + b_r)),  i = σ(W_i e + b_i)  (HRPO eq. for the gate).
  """
  e = e.astype(jnp.float32)  # ... H
  r = jax.nn.sigmoid(e @ params_rule["gate_r"]["kernel"] + params_rule["gate_r"]["bias"])  # ... H
  i = jax.nn.sigmoid(e @ params_rule["gate_i"]["kernel"] + params_rule["gate_i"]["bias"])  # ... H
  a = jnp.exp(-c * jax.nn.softplus(-params_rule["lambda"].astype(jnp.float32)) * r)  # ... H
  return a, i


def mix(params_rule: dict, e: jax.Array, soft: jax.Array, think: jax.Array,
        c: float = 8.0) -> jax.Array:
  """x = a ⊙ e + sqrt(1 − a² + 1e-8) ⊙ (i ⊙ soft) where think, else e; float32 [..., H]."""
  a, i = gate(params_rule, e, c)  # ... H
  e = e.astype(jnp.float32)
  mixed = a * e + jnp.sqrt(1.0 - a * a + EPS) * (i * soft.astype(jnp.float32))  # ... H
  return jnp.where(think[..., None], mixed, e)


def soft_embedding(probs: jax.Array, emb: jax.Array) -> jax.Array:
  """ĥ = (p E) / ||p||_2: probs [..., V], E [V, H] -> float32 [..., H]."""
  probs = probs.astype(jnp.float32)
  h = probs @ emb.astype(jnp.float32)  # ... H
  return h / jnp.linalg.norm(probs, axis=-1, keepdims=True)


def init_state(ctx: RuleContext, batch: int) -> dict:
  return {"think": jnp.ones((batch,), bool),  # B, gate on for the next input
          "run": jnp.zeros((batch,), jnp.int32)}  # B, delimiter matcher state


def record_spec(ctx: RuleContext, batch: int, max_new: int) -> dict:
  h = ctx.model_cfg.hidden_size
  return {"soft": jax.ShapeDtypeStruct((batch, max_new, h), jnp.float32),
          "think": jax.ShapeDtypeStruct((batch, max_new), bool)}


def step(ctx: RuleContext, params: dict, logits: jax.Array, hidden: jax.Array, key: jax.Array,
         state: dict, aux: dict) -> StepOut:
  o = rule_options(NAME, ctx.rule_cfg)
  tau = ctx.sampling.temperature
  emb = embedding_table(params)  # V H
  x = process_logits(logits, tau, o["top_k"], ctx.sampling.top_p)  # B V
  y = if_greedy(ctx.sampling.greedy, lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
                lambda: gumbel_max(key, x))  # B, = jax.random.categorical(key, x), cheaper argmax
  soft = soft_embedding(jax.nn.softmax(x, axis=-1), emb)  # B H
  tables = _fit_tables(aux["delimiter"], emb.shape[0])
  run, completed = delimiter_step(tables, state["run"], y)  # B, B
  think = state["think"] & ~completed  # B, gate on x_{t+1}
  next_embed = mix(params["rule"], emb[y], soft, think, o["gate_c"]).astype(emb.dtype)  # B H
  span = jnp.where(state["think"], LATENT, ANSWER).astype(jnp.int8)  # B
  record = {"soft": jnp.where(think[:, None], soft, 0.0), "think": think}
  b = y.shape[0]
  return StepOut(y, token_logp(logits, y, tau), jnp.ones((b,), bool), span, next_embed, record,
                 {"think": think, "run": run.astype(jnp.int32)})


def replay_inputs(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  """x_1..x_N from stored ĥ (no gradient) and the live gate and embedding table."""
  emb = embedding_table(params)  # V H
  soft = jax.lax.stop_gradient(traj.records["soft"])  # B N H
  c = rule_options(NAME, ctx.rule_cfg)["gate_c"]
  x = mix(params["rule"], emb[traj.ids], soft, traj.records["think"], c)
  return x.astype(emb.dtype)  # B N H


def hybrid_ratio(ctx: RuleContext, params: dict, traj, aux=None) -> jax.Array:
  """HRPO's hidden-state ratio: mean of sqrt(1 − a²) over think positions (0 if none)."""
  return _hybrid_ratio(rule_options(NAME, ctx.rule_cfg)["gate_c"], params["rule"],
                       embedding_table(params), traj.ids, traj.records["think"])


@functools.partial(jax.jit, static_argnums=0)
def _hybrid_ratio(c: float, params_rule: dict, emb: jax.Array, ids: jax.Array,
                  think: jax.Array) -> jax.Array:
  """One program per shape (op by op, each small op would compile on its own)."""
  a, _ = gate(params_rule, emb[ids], c)  # B N H
  ratio = jnp.sqrt(1.0 - a * a + EPS).mean(-1)  # B N
  return jnp.sum(jnp.where(think, ratio, 0.0)) / jnp.maximum(jnp.sum(think), 1)


def metrics(ctx: RuleContext, params: dict, traj, aux=None) -> dict:
  return {"hybrid_ratio": hybrid_ratio(ctx, params, traj, aux)}


def readable(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  """At every think-span position: "token" (the sampled token) and "token_share", the
  mean over features of the gate a² (the token embedding's share of the mixed input's
  energy; 1 = the plain token)."""
  think = np.asarray(traj.records["think"][row])
  ids = np.asarray(traj.ids[row])
  ts = np.flatnonzero(think).tolist()
  if not ts:
    return []
  emb = np.asarray(params["model"]["embed"]["embedding"], np.float32)
  a, _ = gate(params["rule"], emb[ids[ts]], rule_options(ctx.rule, ctx.rule_cfg)["gate_c"])  # T H
  share = np.mean(np.square(np.asarray(a, np.float64)), axis=-1)  # T
  return [{"t": t, "token": token_text(tokenizer, ids[t]), "token_share": round(float(s), 4)}
          for t, s in zip(ts, share)]


HYBRID = ThoughtRule(
    step=step, replay_inputs=replay_inputs, init_state=init_state, init_params=init_params,
    record_spec=record_spec, make_aux=lambda tokenizer, rule_cfg: delimiter_aux(tokenizer),
    metrics=metrics, objective=TOKEN_OBJECTIVE,
    config_section=SECTION)

# HRPO trains with the generic `reinforce_onpolicy` loss and `token_inputs` KL reference
# (configs/hrpo.py); its own part is the rule.
HRPO = Method(name="hrpo", rules={NAME: HYBRID}, readable={NAME: readable},
              options={SECTION: HRPOOptions}, prompt="hrpo")
