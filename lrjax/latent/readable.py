"""Latent thoughts made readable: what a rule fed back at each latent position.

`READABLE[rule](ctx, params, traj, row, tokenizer) -> list[dict]` describes the
latent positions of one trajectory row (numpy arrays on the host), one dict
per position t with its index "t" and what the rule fed back there: the
recorded (token, weight) pairs of a soft input (`mix_pairs`), the tokens
nearest to a fed-back hidden state (`nearest_tokens`), ... Each method
registers its rules' renderers (`lrjax.method.Method.readable`).

`readable(ctx, params, traj, row, tokenizer)` returns [] for a rule without an
entry (`token`).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from lrjax.latent.base import RuleContext
from lrjax.registry import Registry

READABLE: Registry[Callable[..., list]] = Registry("readable thought")
TOP = 3  # tokens shown per position


def token_text(tokenizer: Any, i: int) -> str:
  """The token of id i, or "<i>" for an id the tokenizer has no text for."""
  return tokenizer.convert_ids_to_tokens(int(i)) or f"<{int(i)}>"


def mix_pairs(tokenizer, ids: np.ndarray, w: np.ndarray, top: int = TOP) -> list:
  """[[token, weight], ...] of the `top` largest positive weights w [K] of ids [K]."""
  order = np.argsort(-w, kind="stable")[:top]
  return [[token_text(tokenizer, ids[k]), round(float(w[k]), 4)] for k in order if w[k] > 0]


def nearest_tokens(params: dict, hidden: np.ndarray, n: int, tokenizer, top: int = TOP) -> list:
  """For t < n: {"t", "nearest"}, the `top` vocabulary tokens whose embeddings are
  nearest by cosine to hidden [N, H] row t, with the similarities."""
  emb = np.asarray(params["model"]["embed"]["embedding"], np.float32)  # V H
  emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  h = np.asarray(hidden, np.float32)  # N H
  out = []
  for t in range(min(n, h.shape[0])):
    v = h[t] / max(float(np.linalg.norm(h[t])), 1e-12)
    sims = emb @ v  # V
    best = np.argsort(-sims, kind="stable")[:top]
    out.append({"t": t, "nearest": [[token_text(tokenizer, i), round(float(sims[i]), 4)]
                                    for i in best]})
  return out


def readable(ctx: RuleContext, params: dict, traj, row: int, tokenizer) -> list:
  """The row's latent positions in readable form ([] for a rule without an entry)."""
  if ctx.rule not in READABLE:
    return []
  return READABLE.get(ctx.rule)(ctx, params, traj, row, tokenizer)
