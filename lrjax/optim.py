"""Optimizers shared by SFT and RL: learning-rate schedules, AdamW + clip, parameter groups.

    sched = make_schedule("cosine", 1e-4, warmup_steps=10, total_steps=200)
    tx = make_optimizer(lr=1e-3, weight_decay=0.0, warmup_steps=100, total_steps=800,
                        schedule="constant", clip_norm=1.0)          # one group (SFT)

    groups = ParamGroups(((r"rule/lambda", 3e-2), (r"rule/.*", 3e-3), (r".*", 1e-4)))
    opt = make_grouped_optimizer(groups, schedule="constant", ...)  # RL
    trainable, frozen = groups.split(params)      # frozen: the groups with lr None
    opt_state = opt.init(params)                  # state for `trainable` only

Parameter groups: every parameter's path in its tree, the keys joined with
'/', is matched with `re.fullmatch` against the patterns in order and the first
match wins. In the RL tree {"model", "rule", "heads"} of the tiny model with the
hybrid rule the paths are e.g.

    model/embed/embedding                  model/layers/attn/q/kernel
    model/layers/mlp/down/kernel           model/final_norm/scale
    rule/gate_i/kernel   rule/gate_r/bias  rule/lambda

(the decoder layers are stacked, so there is one `model/layers/...` path per
weight kind, not per layer). A parameter that matches no pattern is a
`ConfigError` naming it. A group with lr None is frozen: its parameters are
not differentiated, not part of the global-norm clip, have no optimizer state
at all and never change.

Schedules (`SCHEDULES`): linear warmup from 0 to lr over `warmup_steps`, then
`constant`, or `cosine` decay to `end_lr_frac * lr` at `total_steps`.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from lrjax.config_utils import ConfigError

SCHEDULES = ("constant", "cosine")


def make_schedule(name: str, lr: float, warmup_steps: int = 0, total_steps: int | None = None,
                  end_lr_frac: float = 0.0, field: str | None = None) -> optax.Schedule:
  """The learning rate per step: linear warmup from 0 to lr, then `name`.

  An unknown `name` is a ValueError; with `field` (the config field it came
  from, e.g. "rl.schedule") the message names that field.
  """
  if name == "constant":
    if warmup_steps <= 0:
      return optax.constant_schedule(lr)
    return optax.warmup_constant_schedule(0.0, lr, warmup_steps)
  if name == "cosine":
    if not total_steps or total_steps <= warmup_steps:
      raise ValueError(f"cosine schedule needs total_steps > warmup_steps, got {total_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, lr * end_lr_frac)
  if field is not None:
    raise ConfigError(f"config.{field}={name!r} is not one of: {', '.join(SCHEDULES)}")
  raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def adamw(schedule: optax.ScalarOrSchedule, *, weight_decay: float, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay on every parameter (as torch's AdamW)."""
  return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def with_clip(tx: optax.GradientTransformation,
              clip_norm: float | None) -> optax.GradientTransformation:
  """A global-norm clip of the gradients before `tx` (none when clip_norm is 0/None)."""
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def make_optimizer(lr: float = 1e-4, weight_decay: float = 0.01, warmup_steps: int = 0,
                   total_steps: int | None = None, schedule: str = "constant",
                   clip_norm: float | None = None, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, field: str | None = None,
                   end_lr_frac: float = 0.0) -> optax.GradientTransformation:
  """One-group AdamW after an optional global-norm clip. Defaults are Coconut's
  (lr 1e-4, wd 0.01). `field` names the schedule's config field in errors."""
  sched = make_schedule(schedule, lr, warmup_steps, total_steps, end_lr_frac, field=field)
  return with_clip(adamw(sched, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps), clip_norm)


# --------------------------------------------------------------------------- parameter groups


