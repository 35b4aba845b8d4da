"""A method (one paper's parts) as one record, and the one call that registers it.

A method is a config that names its parts; the parts themselves live in the
method's own module under `lrjax/methods/`, which builds one `Method` record:

    MY_METHOD = Method(
        name="my_method",
        rules={"my_rule": MY_RULE},                  # RULES (a ThoughtRule; its settings
                                                     #   are config_section="my_method")
        objectives={"my_objective": MY_OBJECTIVE},   # OBJECTIVES (`rl.objective`)
        policy_losses={"my_loss": PolicyLoss(fn)},   # POLICY_LOSSES (`rl.loss`)
        aux_losses={"my_aux": my_aux},               # AUX_LOSSES (`rl.aux_losses`)
        sft_methods={"my_sft": SFTMethod(...)},      # SFT_METHODS (`sft.method`)
        phases={"my_phase": run_my_phase},           # PHASES (`config.mode`)
        prechecks={"my_phase": check_my_phase},      # PRECHECKS (before any phase)
        heads={"my_head": Head(init, phase)},        # HEADS (params["heads"] entries)
        readable={"my_rule": render},                # READABLE (shown latent thoughts)
        options={"my_method": MyOptions},            # config section -> typed `Options`
        prompt="my_paper",                           # its paper's prompt (`data.prompt`)
        rows=(Row("my_method.coef", positive),))     # validation rows of other fields

and `lrjax/methods/__init__.py` registers it with `register_method(MY_METHOD)`:
every part goes into its registry under its name, and the record into `METHODS`.
`unregister_method(name)` takes them all out again (a test's own method).

Generic code (`lrjax.rl`, `rollout`, `phases`, `model`, `data`, `latent`, `validate`)
reads the registries only: it never imports `lrjax.methods` and names no method
(`tests/test_import_graph.py` checks both).
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, ClassVar, Mapping

import ml_collections

from lrjax.config_checks import METHOD_ROWS, OPTION_SECTIONS, Check, Row
from lrjax.latent.base import RULES, ThoughtRule
from lrjax.latent.objective import HEADS, OBJECTIVES, Head, Objective
from lrjax.latent.readable import READABLE
from lrjax.phases import PHASES, PRECHECKS
from lrjax.registry import Registry
from lrjax.rl.aux_losses import AUX_LOSSES
from lrjax.rl.losses import POLICY_LOSSES, PolicyLoss
from lrjax.sft.sequences import SFT_METHODS, SFTMethod


def _none() -> Mapping:
  return types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Options:
  """A method's typed options: subclass as a frozen dataclass whose fields are the
  fields of its config section, with their defaults (the one place of them), and
  `CHECKS`, field -> (check(value, config) -> problem or None, phases the check is
  limited to). An instance checks itself; the config validation runs the same checks
  on the section (`rows`), when the config has it.

      @dataclasses.dataclass(frozen=True)
      class MyOptions(Options):
        weight: float = 0.01
        CHECKS = {"weight": (non_negative, ("rl",))}

  `configs/base.py`'s `use_options(c, "my_method", weight=0.1)` writes the section
  (`use_rule(c, rule, **fields)` writes the section of a rule's `config_section`).
  """
  CHECKS: ClassVar[Mapping[str, tuple[Check, tuple[str, ...]]]] = {}

  def __post_init__(self):
    for field, (check, _) in self.CHECKS.items():
      value = getattr(self, field)
      problem = check(value, None)
      if problem:
        raise ValueError(f"{type(self).__name__}.{field}={value!r} {problem}")

  @classmethod
  def rows(cls, section: str) -> tuple[Row, ...]:
    """The checks as validation rows of `config.<section>.<field>`."""
    return tuple(Row(f"{section}.{field}", check, phases=tuple(phases),
                     when=lambda c, s=section: s in c)
                 for field, (check, phases) in cls.CHECKS.items())

  @classmethod
  def from_section(cls, section: Any) -> "Options":
    """The options a config section holds (a field it leaves out takes its default)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: section[n] for n in names if n in section})

  def section(self) -> ml_collections.ConfigDict:
    """The config section of these options."""
    return ml_collections.ConfigDict(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class Method:
  """One paper's parts, each under the name a config selects it by (see the module
  docstring). Every field but `name` is optional. `prompt` names the paper's prompt
  format (a name in `lrjax.data.prompts.PROMPTS`, which holds the formats as data),
  what the method's `:paper` preset sets as `data.prompt` (`configs/base.py`'s
  `use_paper_prompt`); '' = none."""
  name: str
  rules: Mapping[str, ThoughtRule] = dataclasses.field(default_factory=_none)
  objectives: Mapping[str, Objective] = dataclasses.field(default_factory=_none)
  policy_losses: Mapping[str, PolicyLoss] = dataclasses.field(default_factory=_none)
  aux_losses: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=_none)
  sft_methods: Mapping[str, SFTMethod] = dataclasses.field(default_factory=_none)
  phases: Mapping[str, Callable[[Any], None]] = dataclasses.field(default_factory=_none)
  prechecks: Mapping[str, Callable[[Any], None]] = dataclasses.field(default_factory=_none)
  heads: Mapping[str, Head] = dataclasses.field(default_factory=_none)
  readable: Mapping[str, Callable[..., list]] = dataclasses.field(default_factory=_none)
  options: Mapping[str, type] = dataclasses.field(default_factory=_none)
  rows: tuple[Row, ...] = ()
  prompt: str = ""

  def all_rows(self) -> tuple[Row, ...]:
    """`rows` and the checks of its option sections."""
    return tuple(self.rows) + tuple(r for s, cls in self.options.items() for r in cls.rows(s))

  def names(self) -> dict[str, tuple[str, ...]]:
    """{part: the names it registers}: what this method owns and generic code must not
    name."""
    parts = ("rules", "objectives", "policy_losses", "aux_losses", "sft_methods", "phases",
             "heads", "options")
    return {p: tuple(getattr(self, p)) for p in parts}


METHODS: Registry[Method] = Registry("method")


def _registries() -> tuple[tuple[str, Registry], ...]:
  return (("rules", RULES), ("objectives", OBJECTIVES), ("policy_losses", POLICY_LOSSES),
          ("aux_losses", AUX_LOSSES), ("sft_methods", SFT_METHODS), ("phases", PHASES),
          ("prechecks", PRECHECKS), ("heads", HEADS), ("readable", READABLE),
          ("options", OPTION_SECTIONS))


def register_method(method: Method) -> Method:
  """Registers every part of `method` in its registry, and the record in `METHODS`.
  A name already registered raises ValueError and leaves nothing of `method` behind."""
  done = []
  try:
    METHODS.register(method.name)(method)
    done.append((METHODS, method.name))
    for field, registry in _registries():
      for name, part in getattr(method, field).items():
        registry.register(name)(part)
        done.append((registry, name))
    if method.all_rows():
      METHOD_ROWS.register(method.name)(method.all_rows())
      done.append((METHOD_ROWS, method.name))
  except ValueError:
    for registry, name in reversed(done):
      registry.unregister(name)
    raise
  return method


def unregister_method(name: str) -> Method:
  """Takes every part of method `name` out of its registry; returns the record."""
  method = METHODS.unregister(name)
  for field, registry in _registries():
    for part in getattr(method, field):
      registry.unregister(part)
  if method.all_rows():
    METHOD_ROWS.unregister(name)
  return method
