"""`python -m lrjax.compare`: runs and tabulates a compare config (see `lrjax.compare`);
with `--group`, one unit as a worker of the compare in `--workdir`."""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from lrjax.compare.report import tabulate
from lrjax.compare.runs import Compare, run_group
from lrjax.compare.workers import WorkerFailed


def main(argv, cfg, workdir: str, group: str = "") -> None:
  del argv
  from absl import logging as absl_logging
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if group:
    run_group(workdir, group)
    return
  if cfg is None:
    sys.exit("lrjax.compare: --config is required (e.g. --config=configs/compare.py)")
  command = "python -m lrjax.compare " + " ".join(sys.argv[1:])
  try:
    rows = Compare(cfg, workdir).run()
  except WorkerFailed as e:
    sys.exit(str(e))
  tabulate(rows, workdir, command)
  with open(os.path.join(workdir, "RESULTS.md")) as f:
    print(f.read(), flush=True)


if __name__ == "__main__":  # the flags exist only in the command (the module is imported too)
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/compare.py",
                                            lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "the compare workdir")
  _GROUP = flags.DEFINE_string("group", "", "internal: run one '<task>:<seed>:<method>,...' unit "
                               "as a worker of the compare in --workdir")
  app.run(lambda argv: main(argv, _CONFIG.value, _WORKDIR.value, _GROUP.value))
