"""Faults of real clusters: corrupted or missing checkpoint files at resume.

The newest checkpoint's data files are overwritten (as a node dying mid-write or
a full disk leaves them): resume reports the bad step and path, moves it aside
(never deletes it), restores the previous step and keeps saving afterwards;
every checkpoint bad is a one-line error naming the folder; a checkpoint of
another structure is an error naming the tensor and moves nothing.
"""
import glob
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.checkpoint import Checkpointer
from lrjax.config_utils import ConfigError
from lrjax.phases.workdir import try_resume


class _Metrics:
  def __init__(self):
    self.truncated = []

  def truncate(self, phase, step):
    self.truncated.append((phase, step))


def _state(scale):
  return {"params": {"w": jnp.full((4, 3), float(scale)), "b": jnp.zeros(3)},
          "key": jax.random.key(scale)}


def _run(tmp_path):
  return types.SimpleNamespace(workdir=str(tmp_path), metrics=_Metrics())


def _corrupt(directory, step):
  files = [p for p in glob.glob(os.path.join(directory, str(step), "state", "**"), recursive=True)
           if os.path.isfile(p) and f"{os.sep}d{os.sep}" in p]
  assert files
  for p in files:
    with open(p, "wb") as f:
      f.write(b"garbage")


def _saved(tmp_path, steps=(4, 8, 12)):
  d = str(tmp_path / "ckpt")
  with Checkpointer(d, max_to_keep=3, async_save=False) as c:
    for s in steps:
      c.save(s, _state(s), {"data_position": s})
  return d


def test_corrupted_newest_checkpoint_falls_back_and_saving_continues(tmp_path, capsys):
  d = _saved(tmp_path)
  _corrupt(d, 12)
  run = _run(tmp_path)
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  state, step, meta = try_resume(run, "sft", ckpt, _state(0))
  assert step == 8 and meta["data_position"] == 8
  np.testing.assert_array_equal(state["params"]["w"], np.full((4, 3), 8.0))
  assert jax.random.key_data(state["key"]).tolist() == jax.random.key_data(
      jax.random.key(8)).tolist()
  out = capsys.readouterr().out
  assert "step 12" in out and os.path.join(d, "12") in out and "moved aside" in out
  assert os.path.isdir(os.path.join(d, "12.corrupt-0"))  # kept, not deleted
  assert run.metrics.truncated == [("sft", 8)]
  ckpt.save(12, _state(12), {"data_position": 12})  # the resumed run saves again
  ckpt.wait()
  assert ckpt.latest_step() == 12
  restored, _ = ckpt.restore(jax.tree.map(lambda x: x, _state(0)), 12)
  np.testing.assert_array_equal(restored["params"]["w"], np.full((4, 3), 12.0))
  ckpt.close()


def test_missing_files_count_as_corrupt(tmp_path):
  d = _saved(tmp_path, steps=(4, 8))
  for p in glob.glob(os.path.join(d, "8", "state", "**"), recursive=True):
    if os.path.isfile(p) and "manifest" in p:
      os.remove(p)
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  _, step, _ = try_resume(_run(tmp_path), "rl", ckpt, _state(0))
  assert step == 4
  ckpt.close()


def test_every_checkpoint_corrupt_is_one_error_naming_the_folder(tmp_path):
  d = _saved(tmp_path, steps=(4, 8))
  _corrupt(d, 4)
  _corrupt(d, 8)
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  with pytest.raises(ConfigError, match="no checkpoint of phase 'sft'") as e:
    try_resume(_run(tmp_path), "sft", ckpt, _state(0))
  assert d in str(e.value) and "\n" not in str(e.value)
  assert sorted(os.listdir(d)) == ["4.corrupt-0", "8.corrupt-0"]
  ckpt.close()


def test_other_structure_names_the_tensor_and_moves_nothing(tmp_path):
  d = _saved(tmp_path, steps=(4,))
  other = {"params": {"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)}, "key": jax.random.key(0)}
  ckpt = Checkpointer(d, max_to_keep=3, async_save=False)
  with pytest.raises(ConfigError, match=r"params/w has shape \(4, 3\)"):
    try_resume(_run(tmp_path), "sft", ckpt, other)
  assert os.listdir(d) == ["4"]
  ckpt.close()
