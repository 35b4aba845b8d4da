"""The loop every training phase runs (SFT, RL, Latent-SFT's steps), written once.

A phase subclasses `TrainLoop` with its own `step` (one update of `self.state`) and
`line` (the metrics line of a logged step), and `evaluate` if it evaluates;
`TrainLoop.train(start)` does the rest the same way for all of them, after each
completed step `done`:

* guarded updates: a step reports `ok=False` when a non-finite loss or gradient
  skipped its update (`lrjax.faults.guarded_update`); the loop counts them
  (`train/nonfinite_skipped`) and stops after `train.max_nonfinite` in a row;
* the metrics line every `log_every` steps and at the last, and the progress line;
* an evaluation every `eval_every` steps (counted from `eval_base`) and at the last;
* a checkpoint every `checkpoint.every` steps and at the last; on preemption
  (SIGTERM) one at `done`, then exit 143 with the resume hint (`lrjax.faults`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrjax import faults
from lrjax.metrics import Progress


@dataclass(frozen=True)
class Cadence:
  """When a phase of `steps` steps logs, evaluates and saves, after step `done`."""
  steps: int
  log_every: int
  eval_every: int
  save_every: int
  eval_base: int = 0  # a continued run counts its evaluations from where it starts

  def logs(self, done: int) -> bool:
    return done % self.log_every == 0 or done == self.steps

  def evaluates(self, done: int) -> bool:
    return (done - self.eval_base) % self.eval_every == 0 or done == self.steps

  def saves(self, done: int) -> bool:
    return done % self.save_every == 0 or done == self.steps


@dataclass
class StepOut:
  """What one step reports: `ok` False when its update was skipped (non-finite),
  `metrics` the phase's own (read by its `line` and `shown`)."""
  ok: bool = True
  metrics: Any = None


class TrainLoop:
  """One phase's training loop over `self.state` (see the module docstring).

  Subclasses define `step` and `line`; `shown` (the progress scalars, by default
  none), `evaluate` (by default none) and `meta` (the checkpoint's meta) as needed."""

  def __init__(self, run, phase: str, ckpt, cadence: Cadence, state: Any):
    self.run, self.phase, self.ckpt, self.cadence, self.state = run, phase, ckpt, cadence, state
    self.start = 0

  def step(self, step: int) -> StepOut:
    """Trains step `step` (0-based) on self.state."""
    raise NotImplementedError

  def logs(self, done: int) -> bool:
    return self.cadence.logs(done)

  def line(self, done: int, out: StepOut, skipped: int) -> dict:
    """The metrics line of a logged step (`skipped`: non-finite updates so far)."""
    raise NotImplementedError

  def shown(self, out: StepOut, line: dict | None) -> dict | None:
    """The progress line's scalars after a step (`line`: its metrics line, None when
    not logged); None: no progress update."""
    return None

  def evaluate(self, done: int) -> None:
    """Held-out evaluation at `done` (none by default)."""

  def meta(self, done: int) -> dict:
    return {"phase": self.phase, "step": done}

  def train(self, start: int) -> Any:
    """Steps start .. steps − 1; returns self.state. Saves and exits 143 on
    preemption; raises `faults.NonFiniteError` after too many skipped updates."""
    self.start = start
    progress, ckpt, steps = Progress(self.phase), self.ckpt, self.cadence.steps
    guard = faults.NonFiniteCounter(self.phase, self.run.config.train.max_nonfinite,
                                    ckpt.directory)
    preempt = faults.Preemption()
    try:
      for step in range(start, steps):
        done = step + 1
        out = self.step(step)
        guard.update(out.ok, done, ckpt.latest_step())
        line = self.line(done, out, guard.skipped) if self.logs(done) else None
        if line is not None:
          self.run.metrics.write(self.phase, done, line)
        shown = self.shown(out, line)
        if shown is not None:
          progress.update(done, steps, **shown)
        if self.cadence.evaluates(done):
          self.evaluate(done)
        stop = preempt.requested(done)
        if self.cadence.saves(done) or stop:
          ckpt.save(done, self.state, self.meta(done))
        if stop:
          progress.close()
          ckpt.wait()
          faults.exit_preempted(self.phase, done, self.run.workdir)
    finally:
      preempt.close()
    progress.close()
    return self.state
