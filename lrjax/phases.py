"""Registers the phases `lrjax.main` can run (config.mode = 'sft', 'rl', 'eval', ...).

`PRECHECKS` holds optional checks of a phase that need the built `Run` (model
and tokenizer) but no training; `lrjax.main` runs those of every requested
phase before the first phase starts, so a bad setting of a later phase fails
at once instead of after the earlier phases.
"""
from __future__ import annotations

from lrjax.registry import Registry

# phase name -> fn(run: lrjax.run.Run) -> None
PHASES: Registry = Registry("phase")
# phase name -> fn(run) -> None, raising ConfigError
PRECHECKS: Registry = Registry("phase check")


@PHASES.register("sft")
def _sft(run) -> None:
  from lrjax.sft.trainer import run_sft
  run_sft(run)


@PHASES.register("eval")
def _eval(run) -> None:
  from lrjax.eval_phase import run_eval_phase
  run_eval_phase(run)


@PHASES.register("rl")
def _rl(run) -> None:
  from lrjax.rl.trainer import run_rl
  run_rl(run)


@PRECHECKS.register("rl")
def _rl_check(run) -> None:
  from lrjax.rl.trainer import check_param_groups
  check_param_groups(run)
