"""Registers the phases `lrjax.main` can run (config.mode = 'sft', 'rl', 'eval', ...)."""
from __future__ import annotations

from lrjax.registry import Registry

# phase name -> fn(run: lrjax.run.Run) -> None
PHASES: Registry = Registry("phase")


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
