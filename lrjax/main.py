"""The lrjax entrypoint: `python -m lrjax.main --config=configs/hrpo.py [--workdir=W]`.

The config's `mode` lists the phases to run (`sft`, `value`, `rl`, `eval`,
`span_probe`, e.g. 'sft,rl'); each phase is a function in `PHASES`. A workdir
that already holds a run resumes it (a differing config is refused unless
`--config.allow_config_mismatch=True`; the mesh and the logging cadence may
change). `--config=configs/<m>.py` resolves from any directory (the configs
ship with the package); `--print_workdir` prints the workdir and exits.
A rule setting's old flag `--config.rule.<field>=v` still sets it where it lives now
(its method's section, e.g. `--config.lepo.top_k`), with a one-line deprecation note
(`lrjax.config_moves`).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default runs/<config name>, "
                                "runs/<config name>-<mode> for eval / span_probe)")
_PRINT_WORKDIR = flags.DEFINE_bool("print_workdir", False,
                                   "print the run's workdir (absolute) and exit")

# Phases that read a trained model (config.init) and train nothing: their runs
# get a workdir of their own, never the trained run's.
READ_ONLY_MODES = ("eval", "span_probe")
# `--config.rule.<field>` flags of rule settings, set once the config is read
_MOVED_FLAGS: list[tuple[str, str]] = []


def default_workdir(config) -> str:
  """`runs/<config.name>`; `runs/<name>-<mode>` for a run of evaluation phases only
  (e.g. `runs/sft-eval`), so that `--config.mode=eval --config.init=runs/sft`
  never writes into the SFT run's workdir."""
  from lrjax.config_utils import mode_phases
  name = config.get("name") or "run"
  phases = mode_phases(str(config.get("mode") or ""))
  if phases and all(p in READ_ONLY_MODES for p in phases):
    name = "-".join([name, *phases])
  return os.path.join("runs", name)


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
  workdir = _WORKDIR.value or default_workdir(config)
  if _PRINT_WORKDIR.value:
    print(os.path.abspath(workdir))
    return
  import lrjax.methods  # noqa: F401  (registers the shipped methods)
  from lrjax.config_moves import apply_moved_flags
  from lrjax.metrics import say
  from lrjax.phases.pipeline import prepare, run_phases
  try:
    for note in apply_moved_flags(config, _MOVED_FLAGS):
      say(note)
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


def resolve_config_path(value: str) -> str:
  """A `--config=PATH[:preset]` value as lrjax.main reads it, from any directory.

  PATH as given when that file exists (a local file wins; a file inside a
  `configs/` package folder also puts that folder's parent first on `sys.path`,
  so its `from configs import base` reads its own siblings); else
  `configs/<m>.py` is the file of the installed `configs` package (the configs
  ship with lrjax). Anything else is left for the config flag to report.
  """
  import importlib.util
  path, sep, preset = value.partition(":")
  if os.path.isfile(path):
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == "configs" and os.path.isfile(
        os.path.join(folder, "__init__.py")):
      parent = os.path.dirname(folder)
      if parent not in sys.path:
        sys.path.insert(0, parent)
    return value
  rel = os.path.normpath(path)
  if not rel.startswith("configs" + os.sep):
    return value
  try:
    spec = importlib.util.find_spec("configs")
  except (ImportError, ValueError):
    spec = None
  for location in (spec.submodule_search_locations or []) if spec else []:
    candidate = os.path.join(location, rel[len("configs" + os.sep):])
    if os.path.isfile(candidate):
      return candidate + sep + preset
  return value


def resolve_config_args(argv: list[str]) -> list[str]:
  """argv with the value of `--config=PATH` or `--config PATH` through `resolve_config_path`."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i] = f"--config={resolve_config_path(a[len('--config='):])}"
    elif a == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config_path(out[i + 1])
  return out


def parse_flags(argv):
  from lrjax.config_moves import split_moved_flags
  argv = resolve_config_args(argv)
  try:
    argv, moved = split_moved_flags(argv)
    if moved:  # the config flag reads its overrides from sys.argv itself
      _MOVED_FLAGS[:] = moved
      sys.argv[:] = argv
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    sys.exit(f"lrjax: config error: {_one_line_error(argv, e)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
