"""Length-bucketed updates (`rl.bucket_width`): an update whose cost follows the rows'
real lengths instead of the response buffer's.

A rollout buffer holds N response positions per row, but rows end at different
lengths; a padded update runs the teacher-forced replay, the reference's and the
loss over all B × N positions. With a bucket width w > 0 the rows of a
(mini-)batch are sorted by their last scored position ℓ_b (longest first; in
whole prompt groups when an auxiliary loss may couple a group's rows), split
into chunks of `rl.microbatch` rows (when 0, of the largest divisor of the
mini-batch's rows up to `rl.bucket_rows`), and chunk c
runs over its first

    N_c = min(N, w · ⌈max_{b ∈ c} ℓ_b / w⌉)

positions only: at most N / w shapes per chunk size, so compiles stay few. The
replay is causal, so the cut changes no kept position, and nothing is scored past
ℓ_b. The chunks' losses, gradients and metrics are combined as
`lrjax.rl.accumulate` does (token_mean: w_c = T_c / T; other aggregations:
rows_c / B; the policy loss's metrics by ratio positions), `seq_sum_norm` keeps
the buffer's N as its T_max, so the update equals the padded one up to float32
summation order (tests/test_buckets.py, for every shipped objective), except for
dropout keyed by the batch (Latent RL's value head), which each chunk draws anew.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Chunk:
  rows: np.ndarray  # int: the batch rows of this chunk, in order
  length: int  # N_c: response positions kept


def last_scored(mask: np.ndarray) -> np.ndarray:
  """[B] int: 1 + the last position each row's loss covers (0: none). mask [B, N] bool."""
  mask = np.asarray(mask, bool)
  n = mask.shape[1]
  any_ = mask.any(-1)
  return np.where(any_, n - np.argmax(mask[:, ::-1], axis=-1), 0)


def chunk_rows_for(rows: int, most: int, unit: int = 1) -> int:
  """The largest number of rows <= max(most, unit) that divides `rows` and holds whole
  units of `unit` rows (rows itself when most <= 0)."""
  if most <= 0 or most >= rows:
    return rows
  return max(c for c in range(unit, max(most, unit) + 1, unit) if rows % c == 0)


def plan(lengths: np.ndarray, chunk_rows: int, width: int, n: int, unit: int = 1) -> list[Chunk]:
  """The chunks of a batch whose rows need `lengths` [B] positions of n: whole units of
  `unit` consecutive rows (a prompt's group, for losses that couple its rows) sorted by
  their longest row, longest first (stable), `chunk_rows` rows per chunk (all when 0),
  each chunk cut to a multiple of `width`."""
  lengths = np.asarray(lengths)
  b = len(lengths)
  if chunk_rows <= 0 or chunk_rows > b:
    chunk_rows = b
  if b % chunk_rows:
    raise ValueError(f"rl.microbatch={chunk_rows} must divide the {b} rows of an update")
  if b % unit or chunk_rows % unit:
    raise ValueError(f"chunks of {chunk_rows} rows of {b} cannot hold whole groups of {unit}")
  unit_len = lengths.reshape(b // unit, unit).max(-1)
  order = (np.argsort(-unit_len, kind="stable")[:, None] * unit + np.arange(unit)).reshape(-1)
  chunks = []
  for i in range(0, b, chunk_rows):
    rows = order[i:i + chunk_rows]
    need = max(int(lengths[rows].max()), 1)
    chunks.append(Chunk(rows, min(n, width * math.ceil(need / width))))
  return chunks


def cut(traj: Any, length: int) -> Any:
  """A Trajectory's first `length` response positions: every [B, N, ...] leaf (ids,
  span, sampled, logp, records, logits) cut on axis 1; prompts and [B] leaves kept."""
  def first(x):
    return None if x is None else x[:, :length]
  return dataclasses.replace(
      traj, ids=first(traj.ids), span=first(traj.span), sampled=first(traj.sampled),
      logp=first(traj.logp), records=jax.tree.map(first, traj.records),
      logits=first(traj.logits))


def cut_positions(x: Any, length: int, n: int) -> Any:
  """A [B, N] per-position array (old terms, per-position advantages) cut to `length`
  positions; [B] arrays and None unchanged."""
  if x is None or x.ndim < 2 or x.shape[1] != n:
    return x
  return x[:, :length]
