"""Smoke test of benchmarks/rollout.py: --quick runs every rule and transformers generate."""
import importlib.util
import json
import math
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark():
  """benchmarks/rollout.py as a module (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      "benchmarks_rollout", os.path.join(ROOT, "benchmarks", "rollout.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod  # dataclasses look their module up there
  spec.loader.exec_module(mod)
  return mod


BENCH = load_benchmark()  # at collection: its torch / transformers / lrjax imports are not timed


def test_quick_benchmark(tmp_path, capsys):
  bench = BENCH
  out = tmp_path / "out.json"
  results = bench.main(["--quick", "--json", str(out)])
  impls = [r["impl"] for r in results]
  rules = ["lrjax token", "lrjax hidden", "lrjax hybrid"]
  assert impls == [bench.TORCH_IMPL] + rules + [f"{r}, 2 devices" for r in rules]
  sharded = [r for r in results if r.get("devices") == 2]
  assert len(sharded) == 3 and all(r["time_vs_token"] > 0 for r in sharded)
  for r in results:
    assert r["batch"] == 2 and r["new"] == 8
    assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
    assert math.isfinite(r["vs_generate"]) and r["vs_generate"] > 0
    assert math.isfinite(r["time_vs_token"]) and r["time_vs_token"] > 0
    assert r["recompiles"] in (0, -1)  # timed calls hit the compiled program
    assert r["cpu_s"] >= 0
  printed = capsys.readouterr().out
  assert "| rule / impl | batch | tokens/s |" in printed
  for impl in impls:
    assert f"| {impl} | 2 |" in printed
  saved = json.loads(out.read_text())
  assert saved["env"]["jax"] and [r["impl"] for r in saved["results"]] == impls


def test_quick_grpo_step_on_split_device_layouts(tmp_path):
  """benchmarks/grpo_step.py --no-trl (the lrjax side: torch only builds the model) with
  the rollout and the update each data-parallel over their own devices: the trajectory
  moves from one layout to the other; the results are also written to --json."""
  spec = importlib.util.spec_from_file_location(
      "benchmarks_grpo_step", os.path.join(ROOT, "benchmarks", "grpo_step.py"))
  bench = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = bench
  spec.loader.exec_module(bench)
  for layout in (["--rollout-devices=2"], ["--rollout-devices=2", "--update-devices=4"]):
    out = tmp_path / "res.json"
    res = bench.main(["--quick", "--no-trl", f"--json={out}", *layout])
    saved = json.loads(out.read_text())
    assert saved["lrjax"] == res["lrjax"] and saved["args"]["rollout_devices"] == 2
    assert set(res["lrjax"]) == {"rollout", "rewards", "advantages", "update", "step"}
    assert all(math.isfinite(v) and v > 0 for v in res["lrjax"].values())
  with pytest.raises(SystemExit):  # 4 rows do not split over 3 devices
    bench.parse_args(["--quick", "--rollout-devices=3"])
  with pytest.raises(SystemExit):  # --quick's 4 rows, not the full step's, decide
    bench.parse_args(["--quick", "--update-devices=8"])
