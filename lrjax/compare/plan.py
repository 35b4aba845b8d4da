"""What a compare trains: each method's config (with the compare's overrides), its
kind, its warm-up key, the rows of the table, the units the workers take, and the
trainings a (task, seed) needs, in order (`Plan.trainings`)."""
from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass

from lrjax.config_utils import mode_phases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")
# The config sections that decide an SFT phase's result (the warm-up key).
WARMUP_SECTIONS = ("data", "model", "sft", "tokenizer", "eval")


def method_available(stem: str) -> bool:
  return os.path.exists(os.path.join(CONFIGS, f"{stem}.py"))


def parse_override(text: str) -> tuple[str, object]:
  """'rl.steps=4' -> ('rl.steps', 4): the value read as a Python literal, else a string."""
  if "=" not in text:
    raise ValueError(f"override {text!r} is not 'field=value'")
  field, raw = text.split("=", 1)
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return field.strip(), value


def apply_overrides(config, overrides) -> None:
  """Sets each 'a.b=value' on the config; an unknown field is an error naming it. A rule
  setting in its old place ('rule.top_k=5', `lrjax.config_moves`) is set where the
  selected rule keeps it now, after the other overrides, with a one-line note."""
  from lrjax.config_moves import apply_moved_flags, is_moved_setting  # noqa: PLC0415
  moved = []
  for text in overrides:
    field, value = parse_override(text)
    setting = field.removeprefix("rule.")
    if (field.startswith("rule.") and is_moved_setting(setting)
        and setting not in config.get("rule", {})):
      moved.append((setting, text.split("=", 1)[1].strip()))
      continue
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise ValueError(f"override {text!r}: unknown config field {field!r}")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"override {text!r}: unknown config field {field!r}")
    with node.ignore_type():
      node[leaf] = value
  if moved:
    from lrjax.metrics import say  # noqa: PLC0415
    for note in apply_moved_flags(config, moved, prefix=""):
      say(note)


def method_config(stem: str, task: str, seed: int, compare_cfg):
  """The method's config for `task` and `seed`, with the compare's overrides (`all`,
  then the method's own)."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  module = importlib.import_module(f"configs.{stem}")
  c = module.get_config(task)
  c.seed = int(seed)
  overrides = compare_cfg.overrides
  apply_overrides(c, tuple(overrides.get("all", ())) + tuple(overrides.get(stem, ())))
  return c


def phases_of(config) -> list[str]:
  return mode_phases(config.mode)


def kind_of(stem: str, config) -> str:
  """'control' (continues a warm-up), 'rl' (its last phase is rl) or 'sft'."""
  if "start_from" in config.sft and stem == "sft_control":
    return "control"
  return "rl" if phases_of(config)[-1] == "rl" else "sft"


def warmup_key(config) -> str:
  """Equal for two configs exactly when their SFT phases train the same model."""
  from lrjax.phases.run import needs_latent_tokens
  doc = {k: config[k].to_dict() for k in WARMUP_SECTIONS}
  doc["sft"].pop("start_from", None)
  doc.update(seed=int(config.seed), init=config.init, latent_tokens=needs_latent_tokens(config))
  return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Row:
  task: str
  method: str
  seed: int
  kind: str
  workdir: str | None  # None: the method has no config
  phase: str = "rl"
  start_step: int | None = None  # the control: the warm-up's last step


@dataclass(frozen=True)
class Unit:
  """Methods of one task and seed that share a warm-up: one worker's work."""
  task: str
  seed: int
  methods: tuple[str, ...]

  @property
  def name(self) -> str:
    return f"{self.task}_s{self.seed}_{'+'.join(self.methods)}"

  @property
  def flag(self) -> str:
    return f"{self.task}:{self.seed}:{','.join(self.methods)}"


