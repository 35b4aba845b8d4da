"""The lrjax entrypoint: `python -m lrjax.main --config=configs/hrpo.py [--workdir=W]`.

The config's `mode` lists the phases to run (`sft`, `rl`, `eval`, e.g.
'sft,rl'); each phase is a function in `PHASES`. A workdir that already holds
a run resumes it (a differing config is refused unless
`--config.allow_config_mismatch=True`).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default runs/<config name>)")

def default_workdir(config) -> str:
  return os.path.join("runs", config.get("name") or "run")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from absl import logging as absl_logging
  if not flags.FLAGS["verbosity"].present:  # keep the console to lrjax's own lines
    absl_logging.set_verbosity(absl_logging.WARNING)
  from lrjax.config_utils import ConfigError
  from lrjax.run import Run, validate_config
  config = _CONFIG.value
  if config is None:
    sys.exit("lrjax: --config is required (e.g. --config=configs/hrpo.py)")
  from lrjax.phases import PHASES
  try:
    phases = validate_config(config, PHASES)
    run = Run.create(config, _WORKDIR.value or default_workdir(config))
  except (ConfigError, ValueError) as e:
    sys.exit(f"lrjax: config error: {e}")
  for name in phases:
    PHASES.get(name)(run)
  run.close()


if __name__ == "__main__":
  app.run(main)
