"""`lrjax.phases.train_loop.TrainLoop` on a toy phase (no model): what it logs,
evaluates and saves after which step, resuming mid-way, and the non-finite stop."""
import types

import pytest

from lrjax.faults import NonFiniteError
from lrjax.phases.train_loop import Cadence, StepOut, TrainLoop


class FakeCkpt:
  directory = "ckpt"

  def __init__(self):
    self.saved = []

  def save(self, step, state, meta):
    self.saved.append((step, dict(state), meta))

  def latest_step(self):
    return self.saved[-1][0] if self.saved else None

  def wait(self):
    pass


class Writer:
  def __init__(self):
    self.lines = []

  def write(self, phase, step, line):
    self.lines.append((phase, step, line))


class Toy(TrainLoop):
  """state["x"] += 1 per step; steps in `bad` report a skipped update."""

  def __init__(self, run, ckpt, cadence, bad=()):
    super().__init__(run, "toy", ckpt, cadence, {"x": 0})
    self.bad, self.evals = set(bad), []

  def step(self, step):
    self.state["x"] += 1
    return StepOut(step + 1 not in self.bad, self.state["x"])

  def line(self, done, out, skipped):
    return {"x": out.metrics, "skipped": skipped}

  def evaluate(self, done):
    self.evals.append(done)


def _run(max_nonfinite=3):
  return types.SimpleNamespace(config=types.SimpleNamespace(
      train=types.SimpleNamespace(max_nonfinite=max_nonfinite)), metrics=Writer(), workdir="w")


def test_cadence_of_logs_evaluations_and_checkpoints():
  run, ckpt = _run(), FakeCkpt()
  loop = Toy(run, ckpt, Cadence(steps=7, log_every=3, eval_every=2, save_every=4, eval_base=1),
             bad={2})
  assert loop.train(0) == {"x": 7}
  assert [(s, line) for _, s, line in run.metrics.lines] == [
      (3, {"x": 3, "skipped": 1}), (6, {"x": 6, "skipped": 1}), (7, {"x": 7, "skipped": 1})]
  assert loop.evals == [1, 3, 5, 7]  # every 2 counted from step 1 (eval_base), and the last
  assert [(s, m) for s, _, m in ckpt.saved] == [(4, {"phase": "toy", "step": 4}),
                                                (7, {"phase": "toy", "step": 7})]
  # resumed at step 4: only the steps after it run
  again = Toy(_run(), FakeCkpt(), Cadence(7, 3, 2, 4))
  again.state = {"x": 4}
  assert again.train(4) == {"x": 7} and again.evals == [6, 7]


def test_consecutive_skipped_updates_stop_the_phase_naming_the_checkpoint():
  run, ckpt = _run(max_nonfinite=2), FakeCkpt()
  loop = Toy(run, ckpt, Cadence(10, 1, 100, 2), bad={3, 5, 6})
  with pytest.raises(NonFiniteError,
                     match="toy stopped at step 6: 2 consecutive .* step 4 in ckpt"):
    loop.train(0)
  assert [line["skipped"] for _, _, line in run.metrics.lines] == [0, 0, 1, 1, 2]
