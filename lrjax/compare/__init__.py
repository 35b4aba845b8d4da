"""Every method on the same tasks and seeds: one table, two plots.

    python -m lrjax.compare --config=configs/compare.py --workdir=runs/compare
    python -m lrjax.compare --config=configs/compare.py:smoke --workdir=runs/compare_smoke

For each task, seed and method (a config stem under configs/, e.g. `grpo`) the
method's own config runs in an ordinary lrjax workdir,
`<workdir>/<task>/s<seed>/<method>`, so each run resumes on its own and an
interrupted compare continues where it stopped (finished runs are skipped).

Warm-ups are shared. Every method whose mode includes `sft` has a warm-up key:
the hash of the config sections that decide its SFT phase (data, model, sft,
tokenizer, eval, seed, init, and whether the vocabulary needs the latent
tokens). The first method with a key trains it once, mode `sft`, in
`<workdir>/<task>/s<seed>/warmup-<key>`; an SFT-only method (CoT-SFT,
No-CoT, Coconut, LatR SFT) *is* its warm-up, and an RL method gets a copy of
the finished SFT phase (export, DONE, tokenizer and its metric lines) in its
own workdir before it runs, so its `sft` phase is reused. The continued-SFT
control (`sft_control`) continues the CoT-SFT warm-up of the same seed
(`sft.start_from`).

Outputs in the compare workdir:

* `results.csv`: one row per (task, method, seed) with `task, method, seed,
  accuracy, pass@1, pass@k, format_rate, response_tokens, latent_steps, gain,
  wall_s` from the run's `metrics.jsonl`: the last evaluation of the method's
  final phase; `gain` = that accuracy minus the first evaluation of the same
  phase (its starting model: RL step 0, the control's warm-up end, an SFT
  method's random init); `wall_s` = the seconds this compare spent training
  the row (an RL row: its RL phase; an SFT row: its warm-up).
* `RESULTS.md`: means ± standard errors over seeds per (task, method), the
  command, versions and machine; methods without a config are listed as such;
  a training-stability section for the RL rows (`lrjax.compare_stability`).
* `stability.csv`: per RL run, the spread of `train/correct` over its last 20%
  of steps and its gradient-norm spikes.
* `accuracy_vs_tokens.png` and `curves.png` (`lrjax.compare_plots`).
* `compare_log.jsonl`: one line per action (`warmup`, `run`, `reuse`, and
  `finished` / `stopped` with the wall seconds of an invocation that trained
  something).

Parallel workers (`jobs` > 1): the methods of one task and seed that share a
warm-up form a unit (`Compare.units`: e.g. CoT-SFT, the control, token GRPO,
HRPO, LEPO and Latent-GRPO on the CoT warm-up; LatR GRPO and Latent RL on the
LatR model; Coconut alone), and units are independent, so each runs in its own
worker process, `python -m lrjax.compare --workdir=W
--group=<task>:<seed>:<method>,...`, reading the compare config the parent
wrote to `W/compare_config.json`; at most `jobs` at a time, largest units
first, each pinned to one CPU core when there are at least `jobs` cores (an RL
rollout keeps about one core busy, so two pinned workers on 2 cores train ~1.3x
faster than one run after another). Their output goes to
`W/logs/<task>_s<seed>_<methods>.log`. The parent then tabulates
(the in-process pass that follows finds every run finished). SIGTERM or Ctrl-C
in the parent is passed to the workers, which save a checkpoint and stop.

The package, by job:

    plan.py     each method's config, kind and warm-up key; the rows, units and
                trainings of a (task, seed)
    runs.py     `Compare`: trains what the plan lists, in this process; a worker's unit
    workers.py  the worker processes (`jobs` > 1)
    results.py  the numbers, from the runs' metrics.jsonl
    report.py   results.csv, stability.csv, RESULTS.md and the plots (`tabulate`)
    workdir.py  the compare workdir's own files (action log, wall seconds, config)
    __main__.py the command
"""
from lrjax.compare_plots import mean_se
from lrjax.compare.plan import (WARMUP_SECTIONS, Plan, Row, Training, Unit, apply_overrides,
                                kind_of, method_available, method_config, parse_override,
                                phases_of, warmup_key)
from lrjax.compare.report import fmt, hms, tabulate, versions, write_markdown
from lrjax.compare.results import (COLUMNS, curve_series, evals_of, result_of, stability_table,
                                   summarize, training_seconds, write_csv)
from lrjax.compare.runs import Compare, copy_warmup, run_group, run_in_process
from lrjax.compare.workdir import CONFIG_FILE, LOG_FILE, WALL_FILE
from lrjax.compare.workers import WorkerFailed, run_workers, worker_cpus

__all__ = [
    "CONFIG_FILE", "COLUMNS", "LOG_FILE", "WALL_FILE", "WARMUP_SECTIONS", "Compare", "Plan",
    "Row", "Training", "Unit", "WorkerFailed", "apply_overrides", "copy_warmup", "curve_series",
    "evals_of", "fmt", "hms", "kind_of", "mean_se", "method_available", "method_config",
    "parse_override", "phases_of", "result_of", "run_group", "run_in_process", "run_workers",
    "stability_table", "summarize", "tabulate", "training_seconds", "versions", "warmup_key",
    "worker_cpus", "write_csv", "write_markdown"]
