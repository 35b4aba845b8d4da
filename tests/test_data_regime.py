"""The data regime: SFT reads `data.sft_size` worked solutions, RL reads questions
and answers only, and `sft.start_from` continues a warm-up exactly."""
import os

import numpy as np
import pytest

from configs import sft as sft_config
from lrjax.config_utils import ConfigError
from lrjax.data.tasks import QA, Problem, TaskData, rl_problems, sft_problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_P = [Problem(f"q{i}?", (f"<<{i}+1={i + 1}>>",), str(i + 1)) for i in range(10)]


def test_sft_problems_are_a_fixed_prefix_and_sizes_are_checked():
  task = TaskData(list(_P), [], "hash_exact")
  assert sft_problems(task, 3) == _P[:3]
  assert sft_problems(task, 0) == _P
  for bad in (-1, 11):
    with pytest.raises(ValueError, match="data.sft_size"):
      sft_problems(task, bad)


def test_rl_problems_hold_question_and_answer_only():
  qa = rl_problems(TaskData(list(_P), [], "hash_exact"))
  assert qa == [QA(p.question, p.answer) for p in _P]
  assert not any(hasattr(q, "steps") for q in qa)


def _config(workdir_overrides=(), **fields):
  c = sft_config.get_config()
  c.model.preset = "tiny"
  c.data.train_size, c.data.eval_size = 400, 16
  c.sft.batch_size, c.sft.warmup_steps, c.sft.log_every = 16, 2, 4
  c.checkpoint.every = 4
  c.eval.num_problems, c.eval.batch_size, c.eval.max_new = 8, 8, 16
  c.eval.sampled = False
  for k, v in fields.items():
    section, name = k.split("__")
    c[section][name] = v
  return c


class _Sealed:
  """A train problem whose worked solution raises when anything reads it."""

  def __init__(self, p: Problem):
    self.question, self.answer = p.question, p.answer

  @property
  def steps(self):
    raise AssertionError("the RL phase read a worked solution")


def test_rl_phase_cannot_reach_the_worked_solutions(tmp_path):
  from lrjax.phases.rl import run_rl
  from lrjax.phases.run import Run
  c = _config(rl__steps=2, rl__num_prompts=2, rl__group_size=4, rl__max_new=16,
              rl__eval_every=2, rl__log_every=1)
  c.mode = "rl"
  run = Run.create(c, str(tmp_path / "w"))
  sealed = [_Sealed(p) for p in run.task.train]
  with pytest.raises(AssertionError, match="worked solution"):  # the trap works
    _ = [s.steps for s in sealed[:1]]
  run.task = TaskData(sealed, run.task.eval, run.task.reward)
  run_rl(run)  # any read of a train problem's steps fails the test
  assert os.path.exists(tmp_path / "w" / "rl" / "DONE")
  run.close()


def _export(workdir):
  from safetensors.numpy import load_file
  return load_file(os.path.join(workdir, "sft", "export", "model.safetensors"))


def _sft_run(workdir, **fields):
  """SFT on 48 worked solutions, cosine decay to 0.1 lr over 8 steps (then flat)."""
  from lrjax.phases.run import Run
  from lrjax.phases.sft import run_sft
  fields = {"sft__schedule": "cosine", "sft__end_lr_frac": 0.1, "sft__decay_steps": 8, **fields}
  run = Run.create(_config(data__sft_size=48, **fields), str(workdir))
  run_sft(run)
  run.close()
  return run


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
  """An 8-step warm-up on 48 worked solutions, recording the problems SFT read."""
  from lrjax.phases import sft as sft_phase
  seen = []
  build = sft_phase.sequences.build_batch
  sft_phase.sequences.build_batch = lambda problems, *a, **k: seen.extend(problems) or build(
      problems, *a, **k)
  try:
    run = _sft_run(tmp_path_factory.mktemp("warm"), sft__steps=8)
  finally:
    sft_phase.sequences.build_batch = build
  return run, seen


def test_sft_reads_only_the_first_sft_size_problems(warm):
  run, seen = warm
  assert len(seen) == 8 * 16
  allowed = {p.question for p in run.task.train[:48]}
  assert {p.question for p in seen} <= allowed
  assert len({p.question for p in seen}) > 40  # the draw covers the subset


def test_start_from_continues_a_warmup_exactly(warm, tmp_path):
  from lrjax.metrics import read_metrics
  warm_dir = warm[0].workdir
  _sft_run(tmp_path / "straight", sft__steps=16)
  _sft_run(tmp_path / "control", sft__steps=16, sft__start_from=warm_dir)
  a, b = _export(tmp_path / "straight"), _export(tmp_path / "control")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # the control's file reads as one run: the warm-up's lines, then its own from step 8
  recs = [r for r in read_metrics(tmp_path / "control") if r["phase"] == "sft"]
  assert [r["step"] for r in recs if "eval/accuracy" in r] == [0, 8, 16]
  loss = {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}
  ref = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "straight")
         if "train/loss" in r}
  assert loss == ref


@pytest.mark.parametrize("fields, message", [
    ({"sft__steps": 16, "sft__lr": 3e-3}, "sft.lr"),
    ({"sft__steps": 8}, "must exceed"),
    ({"sft__steps": 16, "sft__decay_steps": 16}, "decays over 8 steps"),
])
def test_start_from_refuses_a_different_warmup(warm, tmp_path, fields, message):
  from lrjax.phases.run import Run
  from lrjax.phases.sft import run_sft
  fields = {"sft__schedule": "cosine", "sft__end_lr_frac": 0.1, "sft__decay_steps": 8, **fields}
  run = Run.create(_config(data__sft_size=48, sft__start_from=warm[0].workdir, **fields),
                   str(tmp_path / "c"))
  with pytest.raises(ConfigError, match=message):
    run_sft(run)
  run.close()


@pytest.mark.parametrize("task", ["arith", "prosqa"])
@pytest.mark.parametrize("method", ["grpo", "hrpo"])
def test_the_control_continues_the_rl_configs_warmup(task, method):
  """configs/sft_control.py trains the same warm-up as the RL configs (so
  start_from=<an RL run> is accepted) and continues it by CONTROL_STEPS."""
  import importlib
  from configs import sft_control
  from lrjax import config_utils
  from lrjax.phases.sft import _CONTINUATION_FIELDS, _TRAJECTORY_FIELDS
  rl = importlib.import_module(f"configs.{method}").get_config(task)
  control = sft_control.get_config(task)
  keep = lambda c: {k: v for k, v in config_utils.flatten(config_utils.to_dict(c)).items()
                    if k.split(".")[0] in _TRAJECTORY_FIELDS}
  assert config_utils.config_mismatch(keep(rl), keep(control), ignore=_CONTINUATION_FIELDS) == []
  assert control.sft.steps == rl.sft.steps + sft_control.CONTROL_STEPS[task]
  assert (control.sft.decay_steps or control.sft.steps) == (rl.sft.decay_steps or rl.sft.steps)
  assert control.data.task == rl.data.task == task and control.data.sft_size > 0
