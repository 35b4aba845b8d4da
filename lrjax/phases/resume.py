"""What a phase checks when it starts again in a workdir that already has its files.

A finished phase re-run with a longer schedule. The config check refuses a
changed `sft.steps` / `rl.steps` unless `--config.allow_config_mismatch=True`;
with it, a finished phase (its `DONE` file) asked for more steps continues from
its last checkpoint to the new count and says so, instead of reusing the
finished model; asked for fewer, it stops with an error (a phase cannot be
shortened after the fact).

The starting point of the RL phase. The RL checkpoints hold the policy, the
optimizer, the rule parameters and the heads, but not the frozen reference
model (a copy of the phase's starting tree: it would double every checkpoint).
A resumed phase rebuilds it from the same sources (the SFT export or
`config.init`, the rule's seeded initialisation, the earlier phases' heads),
and checks it against the per-tensor SHA-256 digests its checkpoints store
(`start_hashes` in the meta): a starting model that changed since (an export
overwritten, another `config.init`) is an error naming the tensor, not a
silently different KL.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from flax import traverse_util

from lrjax.config_utils import ConfigError
from lrjax.metrics import say


def finished_steps(phase_dir: str, default: int) -> int:
  """The step count of a finished phase's `DONE` summary (`steps`), else `default`."""
  try:
    with open(os.path.join(phase_dir, "DONE")) as f:
      return int(json.load(f).get("steps", default))
  except (OSError, ValueError, AttributeError, TypeError):
    return default


def continue_finished(phase: str, phase_dir: str, done_steps: int, steps: int,
                      field: str) -> bool:
  """Whether a finished phase of `done_steps` steps trains on to `steps` (then its
  `DONE` is removed, so an interruption is not taken for a finished phase); equal
  counts reuse it (False); fewer is a ConfigError naming the field."""
  if steps == done_steps:
    return False
  if steps < done_steps:
    raise ConfigError(
        f"config.{field}={steps}, but the finished {phase} phase in {phase_dir} ran {done_steps} "
        "steps: a finished phase cannot be shortened; use another --workdir")
  say(f"[lrjax] continuing the finished {phase} phase in {phase_dir} from step {done_steps} "
      f"to {steps} (config.{field})")
  done = os.path.join(phase_dir, "DONE")
  if os.path.exists(done):
    os.remove(done)
  return True


def tree_hashes(tree: Any) -> dict[str, str]:
  """'path/to/leaf' -> SHA-256 (hex, first 16 characters) of its dtype, shape and bytes,
  for a pytree of host arrays (`parallel.fetch` it first)."""
  flat = traverse_util.flatten_dict(tree, sep="/") if isinstance(tree, dict) else {"": tree}
  out = {}
  for path, leaf in sorted(flat.items()):
    a = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out[path] = h.hexdigest()[:16]
  return out


def check_start(stored: dict[str, str] | None, now: dict[str, str], where: str) -> None:
  """ConfigError naming the first tensor whose digest differs from the stored one
  (a checkpoint written before digests were stored passes)."""
  if not stored:
    return
  for path in sorted(set(stored) | set(now)):
    a, b = stored.get(path), now.get(path)
    if a != b:
      what = ("is missing now" if b is None else "is new" if a is None
              else f"has digest {b}, the checkpoints were trained from {a}")
      raise ConfigError(
          f"the starting model of the RL phase in {where} changed since its checkpoints were "
          f"written: tensor {path} {what} (an overwritten export or another config.init?); "
          "restore it, or use another --workdir")
