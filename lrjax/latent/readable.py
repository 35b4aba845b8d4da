"""Latent thoughts made readable: what a rule fed back at each latent position.

`READABLE[rule](ctx, params, traj, row, tokenizer) -> list[dict]` describes the
latent positions of one trajectory row (numpy arrays on the host), one dict
per position t with its index "t" and

* `gumbel_soft` (LEPO), `topk_gumbel` (Latent-GRPO): "mix", the recorded
  (token, weight) pairs of the soft input, largest weight first;
* `hidden` (Coconut, LatR): "nearest", the 3 vocabulary tokens whose
  embeddings are nearest to the fed-back hidden state by cosine, with the
  similarities;
* `hybrid` (HRPO): "token" (the sampled token) and "token_share", the mean
  over features of the gate a² (the token embedding's share of the mixed
  input's energy; 1 = the plain token), at every think-span position.

`readable(ctx, params, traj, row, tokenizer)` returns [] for a rule without an
entry (`token`).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from lrjax.latent.base import LATENT, RuleContext, rule_options
from lrjax.registry import Registry

READABLE: Registry[Callable[..., list]] = Registry("readable thought")
TOP = 3  # tokens shown per position


def _tok(tokenizer: Any, i: int) -> str:
  return tokenizer.convert_ids_to_tokens(int(i)) or f"<{int(i)}>"


def _mix(tokenizer, ids: np.ndarray, w: np.ndarray, top: int = TOP) -> list:
  order = np.argsort(-w, kind="stable")[:top]
  return [[_tok(tokenizer, ids[k]), round(float(w[k]), 4)] for k in order if w[k] > 0]


@READABLE.register("gumbel_soft")
def gumbel_soft(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  span, rec = np.asarray(traj.span[row]), traj.records
  return [{"t": t, "mix": _mix(tokenizer, np.asarray(rec["ids"][row, t]),
                                np.asarray(rec["z"][row, t], np.float64))}
          for t in np.flatnonzero(span == LATENT).tolist()]


@READABLE.register("topk_gumbel")
def topk_gumbel(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  tau = rule_options(ctx.rule, ctx.rule_cfg)["tau"]
  rec = traj.records
  out = []
  for t in np.flatnonzero(np.asarray(rec["soft"][row])).tolist():
    s = np.asarray(rec["scores"][row, t], np.float64) / tau
    w = np.exp(s - s.max())
    out.append({"t": t, "mix": _mix(tokenizer, np.asarray(rec["ids"][row, t]), w / w.sum())})
  return out


@READABLE.register("hidden")
def hidden(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  emb = np.asarray(params["model"]["embed"]["embedding"], np.float32)  # V H
  emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  h = np.asarray(traj.records["hidden"][row], np.float32)  # N H
  n = min(ctx.num_latent, h.shape[0])
  out = []
  for t in range(n):
    v = h[t] / max(float(np.linalg.norm(h[t])), 1e-12)
    sims = emb @ v  # V
    top = np.argsort(-sims, kind="stable")[:TOP]
    out.append({"t": t, "nearest": [[_tok(tokenizer, i), round(float(sims[i]), 4)]
                                    for i in top]})
  return out


@READABLE.register("hybrid")
def hybrid(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  from lrjax.latent.hybrid import gate  # noqa: PLC0415
  think = np.asarray(traj.records["think"][row])
  ids = np.asarray(traj.ids[row])
  ts = np.flatnonzero(think).tolist()
  if not ts:
    return []
  emb = np.asarray(params["model"]["embed"]["embedding"], np.float32)
  a, _ = gate(params["rule"], emb[ids[ts]], rule_options(ctx.rule, ctx.rule_cfg)["c"])  # T H
  share = np.mean(np.square(np.asarray(a, np.float64)), axis=-1)  # T
  return [{"t": t, "token": _tok(tokenizer, ids[t]), "token_share": round(float(s), 4)}
          for t, s in zip(ts, share)]


def readable(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  """The row's latent positions in readable form ([] for a rule without an entry)."""
  if ctx.rule not in READABLE:
    return []
  return READABLE.get(ctx.rule)(ctx, params, traj, row, tokenizer)
