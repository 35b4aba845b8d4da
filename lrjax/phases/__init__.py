"""The pipeline: the phases `lrjax.main` runs, in the order `config.mode` lists them.

    sft   phases/sft.py   CoT / No-CoT / Coconut warm-up: run.params, <workdir>/sft/
    rl    phases/rl.py    rollout, rewards, advantages, updates: run.params, <workdir>/rl/
    eval  phases/eval.py  held-out metrics of `config.init` (and its rule sidecar)
    span_probe  phases/span_probe.py  does `config.init` read information from a latent span?

and a method's own phases (`lrjax.method.Method.phases`, e.g. Latent RL's value
head, Latent-SFT), registered with the method; and what the phases share:

    phases/run.py       `Run`: config, workdir, mesh, task, tokenizer, model, metrics writer
    phases/workdir.py   a phase's files: checkpoints, resume, export, DONE
    phases/held_out.py  the held-out evaluation each phase runs, logged as eval/*
    phases/rl_step.py   one RL step: roll out and score a batch, learn from it
    phases/train_loop.py  the loop of every training phase: guard, logging, evaluation
                        and checkpoint cadence, preemption

A phase is `fn(run) -> None` on the `lrjax.phases.run.Run` that every phase
shares; the parameters pass from one phase to the next through `run.params`
and `run.rule_params` (extra heads, e.g. a value head, through `run.heads`).

`PRECHECKS` holds optional checks of a phase that need the built `Run` (model
and tokenizer) but no training; `lrjax.main` runs those of every requested
phase before the first phase starts, so a bad setting of a later phase fails
at once instead of after the earlier phases.

The runners are imported when their phase runs, so reading the registry (the
config validation does) imports no JAX code.
"""
from __future__ import annotations

from lrjax.registry import Registry

# phase name -> fn(run: lrjax.phases.run.Run) -> None
PHASES: Registry = Registry("phase")
# phase name -> fn(run) -> None, raising ConfigError
PRECHECKS: Registry = Registry("phase check")


@PHASES.register("sft")
def _sft(run) -> None:
  from lrjax.phases.sft import run_sft
  run_sft(run)


@PHASES.register("eval")
def _eval(run) -> None:
  from lrjax.phases.eval import run_eval
  run_eval(run)


@PHASES.register("span_probe")
def _span_probe(run) -> None:
  from lrjax.phases.span_probe import run_span_probe
  run_span_probe(run)


@PHASES.register("rl")
def _rl(run) -> None:
  from lrjax.phases.rl import run_rl
  run_rl(run)


@PRECHECKS.register("rl")
def _rl_check(run) -> None:
  from lrjax.phases.rl import check_param_groups
  check_param_groups(run)
