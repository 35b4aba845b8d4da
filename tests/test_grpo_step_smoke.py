"""Smoke test of benchmarks/grpo_step.py: --quick runs one GRPO step of lrjax and of TRL."""
import importlib.util
import math
import os
import sys

import pytest

_WHY = ("needs torch and trl, which the `benchmarks` extra installs (pip install -e "
        "'.[benchmarks]'); the `test` extra leaves them out to keep its dependencies small")
pytest.importorskip("torch", reason=_WHY)
pytest.importorskip("trl", reason=_WHY)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_grpo_step():
  spec = importlib.util.spec_from_file_location(
      "benchmarks_grpo_step", os.path.join(ROOT, "benchmarks", "grpo_step.py"))
  bench = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = bench
  spec.loader.exec_module(bench)
  res = bench.main(["--quick"])
  assert set(res["lrjax"]) == {"rollout", "rewards", "advantages", "update", "step"}
  assert set(res["trl"]) == {"generate", "rewards+advantages", "loss_forward",
                             "backward+optimizer", "step"}
  for side in ("lrjax", "trl"):
    assert all(math.isfinite(v) and v >= 0 for v in res[side].values())
    assert res[side]["step"] > 0
  assert res["ratio"] > 0 and 0 < res["mfu_lrjax"] and res["update_flops"] > 0


def test_quick_grpo_step_mixed_lengths():
  """--lengths=mixed: both sides' rows end at the same drawn lengths (TRL's completion
  lengths are read back from its own logs) and lrjax's update runs length-bucketed."""
  spec = importlib.util.spec_from_file_location(
      "benchmarks_grpo_step", os.path.join(ROOT, "benchmarks", "grpo_step.py"))
  bench = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = bench
  spec.loader.exec_module(bench)
  res = bench.main(["--quick", "--lengths=mixed", "--microbatch=2", "--bucket-width=2"])
  args = bench.parse_args(["--quick", "--lengths=mixed"])
  lengths = bench.row_lengths(args, 1)  # the one timed step (after one warm-up step)
  assert 0 < res["real_token_share"] == lengths.sum() / (len(lengths) * args.new) < 1
  assert res["trl_mean_length"] == lengths.mean()
  for side in ("lrjax", "trl"):
    assert res[side]["step"] > 0
