"""A value head on latent states: V(h) = MLP(h), its class-weighted BCE, ROC-AUC.

Latent RL (Özeren & Aßenmacher, arXiv 2512.11816) rates each continuous thought
h_t of a response by the probability that the response ends correct:

    V(h) = W_4 · relu(W_3 · relu(W_2 · relu(W_1 ĥ + b_1) + b_2) + b_3) + b_4   (a logit)
    ĥ = (h − μ) / s      μ, s: per-feature mean and std of the training states
    widths H -> 128 -> 32 -> 8 -> 1, dropout after each ReLU (train mode only)

trained with the class-weighted binary cross-entropy of PyTorch's
`BCEWithLogitsLoss(pos_weight=w)`, averaged over the examples:

    BCE = mean_i −[ w · y_i · log σ(v_i) + (1 − y_i) · log(1 − σ(v_i)) ]

(w = n_neg / n_pos of the training data by default; the paper used 20).

Parameters are a plain dict {"input_norm": {"mean": [H], "scale": [H]},
"dense_0": {"kernel": [in, out], "bias": [out]}, "dense_1": ..., ...} kept in
float32 whatever the backbone's dtype, under params["heads"]["value"]. The
input standardisation (μ, s) is fitted once on the pre-training states and
frozen afterwards (configs/latent_rl.py's `rl.param_groups`); the paper's head
has none: the hidden features of a small model differ in scale by 10x, and
standardising them raised the held-out ROC-AUC of the tiny default (docs/latent_rl.md).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

WIDTHS = (128, 32, 8)  # the paper's hidden widths; the output is one logit


def init_value_head(hidden_size: int, key: jax.Array,
                    widths: Sequence[int] = WIDTHS) -> dict:
  """PyTorch `nn.Linear`'s default init: W, b ~ U(−1/√fan_in, 1/√fan_in); μ = 0, s = 1."""
  return _init_value_head(int(hidden_size), key, tuple(map(int, widths)))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_value_head(hidden_size: int, key: jax.Array, widths: tuple[int, ...]) -> dict:
  dims = (hidden_size, *widths, 1)
  head = {"input_norm": {"mean": jnp.zeros((dims[0],), jnp.float32),
                         "scale": jnp.ones((dims[0],), jnp.float32)}}
  for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
    kw, kb = jax.random.split(jax.random.fold_in(key, i))
    bound = 1.0 / np.sqrt(d_in)
    head[f"dense_{i}"] = {
        "kernel": jax.random.uniform(kw, (d_in, d_out), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(kb, (d_out,), jnp.float32, -bound, bound)}
  return head


def value_logits(head: dict, h: jax.Array, *, dropout: float = 0.0,
                 key: jax.Array | None = None) -> jax.Array:
  """V(h) [...]: the logit of "this response ends correct" for states h [..., H].

  With `key` and dropout p > 0 (train mode), each hidden activation is zeroed
  with probability p and the rest scaled by 1/(1 − p), as torch's nn.Dropout.
  """
  norm = head["input_norm"]
  x = (h.astype(jnp.float32) - norm["mean"]) / norm["scale"]
  n = sum(k.startswith("dense_") for k in head)
  for i in range(n):
    layer = head[f"dense_{i}"]
    x = x @ layer["kernel"] + layer["bias"]
    if i < n - 1:
      x = jax.nn.relu(x)
      if key is not None and dropout > 0:
        keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0.0)
  return x[..., 0]


def weighted_bce(logits: jax.Array, labels: jax.Array, pos_weight: float,
                 mask: jax.Array | None = None) -> jax.Array:
  """mean over `mask` of −[w·y·log σ(v) + (1 − y)·log(1 − σ(v))] (stable in v). [] float32"""
  v = logits.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  per = -(pos_weight * y * jax.nn.log_sigmoid(v) + (1.0 - y) * jax.nn.log_sigmoid(-v))
  if mask is None:
    return per.mean()
  m = mask.astype(bool)
  return jnp.where(m, per, 0.0).sum() / jnp.maximum(m.sum(), 1).astype(jnp.float32)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties ½
  (the Mann-Whitney statistic with average ranks). NaN without both classes."""
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).astype(bool).reshape(-1)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
  ranks = ((np.cumsum(cnt) - cnt) + (cnt + 1) / 2.0)[inv]  # 1-based, ties averaged
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fit_input_norm(head: dict, states: np.ndarray, eps: float = 1e-6) -> dict:
  """The head with μ, s set to the per-feature mean and std of `states` [M, H]."""
  x = np.asarray(states, np.float64)
  return {**head, "input_norm": {"mean": jnp.asarray(x.mean(0), jnp.float32),
                                 "scale": jnp.asarray(x.std(0) + eps, jnp.float32)}}


def auto_pos_weight(labels: np.ndarray) -> float:
  """n_neg / n_pos of the training labels (1 when a class is missing)."""
  y = np.asarray(labels).astype(bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  return float(n_neg) / n_pos if n_pos and n_neg else 1.0
