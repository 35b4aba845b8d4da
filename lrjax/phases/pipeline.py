"""What `python -m lrjax.main` does with a config, as functions (`lrjax.compare` runs
many configs in one process with them).

    run, phases = prepare(config, workdir)   # validated, Run built, phase checks done
    run_phases(run, phases)                  # the phases in config.mode order
"""
from __future__ import annotations

import contextlib
import os


def prepare(config, workdir: str):
  """(run, phases): `config` validated and the `Run` built in `workdir`, with the
  checks of every requested phase done; nothing trained yet.

  A bad config raises `ConfigError` (or ValueError/OSError); the config.json it
  may have written to a fresh workdir is removed then, so a corrected rerun is
  not a mismatch.
  """
  from lrjax.config_utils import CONFIG_FILE
  from lrjax.phases import PHASES, PRECHECKS
  from lrjax.phases.run import Run
  from lrjax.validate import validate_config
  stored = os.path.join(workdir, CONFIG_FILE)
  fresh = not os.path.exists(stored)
  try:
    phases = validate_config(config, PHASES)
    run = Run.create(config, workdir)
    for name in phases:  # checks that need the model, before the first phase
      if name in PRECHECKS:
        PRECHECKS.get(name)(run)
  except Exception:
    if fresh:  # nothing ran: a corrected rerun is not a mismatch
      with contextlib.suppress(FileNotFoundError):  # another process may have removed it
        os.remove(stored)
    raise
  return run, phases


def run_phases(run, phases) -> None:
  """Runs the phases in order on one shared `Run`."""
  from lrjax.phases import PHASES
  try:
    for name in phases:
      PHASES.get(name)(run)
  finally:
    run.close()
