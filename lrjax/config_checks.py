"""The parts of config validation a method module may use: `Row`, the checks, `ROWS`.

Kept apart from `lrjax.validate` (whose registry rows import the registries
lazily) so that a method's typed options can name their checks (`Options.CHECKS`) and a
method can declare rows without taking on those imports:

    from lrjax.config_checks import Row, positive
    Method(..., rows=(Row("my_method.coef", positive, phases=("rl",)),))

`lrjax.method.register_method` files a method's rows in `METHOD_ROWS` under its
name; the validation runs them after `ROWS`.

`check_rows` reads the rows as they are when it starts: a row added while it
runs (by a module a check imports) is not seen, so rows must be added before.
"""
from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

from lrjax.config_utils import ConfigError, get_field
from lrjax.registry import Registry

Check = Callable[[Any, Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class Row:
  """One validation: `check(value, config)` -> problem or None, for `field`."""
  field: str
  check: Check
  phases: tuple[str, ...] = ()  # () = always; else only when one of them runs
  when: Callable[[Any], bool] | None = None

  def applies(self, config, phases: Sequence[str]) -> bool:
    if self.phases and not set(self.phases) & set(phases):
      return False
    return self.when is None or bool(self.when(config))


# --------------------------------------------------------------------------- checks


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def one_of(names: Callable[[], Sequence[str]]) -> Check:
  """The value must be one of `names()` (looked up at validation time)."""
  def check(value, config):
    choices = list(names())
    if value not in choices:
      return f"is not one of: {', '.join(repr(c) if c == '' else str(c) for c in choices)}"
    return None
  return check


def _compare(op: str, bound: float, integer: bool = False) -> Check:
  test = {">": lambda v: v > bound, ">=": lambda v: v >= bound}[op]

  def check(value, config):
    if not (_is_int(value) if integer else _is_number(value)):
      return f"must be {'an integer' if integer else 'a number'} {op} {bound:g}"
    return None if test(value) else f"must be {op} {bound:g}"
  return check


positive = _compare(">", 0)
non_negative = _compare(">=", 0)
positive_int = _compare(">", 0, integer=True)
non_negative_int = _compare(">=", 0, integer=True)


def non_empty_str(value, config) -> str | None:
  return None if isinstance(value, str) and value else "must be a non-empty string"


def in_unit_interval(closed_low: bool, closed_high: bool) -> Check:
  lo, hi = "[" if closed_low else "(", "]" if closed_high else ")"

  def check(value, config):
    ok = _is_number(value) and (value >= 0 if closed_low else value > 0) and (
        value <= 1 if closed_high else value < 1)
    return None if ok else f"must be in {lo}0, 1{hi}"
  return check


def param_groups(value, config) -> str | None:
  """A non-empty sequence of (regex, lr) pairs, regex compiling, lr > 0 or None."""
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    return "must be a non-empty tuple of (regex, lr) pairs, e.g. (('.*', 1e-4),)"
  for i, entry in enumerate(value):
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
      return f"entry {i} ({entry!r}) must be a (regex, lr) pair"
    pattern, lr = entry
    if not isinstance(pattern, str):
      return f"entry {i}: the pattern {pattern!r} must be a string"
    try:
      re.compile(pattern)
    except re.error as e:
      return f"entry {i}: the pattern {pattern!r} does not compile ({e})"
    if lr is not None and not (_is_number(lr) and lr > 0):
      return f"entry {i} ({pattern!r}): lr {lr!r} must be a number > 0, or None (frozen)"
  return None


def boolean(value, config) -> str | None:
  return None if isinstance(value, bool) else "must be True or False"


def off_or_non_negative(value, config) -> str | None:
  """None or 0 (off), or a number > 0 (e.g. rl.clip_eps_high)."""
  if value is None or (_is_number(value) and value >= 0):
    return None
  return "must be None or a number >= 0 (0 = off)"


def off_or_above_one(value, config) -> str | None:
  """None or 0 (off), or a number > 1 (the dual-clip constant c)."""
  if value is None or (_is_number(value) and (value == 0 or value > 1)):
    return None
  return "must be None or 0 (off), or a number > 1"


# Every row, in order (`lrjax.validate` adds the core rows; method modules add theirs).
ROWS: list[Row] = []
# method name -> its rows (`lrjax.method.Method.rows`), run after ROWS
METHOD_ROWS: Registry[tuple[Row, ...]] = Registry("method's validation rows")
# config section -> the typed options record (`lrjax.method.Options`) of the method owning it
OPTION_SECTIONS: Registry[type] = Registry("method's config section")


def check_rows(config, phases: Sequence[str], rows: Sequence[Row] | None = None) -> None:
  """Raises a one-line ConfigError for the first row whose check fails."""
  for row in tuple(ROWS if rows is None else rows):  # a snapshot: see the module docstring
    if not row.applies(config, phases):
      continue
    value = get_field(config, row.field)
    problem = row.check(value, config)
    if problem:
      why = f" (the {'/'.join(row.phases)} phase runs)" if row.phases else ""
      raise ConfigError(f"config.{row.field}={value!r} {problem}{why}")
