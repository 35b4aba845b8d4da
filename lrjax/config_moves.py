"""Config fields that moved: a thought rule's settings left the shared `config.rule` for
the section of its method's typed options (`ThoughtRule.config_section`), e.g. under
LEPO's rule `config.rule.top_k` is now `config.lepo.top_k`. `config.rule` keeps the
generic `name` and `num_latent`. For one release the old layout still works:

* a flag `--config.rule.<field>=v` sets the field where the selected rule keeps it now,
  with a one-line deprecation note naming the new flag (`split_moved_flags`, then
  `apply_moved_flags` once the config is read); a field no section holds is refused
  with a line that says where the rule's settings are; a compare's override
  `rule.<field>=v` is read the same way (`lrjax.compare.plan.apply_overrides`);
* a workdir's stored config.json of the old layout is read as the new one when the run
  resumes, with a one-line notice (`migrate_stored`); the config.json the run writes
  then has the new layout.

`model.param_dtype` (the dtype parameters and optimizer state are stored in) is newer
than some workdirs: a stored config without it stored them in `model.dtype`, and is
read so (`migrate_param_dtype`): a float32 run resumes as it was, and a bfloat16 one is
refused naming `model.param_dtype` unless the flag keeps bfloat16.
"""
from __future__ import annotations

import ast
import copy
from collections.abc import Sequence
from typing import Any

from lrjax.config_utils import ConfigError

GENERIC_RULE_FIELDS = ("name", "num_latent")  # what `config.rule` keeps
_FLAG = "--config.rule."


def new_rule_field(rule: str, field: str) -> str | None:
  """'<section>.<field>', where setting `field` of rule `rule` lives now; None when the
  rule is unknown or keeps no such setting."""
  from lrjax.latent import RULES, rule_defaults  # noqa: PLC0415 - after the flags are read
  if rule not in RULES:
    return None
  section = RULES.get(rule).config_section
  return f"{section}.{field}" if section and field in rule_defaults(rule) else None


def is_moved_setting(field: str) -> bool:
  """Whether `field` (the part after 'rule.') names a rule setting of the flat layout,
  which now lives in its method's section (not `name` or `num_latent`)."""
  return "." not in field and field not in GENERIC_RULE_FIELDS


def split_moved_flags(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(argv without its `--config.rule.<field>` flags of a rule setting, those flags as
  (field, value text)); `name` and `num_latent` stay in argv. Both `--flag=v` and
  `--flag v` forms are read."""
  kept, moved = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    field, eq, text = arg[len(_FLAG):].partition("=")
    if arg.startswith(_FLAG) and is_moved_setting(field):
      if not eq:
        if i + 1 >= len(args):
          raise ConfigError(f"{arg} has no value")
        text = args[i + 1]
        i += 1
      moved.append((field, text))
    else:
      kept.append(arg)
    i += 1
  return kept, moved


def _parse(text: str, current: Any, flag: str) -> Any:
  """`text` as a value of the type of `current` (as the config flags read it)."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "false", "0"):
      return text.lower() in ("true", "1")
    raise ConfigError(f"{flag}={text}: must be True or False")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f"{flag}={text}: not a value of type {type(current).__name__}") from e
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  return value


def apply_moved_flags(config, moved: Sequence[tuple[str, str]],
                      prefix: str = "--config.") -> list[str]:
  """Sets each (field, text) of `split_moved_flags` where the selected rule
  (`config.rule.name`, after the other flags) keeps it now; returns the one-line notes.
  A config that still has `config.rule.<field>` itself gets the value there. Raises
  ConfigError naming the field when the rule keeps no such setting. `prefix`: how the
  notes spell a field (`--config.` for flags, '' for a compare's overrides)."""
  from lrjax.latent import RULES  # noqa: PLC0415
  notes = []
  for field, text in moved:
    old = f"{prefix}rule.{field}"
    if field in config.rule:  # a config of its own that keeps the field in config.rule
      config.rule[field] = _parse(text, config.rule[field], old)
      continue
    rule = config.rule.name
    new = new_rule_field(rule, field)
    if new is None:
      section = RULES.get(rule).config_section if rule in RULES else ""
      where = (f"its settings are config.{section}" if section else "it has no settings")
      raise ConfigError(f"unknown config field 'rule.{field}' (from {old}={text}): the "
                        f"rule settings moved to their method's section, and rule "
                        f"{rule!r} keeps no {field!r} ({where})")
    section, leaf = new.split(".")
    if section not in config:
      raise ConfigError(f"{old} is now {prefix}{new}, but this config has no "
                        f"config.{section} (configs/base.py's use_rule adds it)")
    value = _parse(text, config[section][leaf], old)
    try:
      config[section][leaf] = value
    except TypeError as e:
      raise ConfigError(f"{old}={text}: {' '.join(str(e).split())}") from e
    notes.append(f"[lrjax] {old} is deprecated: use {prefix}{new} (set to {value!r})")
  return notes


def migrate_stored(stored: dict, config) -> tuple[dict, str | None]:
  """A stored config (a config.json's dict) read in the new layout: the settings its rule
  kept in `rule` moved to the rule's section (where `config` has that section and no
  `config.rule` field of that name), other rules' settings (nothing reads them) dropped.
  Returns (the migrated copy, a one-line notice or None when nothing moved)."""
  rule = stored.get("rule")
  if not isinstance(rule, dict):
    return stored, None
  fields = [f for f in rule if f not in GENERIC_RULE_FIELDS and f not in config.rule]
  if not fields:
    return stored, None
  out = copy.deepcopy(stored)
  moved, dropped = [], []
  for field in fields:
    value = out["rule"].pop(field)
    new = new_rule_field(str(rule.get("name")), field)
    section = new.split(".")[0] if new else ""
    if new and section in config:
      target = out.setdefault(section, {})
      target.setdefault(new.split(".")[1], value)
      moved.append(f"rule.{field} -> {new}")
    else:
      dropped.append(f"rule.{field}")
  parts = [f"moved {', '.join(moved)}"] if moved else []
  if dropped:
    parts.append(f"dropped {', '.join(dropped)} (nothing reads them)")
  return out, ("its stored config.json has the layout from before each rule's settings "
               "moved to their method's section: read as the new one (" + "; ".join(parts)
               + ")")


def migrate_param_dtype(stored: dict) -> tuple[dict, str | None]:
  """A stored config from before `model.param_dtype`: its parameters were stored in
  `model.dtype`, so that is its param_dtype. Returns (the migrated copy, a one-line
  notice or None when it has the field)."""
  model = stored.get("model")
  if not isinstance(model, dict) or "param_dtype" in model or "dtype" not in model:
    return stored, None
  out = copy.deepcopy(stored)
  out["model"]["param_dtype"] = model["dtype"]
  return out, (f"its stored config.json is from before model.param_dtype: its parameters "
               f"were stored in model.dtype, read as model.param_dtype={model['dtype']!r}")
