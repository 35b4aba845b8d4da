"""Gradient accumulation: one optimizer update from row chunks of a (mini-)batch.

`rl.microbatch` = m rows per chunk (0 = off; distinct from
`rl.updates_per_batch`, which makes several optimizer updates per batch). A
batch of B rows is split in order into n = B / m chunks c, scanned one at a
time (only one chunk's activations are live), and

    L = Σ_c w_c L_c,      ∇L = Σ_c w_c ∇L_c

where L_c is the learner's loss of chunk c alone and w_c says how much of the
batch's normaliser the chunk holds:

    token_mean:           w_c = T_c / T   (T_c the chunk's scored positions, T the batch's)
    seq_mean, others:     w_c = m / B = 1 / n

That is the single-batch loss and gradient exactly (up to float32 summation
order) for `token_mean`, `seq_mean` and `seq_sum_norm`, and for parameter-only
auxiliary losses (Σ_c w_c = 1); a row-coupled auxiliary loss (e.g. a batch
statistic) is averaged over chunks instead. `loss`, `pg_loss` and the `aux_*`
metrics are combined with w_c, the policy loss's other metrics (kl_mean,
clip_frac, ...) with the chunk's share of the ratio positions over which they are
means (of the rows, for a loss whose metrics are per sequence). Gradients are
summed in float32 and cast back to the parameters' dtype.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def chunk_weights(aggregation: str, mask: jax.Array | np.ndarray, microbatch: int) -> jax.Array:
  """w [n]: mask [B, N] bool, the positions the loss covers (ratio | direct). A NumPy
  mask (the host's plan of an update) gets NumPy weights, computed without a device."""
  xp = np if isinstance(mask, np.ndarray) else jnp
  b = mask.shape[0]
  n = b // microbatch
  if aggregation != "token_mean":
    return xp.full((n,), 1.0 / n, xp.float32)
  tokens = xp.sum(mask.reshape(n, microbatch, -1), axis=(1, 2)).astype(xp.float32)  # n
  total = xp.sum(tokens)
  w = xp.where(total > 0, tokens / xp.maximum(total, xp.float32(1.0)), xp.float32(1.0 / n))
  return w.astype(xp.float32)


def metric_weights(per_sequence: bool, ratio: jax.Array, microbatch: int) -> jax.Array:
  """The chunks' weights [n] for the policy loss's metrics (kl_mean, clip_frac, ...):
  their share of the ratio positions `ratio` [B, N], over which those metrics are
  means, or of the rows when the loss's metrics are per sequence."""
  return chunk_weights("seq_mean" if per_sequence else "token_mean", ratio, microbatch)


def split_rows(tree: Any, microbatch: int) -> Any:
  """[B, ...] leaves -> [B / m, m, ...] (None stays None)."""
  def split(x):
    if x.shape[0] % microbatch:
      raise ValueError(f"rl.microbatch={microbatch} must divide the {x.shape[0]} rows of an "
                       "update")
    return x.reshape(x.shape[0] // microbatch, microbatch, *x.shape[1:])
  return jax.tree.map(split, tree)


def loss_metric(name: str) -> bool:
  """Whether a metric is combined with the loss's chunk weights (else with
  `metric_weights`)."""
  return name in ("loss", "pg_loss") or name.startswith("aux_")


def accumulate(value_and_grad: Callable, trainable: Any, rows: Any, weights: jax.Array,
               token_weights: jax.Array, microbatch: int) -> tuple[tuple[jax.Array, dict], Any]:
  """((Σ w_c L_c, metrics), Σ w_c ∇_c) of value_and_grad(trainable, rows_c) ->
  ((L_c, metrics_c), ∇_c), scanned over the row chunks of `rows` (a pytree of [B, ...]);
  metrics: Σ w_c metrics_c for the loss metrics, Σ token_weights_c metrics_c for the rest."""
  chunks = split_rows(rows, microbatch)
  first = jax.tree.map(lambda x: x[0], chunks)
  shapes = jax.eval_shape(value_and_grad, trainable, first)
  acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

  def body(acc, xs):
    chunk, w, wt = xs
    (loss, metrics), grads = value_and_grad(trainable, chunk)
    add = lambda a, x, v: a + v * x.astype(jnp.float32)  # noqa: E731
    (acc_loss, acc_metrics), acc_grads = acc
    metrics = {k: add(acc_metrics[k], v, w if loss_metric(k) else wt)
               for k, v in metrics.items()}
    return ((add(acc_loss, loss, w), metrics),
            jax.tree.map(lambda a, g: add(a, g, w), acc_grads, grads)), None

  ((loss, metrics), grads), _ = jax.lax.scan(body, acc0, (chunks, weights, token_weights))
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
  return (loss, metrics), grads
