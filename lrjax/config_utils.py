"""Config helpers: flatten / serialise ConfigDicts, resume checks, validation.

    save_config(workdir, config)                       # <workdir>/config.json
    check_resume_config(workdir, config, config.allow_config_mismatch)
    task = validate_choice(config, "data.task", TASKS.names())

A run resumed with a config that differs from the stored one is refused with a
`ConfigMismatchError` listing every differing field, unless
`--config.allow_config_mismatch=True` (then it only logs a warning). Fields in
`RESUME_IGNORED` (and everything below them) never count as differences; those
in `RESUME_FREE` (the mesh, the logging cadence, the RL update's length buckets)
do not either, but a resume that changes them says so: checkpoints restore onto
any mesh, exact in values (a different mesh or chunking may reorder floating-point
reductions, so the continuation is not promised bit-identical to the old setting).
"""
from __future__ import annotations

import difflib
import json
import math
import os
import tempfile
from typing import Any, Callable, Mapping, Sequence

from absl import logging

CONFIG_FILE = "config.json"
RESUME_IGNORED: tuple[str, ...] = ("allow_config_mismatch", "workdir", "distributed")
# fields that change how a value is computed (its float32 summation order), not what
RESUME_FREE: tuple[str, ...] = ("mesh", "sft.log_every", "rl.log_every", "rl.bucket_width",
                                "rl.bucket_rows")
_ABSENT = "<absent>"


class ConfigError(ValueError):
  """An invalid config value; the message names the field."""


class ConfigMismatchError(ConfigError):
  """The config of a resumed run differs from the stored one."""


def to_dict(config: Any) -> Any:
  """A JSON-serialisable copy: ConfigDict / mappings -> dicts (references
  resolved), tuples -> lists, numpy scalars -> Python, other objects -> str."""
  if hasattr(config, "to_dict"):  # ConfigDict, FrozenConfigDict
    config = config.to_dict()
  if isinstance(config, Mapping):
    return {str(k): to_dict(v) for k, v in config.items()}
  if isinstance(config, (list, tuple)):
    return [to_dict(v) for v in config]
  if config is None or isinstance(config, (bool, int, float, str)):
    return config
  if hasattr(config, "item") and getattr(config, "ndim", None) == 0:  # numpy / jax scalar
    return config.item()
  return str(config)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{"sft": {"lr": 1e-4}} -> {"sft.lr": 1e-4}. Non-empty mappings are expanded;
  every other value (lists, empty dicts included) is a leaf."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  out: dict[str, Any] = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if hasattr(v, "to_dict"):
      v = v.to_dict()
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, bool) != isinstance(b, bool):
    return False
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b


def config_mismatch(stored: Mapping, current: Any, ignore: Sequence[str] = ()) -> list[str]:
  """Differing fields as "sft.lr: 1e-05 (stored) != 0.0001 (now)", sorted by key;
  a field on one side only shows `<absent>` on the other. Both sides are
  normalised with `to_dict` first, so a tuple equals its JSON list. Keys in
  `ignore` (and the fields below them) are skipped."""
  a, b = flatten(to_dict(stored)), flatten(to_dict(current))
  diffs = []
  for key in sorted(set(a) | set(b)):
    if any(key == f or key.startswith(f + ".") for f in ignore):
      continue
    va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if va is _ABSENT or vb is _ABSENT or not _same(va, vb):
      fa = va if va is _ABSENT else repr(va)
      fb = vb if vb is _ABSENT else repr(vb)
      diffs.append(f"{key}: {fa} (stored) != {fb} (now)")
  return diffs


def save_config(workdir: str, config: Any) -> str:
  """Writes `<workdir>/config.json` atomically (process 0 only); returns its path."""
  import jax  # deferred: keeps this module importable without initialising JAX
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() != 0:
    return path
  os.makedirs(workdir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".config.", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path


def load_config(workdir: str) -> dict | None:
  """The stored config of `workdir` as a dict, or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def mode_phases(mode: str) -> list[str]:
  """The phases of a `config.mode` string: 'sft, rl' -> ['sft', 'rl']."""
  return [p.strip() for p in mode.split(",") if p.strip()]


def check_resume_config(workdir: str, config: Any, allow_mismatch: bool,
                        unread: Sequence[str] = (),
                        migrate: Callable[[dict], dict] | None = None) -> None:
  """Refuses to resume `workdir` with a config that differs from its stored one.

  Raises ConfigMismatchError listing every differing field (ignoring
  `RESUME_IGNORED`, `RESUME_FREE` (a change there is said, not refused), and
  the `rl` section when neither config runs an RL phase: an SFT run, or a
  compare's shared warm-up, does not read it), and the fields in `unread` (the
  caller's: fields no part of this run reads); with
  `allow_mismatch` logs the same list as a warning. Does nothing when the
  workdir has no stored config. `migrate` (the caller's) reads a stored config
  of an older layout as the current one before the comparison.
  """
  stored = load_config(workdir)
  if stored is None:
    return
  if migrate is not None:
    stored = migrate(stored)
  ignore = RESUME_IGNORED + tuple(unread)
  modes = [c.get("mode") for c in (stored, to_dict(config))]
  if all(isinstance(m, str) for m in modes) and not any("rl" in mode_phases(m) for m in modes):
    ignore = ignore + ("rl",)
  diffs = config_mismatch(stored, config, ignore=ignore)
  free = [d for d in diffs if any(d.startswith((f + ":", f + ".")) for f in RESUME_FREE)]
  diffs = [d for d in diffs if d not in free]
  if free:
    from lrjax.metrics import say  # deferred: keeps this module free of jax imports
    say(f"[lrjax] resuming {workdir} with another mesh or logging cadence or length buckets "
        "(allowed: values are exact, not promised bit-identical to the old setting): "
        + "; ".join(free))
  if not diffs:
    return
  listing = "\n  ".join(diffs)
  where = os.path.join(workdir, CONFIG_FILE)
  if allow_mismatch:
    logging.warning("resuming %s with a config that differs from %s in %d field(s) "
                    "(allow_config_mismatch=True):\n  %s", workdir, where, len(diffs), listing)
    return
  raise ConfigMismatchError(
      f"the config differs from the one this run was started with ({where}) in "
      f"{len(diffs)} field(s):\n  {listing}\n"
      "To resume, rerun with the stored values; to start afresh, use a new --workdir; "
      "to resume with the new values anyway, pass --config.allow_config_mismatch=True.")


def get_field(config: Any, dotted_field: str) -> Any:
  """`config.a.b` for "a.b"; ConfigError (with a close match, if any) when absent."""
  node = config
  for i, part in enumerate(dotted_field.split(".")):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join(dotted_field.split(".")[:i]) or "config"
      hint = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
      suffix = f"; did you mean {hint[0]!r}?" if hint else ""
      raise ConfigError(f"config.{dotted_field}: {where} has no field {part!r}{suffix}")
    node = node[part]
  return node


def validate_choice(config: Any, dotted_field: str, choices: Sequence[Any]) -> Any:
  """Returns the field's value; raises a one-line ConfigError such as
  "config.data.task='foo' is not one of: arith, prosqa, gsm8k" otherwise."""
  value = get_field(config, dotted_field)
  if value not in choices:
    raise ConfigError(
        f"config.{dotted_field}={value!r} is not one of: {', '.join(str(c) for c in choices)}")
  return value
