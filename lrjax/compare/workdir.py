"""The compare workdir's own files: the action log, each run's wall time and the
config the workers read."""
from __future__ import annotations

import json
import os
import time

LOG_FILE = "compare_log.jsonl"  # one line per action (warmup, run, reuse, finished, stopped)
WALL_FILE = "compare_wall.json"  # in each run's workdir: the seconds this compare trained it
CONFIG_FILE = "compare_config.json"  # the compare config, written for the worker processes


def append_log(folder: str, /, **rec) -> None:
  """One line of the compare log in `folder` (`rec` may hold a run's `workdir`)."""
  with open(os.path.join(folder, LOG_FILE), "a") as f:
    f.write(json.dumps({"time": time.time(), **rec}) + "\n")


def read_log(workdir: str) -> list[dict]:
  try:
    with open(os.path.join(workdir, LOG_FILE)) as f:
      return [json.loads(line) for line in f if line.strip()]
  except OSError:
    return []


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}
