"""`lrjax.compare` end to end on `configs/compare.py:smoke` (token GRPO and HRPO, 2
seeds, a few steps): the table equals the runs' own metrics, each seed's warm-up
is trained once and shared, an interrupted compare resumes without retraining,
and a finished one trains nothing and rewrites the same table.
"""
import csv
import json
import math
import os

import numpy as np
import pytest

from configs import compare as compare_config
from lrjax import compare
from lrjax.compare import Compare, mean_se, run_in_process, tabulate


class Interrupt(Exception):
  pass


def _log(workdir):
  with open(os.path.join(workdir, "compare_log.jsonl")) as f:
    return [json.loads(line) for line in f]


def _last_rl_eval(workdir):
  recs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in recs if r["phase"] == "rl" and "eval/accuracy" in r]
  return evals[0], evals[-1]


def test_smoke_compare_table_sharing_and_resume(tmp_path, monkeypatch):
  cfg = compare_config.get_config("smoke")
  cfg.overrides["all"] = tuple(cfg.overrides["all"]) + (  # smaller still: compile-bound
      "sft.steps=8", "sft.eval_every=8", "checkpoint.every=8", "rl.max_new=32",
      "eval.max_new=32", "eval.num_problems=16", "eval.batch_size=16")
  work = str(tmp_path / "cmp")
  calls = []

  def interrupting(config, workdir):
    calls.append(workdir)
    if workdir.endswith(os.path.join("s0", "hrpo")):
      raise Interrupt  # as if the machine went away before this run trained
    run_in_process(config, workdir)

  with pytest.raises(Interrupt):
    Compare(cfg, work, runner=interrupting).run()
  assert _log(work)[-1]["action"] == "stopped"
  cfg.jobs = 2  # resumes in two worker processes, one per seed (grpo + hrpo share a warm-up)
  rows = Compare(cfg, work).run()
  log = _log(work)
  assert sorted(os.listdir(os.path.join(work, "logs"))) == [
      "arith_s0_grpo+hrpo.log", "arith_s1_grpo+hrpo.log"]
  warmups = [r for r in log if r["action"] == "warmup"]
  assert sorted(r["seed"] for r in warmups) == [0, 1]  # one per seed, never retrained
  runs = [(r["method"], r["seed"]) for r in log if r["action"] == "run"]
  # grpo s0 ran once; hrpo s0 was started, interrupted, then run again
  assert runs[:2] == [("grpo", 0), ("hrpo", 0)]
  assert sorted(runs[2:]) == [("grpo", 1), ("hrpo", 0), ("hrpo", 1)]
  assert [r["action"] for r in log].count("finished") == 1 and log[-1]["action"] == "finished"
  reuse = sorted((r["method"], r["seed"]) for r in log if r["action"] == "reuse")
  assert reuse == [("grpo", 0), ("grpo", 1), ("hrpo", 0), ("hrpo", 1)]
  for r in rows:  # both RL methods of a seed start from the same warm-up model
    with open(os.path.join(r.workdir, "sft", "export", "model.safetensors"), "rb") as f:
      r.digest = hash(f.read())
  for seed in (0, 1):
    assert len({r.digest for r in rows if r.seed == seed}) == 1

  results = tabulate(rows, work, "python -m lrjax.compare --config=configs/compare.py:smoke")
  with open(os.path.join(work, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert [(t["method"], int(t["seed"])) for t in table] == [
      ("grpo", 0), ("hrpo", 0), ("grpo", 1), ("hrpo", 1)]
  for row, t in zip(rows, table):  # each row = its own run's metrics.jsonl
    first, last = _last_rl_eval(row.workdir)
    assert float(t["accuracy"]) == pytest.approx(last["eval/accuracy"])
    assert float(t["response_tokens"]) == pytest.approx(last["eval/response_tokens"])
    assert float(t["gain"]) == pytest.approx(last["eval/accuracy"] - first["eval/accuracy"])
  summary = compare.summarize(results)
  for s in summary:
    accs = [_last_rl_eval(r.workdir)[1]["eval/accuracy"] for r in rows if r.method == s["method"]]
    assert s["accuracy"][0] == pytest.approx(sum(accs) / len(accs))
  md = open(os.path.join(work, "RESULTS.md")).read()
  assert "| arith | grpo | 2 |" in md and "jax " in md and "Wall time of this compare" in md
  assert "## Training stability" in md
  with open(os.path.join(work, "stability.csv")) as f:
    stable = list(csv.DictReader(f))
  assert [(t["method"], int(t["seed"]), int(t["steps"])) for t in stable] == [
      ("grpo", 0, 2), ("hrpo", 0, 2), ("grpo", 1, 2), ("hrpo", 1, 2)]
  for png in ("accuracy_vs_tokens.png", "curves.png"):
    assert os.path.getsize(os.path.join(work, png)) > 1000

  before = len(_log(work))
  monkeypatch.setattr(compare.workers, "run_workers",  # finished: not even a worker starts
                      lambda *a: pytest.fail("a finished compare started workers"))
  again = Compare(cfg, work).run()  # finished: trains nothing, same table
  assert len(_log(work)) == before
  tabulate(again, work, "python -m lrjax.compare --config=configs/compare.py:smoke")
  with open(os.path.join(work, "results.csv")) as f:
    assert list(csv.DictReader(f)) == table


def test_mean_se_and_overrides():
  m, se = mean_se([0.5, 0.7, 0.9])
  assert m == pytest.approx(0.7) and se == pytest.approx(0.2 / math.sqrt(3))
  assert math.isnan(mean_se([0.4])[1]) and math.isnan(mean_se([])[0])
  c = compare.method_config("grpo", "arith", 3, compare_config.get_config("smoke"))
  assert c.seed == 3 and c.rl.steps == 2 and c.eval.sampled is False
  bad = compare_config.get_config("smoke")
  bad.overrides["grpo"] = ("rl.stepz=3",)
  with pytest.raises(ValueError, match="rl.stepz"):
    compare.method_config("grpo", "arith", 0, bad)
  # a method without a config becomes a "not available" row, not an error
  assert not compare.method_available("no_such_method")


def test_stability_spikes_and_tail_spread():
  from lrjax.compare_stability import grad_spikes, stability_of, tail_std
  rng = np.random.default_rng(0)
  g = list(1.0 + 0.1 * rng.random(40))
  g[5] = 50.0  # before 10 earlier steps: not counted
  g[20] = 10.0  # > 3x the median of the 20 before it
  g[30] = 3.5  # still > 3x (the median stays ~1.05)
  g[31] = 2.0  # not
  want = sum(g[t] > 3 * sorted(g[:t])[(t - 1) // 2] if t % 2 else
             g[t] > 3 * (sorted(g[:t])[t // 2 - 1] + sorted(g[:t])[t // 2]) / 2
             for t in range(10, 40))
  assert grad_spikes(g) == want == 2
  assert tail_std(list(range(10))) == pytest.approx(math.sqrt(0.5))  # [8, 9]
  assert math.isnan(tail_std([1.0, 2.0]))  # the last 20% of 2 steps: fewer than 2 values
  recs = [{"phase": "rl", "step": i + 1, "train/grad_norm": x, "train/correct": i / 40}
          for i, x in enumerate(g)] + [{"phase": "sft", "step": 1, "train/grad_norm": 99.0}]
  s = stability_of(recs)
  assert s["steps"] == 40 and s["grad_spikes"] == 2
  assert s["correct_std"] == pytest.approx(np.std(np.arange(32, 40) / 40, ddof=1))


def test_units_group_the_methods_that_share_a_warm_up(tmp_path):
  units = Compare(compare_config.get_config(), str(tmp_path)).units()
  arith0 = [u.methods for u in units if u.task == "arith" and u.seed == 0]
  assert arith0 == [("sft", "sft_control", "grpo", "hrpo", "lepo", "latent_grpo"), ("nocot",),
                    ("coconut",), ("latr", "latent_rl"), ("dlr",)]
  assert [u.methods for u in units if u.task == "prosqa"] == [
      ("sft",), ("coconut",), ("latr_sft",)]
  assert len(units) == 3 * 5 + 3  # prosqa: seed 0 only
  assert units[0].flag == "arith:0:sft,sft_control,grpo,hrpo,lepo,latent_grpo"


def test_plot_styles_are_fixed_per_method_and_distinct():
  """A method keeps its marker and colour whatever order the plots meet it in; the 11
  methods of the default compare get 11 different colours."""
  from lrjax.compare_plots import styles
  names = list(compare_config.get_config().methods)
  assert len(names) == 11
  a, b = styles(names), styles(list(reversed(names)) + names[:3])
  assert a == b
  assert len({colour for _, colour in a.values()}) == 11


def test_failed_workers_are_named_with_their_logs(tmp_path, capsys):
  """Workers that exit with an error (here: a task no config knows) are reported
  together, each with its exit code and log, after every worker ended."""
  cfg = compare_config.get_config("smoke")
  units = [compare.Unit("nosuch", 0, ("grpo",)), compare.Unit("nosuch2", 1, ("grpo", "hrpo"))]
  with pytest.raises(compare.WorkerFailed) as e:
    compare.run_workers(cfg, str(tmp_path), units, 2)
  msg = str(e.value)
  for u in units:
    log = tmp_path / "logs" / f"{u.name}.log"
    assert f"{u.name} (exit 1, log {log})" in msg and "re-run the same command" in msg
    assert f"unknown preset {u.task!r}" in log.read_text()  # the worker's own error
  out = capsys.readouterr().out
  assert out.count("FAILED (exit 1)") == 2 and out.count("started; log") == 2


def test_worker_group_with_an_unknown_method_is_refused(tmp_path):
  """`--group=<task>:<seed>:<method>` names a method of the stored compare config,
  or the worker exits with one line naming it (it used to exit 0, training nothing)."""
  cfg = compare_config.get_config("smoke")
  with open(tmp_path / compare.CONFIG_FILE, "w") as f:
    json.dump(cfg.to_dict(), f)
  with pytest.raises(SystemExit, match="nosuch is not a method of task 'arith'") as e:
    compare.run_group(str(tmp_path), "arith:0:nosuch")
  assert "\n" not in str(e.value) and "grpo, hrpo" in str(e.value)
