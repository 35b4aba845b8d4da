"""The lrjax entrypoint: `python -m lrjax.main --config=configs/hrpo.py [--workdir=W]`.

The config's `mode` lists the phases to run (`sft`, `value`, `rl`, `eval`,
`span_probe`, e.g. 'sft,rl'); each phase is a function in `PHASES`. A workdir
that already holds a run resumes it (a differing config is refused unless
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
  from lrjax.config_utils import ConfigError, ConfigMismatchError
  config = _CONFIG.value
  if config is None:
    sys.exit("lrjax: --config is required (e.g. --config=configs/hrpo.py)")
  from lrjax.phases.pipeline import prepare, run_phases
  workdir = _WORKDIR.value or default_workdir(config)
  try:
    run, phases = prepare(config, workdir)
  except ConfigMismatchError as e:  # multi-line: one line per differing field
    sys.exit(f"lrjax: {e}")
  except (ConfigError, ValueError, OSError) as e:
    sys.exit(f"lrjax: config error: {' '.join(str(e).split())}")
  try:
    run_phases(run, phases)
  except ConfigError as e:  # a phase's own refusal (e.g. no checkpoint restores): one line
    sys.exit(f"lrjax: {' '.join(str(e).split())}")


def _one_line_error(argv, err: Exception) -> str:
  """A flags/config parsing error as one line naming the offending field."""
  text = " ".join(str(err).split())
  if isinstance(err, (AttributeError, KeyError)):  # --config.<unknown field>=...
    missing = text.strip("\"'")
    for arg in argv:
      if arg.startswith("--config.") and missing in arg.split("=", 1)[0].split("."):
        field = arg.split("=", 1)[0][len("--config."):]
        return f"unknown config field {field!r} (from {arg})"
    return f"unknown config field {missing!r}"
  return text.removeprefix("flag ")


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    sys.exit(f"lrjax: config error: {_one_line_error(argv, e)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
