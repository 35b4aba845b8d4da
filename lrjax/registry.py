"""Name -> implementation registries (thought rules, losses, tasks, rewards...).

A method is a config that names its parts, not a fork of the trainer:

    ADVANTAGES = Registry("advantage estimator")

    @ADVANTAGES.register("grpo")
    def grpo(rewards, ...): ...

    ADVANTAGES.get(config.rl.advantage)   # ValueError listing the known names
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A dictionary from name to object, filled by a decorator."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def deco(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj
    return deco

  def unregister(self, name: str) -> T:
    """Removes `name` (e.g. a rule a test registered for itself); returns its object."""
    return self._items.pop(name)

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