def path_str(path: Sequence[Any]) -> str:
  """A tree path (tuple of keys or jax key entries) as 'model/layers/attn/q/kernel'."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@dataclasses.dataclass(frozen=True)
class ParamGroups:
  """Ordered (regex, lr | None) pairs: first `re.fullmatch` of a path wins; None = frozen."""
  patterns: tuple[tuple[str, float | None], ...]
  field: str = "rl.param_groups"  # the config field, for error messages

  def __post_init__(self):
    pats = tuple((p[0], p[1]) for p in self.patterns)
    object.__setattr__(self, "patterns", pats)
    object.__setattr__(self, "_compiled", tuple(re.compile(p) for p, _ in pats))

  def group_of(self, path: str) -> int:
    """The index of the first pattern that fully matches `path`; ConfigError if none."""
    for i, rx in enumerate(self._compiled):
      if rx.fullmatch(path):
        return i
    listing = ", ".join(repr(p) for p, _ in self.patterns) or "(none)"
    raise ConfigError(f"config.{self.field}: parameter {path!r} matches none of the "
                      f"patterns {listing}; add one (e.g. ('.*', lr) last)")

  def lr(self, group: int) -> float | None:
    return self.patterns[group][1]

  def trainable_groups(self) -> list[int]:
    return [i for i, (_, lr) in enumerate(self.patterns) if lr is not None]

  def assign(self, tree: Any) -> dict[str, int]:
    """{path: group index} for every leaf of `tree` (raises on an unmatched path)."""
    return {path_str(p): self.group_of(path_str(p))
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}

  def labels(self, tree: Any) -> Any:
    """`tree` with every leaf replaced by its group's label 'group<i>'."""
    return jax.tree_util.tree_map_with_path(lambda p, _: label(self.group_of(path_str(p))), tree)

  def split(self, params: Any) -> tuple[Any, Any]:
    """(trainable, frozen): two nested dicts with the same dict nodes as `params`,
    each holding only its own leaves. With nothing frozen, `trainable` has the
    tree structure of `params`."""
    return _split(params, lambda path: self.lr(self.group_of(path)) is not None, ())

  @staticmethod
  def merge(trainable: Any, frozen: Any) -> Any:
    """The inverse of `split`."""
    return _merge(trainable, frozen)


def label(group: int) -> str:
  return f"group{group}"


def _split(node: Any, keep, path: tuple[str, ...]) -> tuple[Any, Any]:
  if not isinstance(node, Mapping):
    raise TypeError(f"parameter groups need a tree of dicts; {'/'.join(path) or 'the root'} "
                    f"is a {type(node).__name__}")
  kept, dropped = {}, {}
  for k, v in node.items():
    sub = path + (str(k),)
    if isinstance(v, Mapping):
      kept[k], dropped[k] = _split(v, keep, sub)
    elif keep("/".join(sub)):
      kept[k] = v
    else:
      dropped[k] = v
  return kept, dropped


def _merge(a: Any, b: Any) -> Any:
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if k in out and isinstance(v, Mapping) else v
  return out


@dataclasses.dataclass(frozen=True)
class GroupedOptimizer:
  """An optax transformation over the trainable part of a parameter tree.

  `init(params)` takes the full tree and builds state for its trainable leaves
  only; `update(grads, state, trainable)` takes gradients and parameters of the
  trainable part (`groups.split(params)[0]`), as `make_update` passes them.
  """
  groups: ParamGroups
  tx: optax.GradientTransformation

  def init(self, params: Any) -> optax.OptState:
    return self.tx.init(self.groups.split(params)[0])

  def update(self, grads: Any, state: optax.OptState, trainable: Any = None):
    return self.tx.update(grads, state, trainable)


def make_grouped_optimizer(groups: ParamGroups, *, schedule: str = "constant",
                           warmup_steps: int = 0, total_steps: int | None = None,
                           clip_norm: float | None = None, weight_decay: float = 0.0,
                           b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                           field: str | None = None) -> GroupedOptimizer:
  """A global-norm clip over the trainable gradients, then one AdamW per trainable
  group (its own lr, the same schedule shape, betas and weight decay)."""
  txs = {label(i): adamw(make_schedule(schedule, groups.lr(i), warmup_steps, total_steps,
                                       field=field),
                         weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)
         for i in groups.trainable_groups()}
  return GroupedOptimizer(groups, with_clip(optax.multi_transform(txs, groups.labels), clip_norm))
