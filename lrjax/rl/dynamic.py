"""Dynamic sampling: keep only prompt groups with a reward signal, refill from new prompts.

DAPO (arXiv 2503.14476) and Latent-GRPO (arXiv 2604.27998, ≤ 50 tries): a
group whose G rewards are all equal has zero group-relative advantage and only
dilutes the batch. With `rl.dynamic_sampling_tries = T > 0` a step

    round 0:       roll out P prompts (data cursor c .. c+P), score them
    round k ≥ 1:   while fewer than P groups have unequal rewards and k < T:
                   roll out the next P prompts (the same batch shape: no recompile)

and trains on the first P kept groups in the order they were drawn. When the
tries run out first, the batch is completed with dropped (all-equal) groups in
the order they were drawn, and those get A = 0 (`keep` False). Every round
advances the data cursor by P prompts; the RL phase stores the cursor and the
total number of rounds in the RL checkpoint's meta, so a resumed run draws the
same prompts. T = 0 turns it off: one round, every group kept, the cursor
advances by P per step (the prompts of step s are then those of
`lrjax.data.order.data_indices(seed, n, s, P)`).

Shape legend: B = P·G rows, P prompts (groups), G group size.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Round(NamedTuple):
  """One rollout of P prompts."""
  traj: Any  # Trajectory, B rows
  rewards: np.ndarray  # B float32


class Filled(NamedTuple):
  """A training batch of B rows assembled from one or more rounds."""
  traj: Any  # Trajectory, B rows (prompts left-padded to the widest round)
  rewards: np.ndarray  # B float32
  keep: np.ndarray  # P bool: the group has unequal rewards (False: filler, A = 0)
  tries: int  # rounds drawn
  cursor: int  # data cursor after the last round


def checkpoint_meta(step: int, cursor: int, tries: int) -> dict:
  """The RL checkpoint's meta: the step, the data cursor (prompts drawn so far) and
  the rollout rounds drawn so far."""
  return {"phase": "rl", "step": int(step), "data_cursor": int(cursor),
          "dynamic_tries": int(tries)}


def resume_position(meta: dict, start: int, num_prompts: int) -> tuple[int, int]:
  """(data cursor, rounds drawn) at step `start` from a checkpoint's meta (a checkpoint
  without them was written by a run with one round of `num_prompts` per step)."""
  return (int(meta.get("data_cursor", start * num_prompts)),
          int(meta.get("dynamic_tries", start)))


def flat_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
  """[P] bool: the group's rewards are all equal."""
  r = np.asarray(rewards).reshape(-1, group_size)  # P G
  return (r == r[:, :1]).all(-1)


def fill_batch(draw: Callable[[int, int], Round], cursor: int, num_prompts: int,
               group_size: int, max_tries: int, pad_id: int = 0) -> Filled:
  """Draws rounds until `num_prompts` groups have unequal rewards (module doc).

  draw(cursor, attempt) rolls out the P prompts starting at data cursor `cursor`
  (attempt 0, 1, ...: e.g. to fold into the sampling key) and returns a `Round`.
  max_tries = 0: dynamic sampling off (one round, all groups kept).
  """
  p = num_prompts
  if max_tries <= 0:
    rnd = draw(cursor, 0)
    return Filled(rnd.traj, np.asarray(rnd.rewards, np.float32), np.ones(p, bool), 1, cursor + p)
  rounds, kept, dropped = [], [], []
  for attempt in range(max_tries):
    rnd = draw(cursor, attempt)
    cursor += p
    rounds.append(rnd)
    flat = flat_groups(rnd.rewards, group_size)
    kept += [(attempt, g) for g in range(p) if not flat[g]]
    dropped += [(attempt, g) for g in range(p) if flat[g]]
    if len(kept) >= p:
      break
  tries = len(rounds)
  if tries == 1 and len(kept) == p:  # nothing dropped: the round as it is
    return Filled(rounds[0].traj, np.asarray(rounds[0].rewards, np.float32), np.ones(p, bool),
                  1, cursor)
  chosen = kept[:p]
  keep = np.asarray([True] * len(chosen) + [False] * (p - len(chosen)))
  chosen += dropped[:p - len(chosen)]
  rows = [(ri, g * group_size + j) for ri, g in chosen for j in range(group_size)]
  traj = assemble([r.traj for r in rounds], rows, pad_id)
  rewards = np.asarray([rounds[ri].rewards[i] for ri, i in rows], np.float32)
  return Filled(traj, rewards, keep, tries, cursor)


def _widen(traj: Any, width: int, pad_id: int) -> Any:
  """Left-pads the prompt arrays [B, P] to [B, width] (pad ids, mask 0)."""
  extra = width - traj.prompt_ids.shape[1]
  if extra == 0:
    return traj
  pad = lambda x, v: jnp.pad(x, ((0, 0), (extra, 0)), constant_values=v)
  return traj.replace(prompt_ids=pad(traj.prompt_ids, pad_id), prompt_mask=pad(traj.prompt_mask, 0))


def assemble(trajs: list, rows: list[tuple[int, int]], pad_id: int = 0) -> Any:
  """The Trajectory of rows [(round, row), ...] taken from `trajs` (prompts left-padded
  to the widest round; positions come from the mask, so the padding changes nothing)."""
  width = max(t.prompt_ids.shape[1] for t in trajs)
  trajs = [_widen(t, width, pad_id) for t in trajs]
  b = trajs[0].ids.shape[0]
  idx = jnp.asarray([ri * b + i for ri, i in rows], jnp.int32)
  return jax.tree.map(lambda *xs: jnp.take(jnp.concatenate(xs), idx, axis=0), *trajs)


def zero_dropped(advantages: jax.Array, keep: np.ndarray, group_size: int) -> jax.Array:
  """Advantages [B] or [B, T] with the rows of groups not kept set to 0."""
  rows = jnp.asarray(np.repeat(np.asarray(keep, bool), group_size))  # B
  return jnp.where(rows.reshape((-1,) + (1,) * (advantages.ndim - 1)), advantages, 0.0)