@dataclass(frozen=True)
class Training:
  """`config` run in `workdir` (action 'warmup' or 'run'), unless its last phase is
  done; `reuse`: a warm-up whose finished SFT phase is copied in first, if missing."""
  config: object
  workdir: str
  action: str
  task: str
  method: str
  seed: int
  reuse: str | None = None

  def done(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, phases_of(self.config)[-1], "DONE"))


class Plan:
  """The tasks, seeds and methods of one compare config in `workdir`, and what each
  (task, seed) trains."""

  def __init__(self, cfg, workdir: str):
    self.cfg, self.workdir = cfg, workdir

  def methods_for(self, task: str) -> tuple[str, ...]:
    per_task = self.cfg.task_methods.get(task) if "task_methods" in self.cfg else None
    return tuple(per_task if per_task else self.cfg.methods)

  def seeds_for(self, task: str) -> tuple[int, ...]:
    per_task = self.cfg.task_seeds.get(task) if "task_seeds" in self.cfg else None
    return tuple(int(s) for s in (per_task if per_task else self.cfg.seeds))

  def groups(self) -> list[tuple[str, int]]:
    return [(task, seed) for task in self.cfg.tasks for seed in self.seeds_for(task)]

  def units(self) -> list[Unit]:
    """The independent pieces of work: per (task, seed), the methods that share a
    warm-up (the continued-SFT control goes with the CoT warm-up it continues; a
    method without an SFT phase is a unit of its own)."""
    out = []
    for task, seed in self.groups():
      by_key: dict[str, list[str]] = {}
      for stem in self.methods_for(task):
        if not method_available(stem):
          continue
        c = method_config(stem, task, seed, self.cfg)
        if kind_of(stem, c) == "control":
          key = warmup_key(method_config("sft", task, seed, self.cfg))
        else:
          key = warmup_key(c) if "sft" in phases_of(c) else stem
        by_key.setdefault(key, []).append(stem)
      out += [Unit(task, seed, tuple(m)) for m in by_key.values()]
    return out

  def warmup(self, config, task: str, seed: int, method: str) -> Training:
    """The shared warm-up of `config`'s SFT phase."""
    path = os.path.join(self.workdir, task, f"s{seed}", f"warmup-{warmup_key(config)}")
    w = config.copy_and_resolve_references()
    w.mode = "sft"
    return Training(w, path, "warmup", task, method, seed)

  def trainings(self, task: str, seed: int, only: tuple[str, ...] | None = None
                ) -> tuple[list[Row], list[Training]]:
    """The rows of one task and seed (of the methods in `only`, if given) and the
    trainings they need, in the order they run."""
    rows, todo = [], []
    for stem in self.methods_for(task):
      if only is not None and stem not in only:
        continue
      if not method_available(stem):
        rows.append(Row(task, stem, seed, "missing", None))
        continue
      c = method_config(stem, task, seed, self.cfg)
      kind = kind_of(stem, c)
      path = os.path.join(self.workdir, task, f"s{seed}", stem)
      if kind == "control":
        base = method_config("sft", task, seed, self.cfg)
        warm = self.warmup(base, task, seed, "sft")
        c.sft.start_from = warm.workdir
        todo += [warm, Training(c, path, "run", task, stem, seed)]
        rows.append(Row(task, stem, seed, kind, path, "sft", int(base.sft.steps)))
      elif kind == "sft":
        warm = self.warmup(c, task, seed, stem)
        todo.append(warm)
        rows.append(Row(task, stem, seed, kind, warm.workdir, "sft"))
      else:  # its SFT phase: the warm-up's, copied in unless it is there already
        reuse = None
        if "sft" in phases_of(c) and not os.path.exists(os.path.join(path, "sft", "DONE")):
          warm = self.warmup(c, task, seed, stem)
          todo.append(warm)
          reuse = warm.workdir
        todo.append(Training(c, path, "run", task, stem, seed, reuse))
        rows.append(Row(task, stem, seed, kind, path, "rl"))
    return rows, todo
