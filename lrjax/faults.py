"""Faults a training loop survives: non-finite updates and preemption.

Non-finite updates. `guarded_update` applies an optax update only when the loss
and the global gradient norm are finite; otherwise parameters and optimizer
state stay as they were (the schedule's count too), and the step reports
`ok = False`. The training loop (`lrjax.phases.train_loop`) counts skipped
updates (`train/nonfinite_skipped`, cumulative in the phase) and stops after
`train.max_nonfinite` consecutive ones with a message naming the step and the
last checkpoint, which stays intact.
The data position and the RNG advance as usual: a skipped step is a step.
`train.inject_nan_step` (tests) makes that step's loss and gradients NaN.

Preemption. `Preemption` installs a SIGTERM handler (a TPU VM's or a
scheduler's shutdown signal) and, with several processes, also asks Orbax
whether the runtime reached a preemption sync point (all processes agree). The
training loop asks `preempt.requested(step)` after each completed step; it then
saves a checkpoint at that step, flushes its metrics and calls `exit_preempted`,
which prints how to resume and exits with status 143 (128 + SIGTERM).
"""
from __future__ import annotations

import signal
import sys
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lrjax.config_utils import ConfigError
from lrjax.metrics import say

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a TERM-killed process


class NonFiniteError(ConfigError):
  """Too many consecutive non-finite updates (a one-line stop, like a config error)."""


def guarded_update(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any,
                   params: Any, loss: jax.Array, poison: jax.Array | bool = False
                   ) -> tuple[Any, Any, jax.Array, jax.Array]:
  """(params, opt_state, grad_norm, ok): the update if loss and ‖g‖ are finite, else
  the inputs unchanged. `poison` (a traced bool) turns loss and gradients into NaN."""
  nan = jnp.where(poison, jnp.nan, 1.0).astype(jnp.float32)
  grads = jax.tree.map(lambda g: g * nan.astype(g.dtype), grads)
  loss = loss * nan
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
  return keep(new_params, params), keep(new_state, opt_state), grad_norm, ok


class NonFiniteCounter:
  """Counts skipped updates of a phase; raises after `limit` consecutive ones."""

  def __init__(self, phase: str, limit: int, checkpoint_dir: str):
    self.phase, self.limit, self.dir = phase, int(limit), checkpoint_dir
    self.skipped = 0
    self.run = 0

  def update(self, ok: bool, step: int, last_checkpoint: int | None) -> None:
    if ok:
      self.run = 0
      return
    self.skipped += 1
    self.run += 1
    say(f"[lrjax] warning: {self.phase} step {step}: non-finite loss or gradient, update "
        f"skipped ({self.run} in a row)")
    if self.run >= self.limit:
      last = (f"the last checkpoint is step {last_checkpoint} in {self.dir}"
              if last_checkpoint is not None else f"there is no checkpoint in {self.dir}")
      raise NonFiniteError(
          f"{self.phase} stopped at step {step}: {self.run} consecutive non-finite updates "
          f"(config.train.max_nonfinite={self.limit}); {last}")


class Preemption:
  """SIGTERM (and Orbax's multi-host preemption point) -> save and exit 143."""

  def __init__(self):
    self._signalled = False
    self._previous = None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler (in-process callers)
      self._previous = None

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._signalled = True

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`: a SIGTERM arrived, or (several processes) Orbax
    says every process reached the preemption point."""
    if self._signalled:
      return True
    if jax.process_count() > 1:
      from orbax.checkpoint import multihost  # noqa: PLC0415
      return bool(multihost.reached_preemption(step))
    return False

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def exit_preempted(phase: str, step: int, workdir: str) -> None:
  """The one-line resume hint, then exit 143."""
  say(f"[lrjax] preempted: {phase} saved at step {step} in {workdir}; re-run the same "
      "command to resume from there")
  sys.exit(EXIT_PREEMPTED)
