"""The order in which a phase draws its training problems.

Both phases read a stream of epoch-wise permutations of their problems, each
fixed by (seed, epoch), so the problems of a step depend only on the seed and
the data cursor (the number of problems drawn so far): a resumed run draws the
same ones. SFT draws `sft.batch_size` per step (`data_indices`, cursor = step ×
batch) with `seed`; RL draws `rl.num_prompts` per rollout (`data_window`, the
cursor is in the RL checkpoint's meta) with `seed + 1`.
"""
from __future__ import annotations

import numpy as np


def data_indices(seed: int, n: int, step: int, batch: int) -> np.ndarray:
  """Problem indices of a step: epoch-wise permutations fixed by (seed, epoch)."""
  return data_window(seed, n, step * batch, batch)


def data_window(seed: int, n: int, start: int, count: int) -> np.ndarray:
  """`count` problem indices from data cursor `start` of the stream of epoch-wise
  permutations fixed by (seed, epoch): the cursor counts problems drawn so far."""
  out = []
  while len(out) < count:
    epoch, offset = divmod(start + len(out), n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(perm[offset:offset + count - len(out)].tolist())
  return np.asarray(out)
