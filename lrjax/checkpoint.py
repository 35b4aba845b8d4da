"""Orbax checkpoints of the training state: save, resume, restore onto any mesh.

A checkpoint is one Orbax step directory holding two items:

    state  the training state, an arbitrary pytree of arrays (params, optax
           state, step counter, PRNG keys), written by `StandardSave`;
    meta   a JSON dict (data-iterator position, phase, resolved config...).

    ckpt = Checkpointer(f"{workdir}/checkpoints/sft")
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(abstract_state(state))   # onto state's shardings
    ...
    ckpt.save(step, state, {"data_position": pos})        # async by default
    ckpt.close()                                          # waits for the save

Writes are atomic: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and
renames it when finalised, so a process killed mid-save (SIGKILL, preemption)
leaves the previous checkpoint intact; `latest_step()` of a fresh Checkpointer
sees finalised steps only and leftover tmp dirs are deleted on start.

A checkpoint that cannot be restored (truncated, corrupted, files missing) is
told apart from one of another structure: `check_structure` reads the step's
metadata and raises `CheckpointMismatchError` naming the first tensor whose
path or shape differs from the target (a config problem: nothing is moved);
`move_aside(step)` renames an unreadable step to `<step>.corrupt-<n>` (never
deleted) so the newest readable one becomes the latest and saving resumes
after it (`lrjax.phases.workdir.try_resume` does both).

Typed PRNG keys (`jax.random.key`) cannot be serialised. `save` stores their
raw `key_data` and records the key paths and implementations in `meta`;
`restore` wraps them back, whether the abstract target describes the leaf as a
key (`abstract_state`) or as its uint32 data (`ocp.utils.to_shape_dtype_struct`
does the latter), so keys round-trip transparently.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from lrjax.config_utils import config_mismatch  # re-exported: part of this module's API

__all__ = ["CheckpointMismatchError", "Checkpointer", "abstract_state", "config_mismatch"]


class CheckpointMismatchError(ValueError):
  """A readable checkpoint whose tensors do not match the run's state (names the tensor)."""

_KEYS_META = "_lrjax_prng_keys"  # meta entry: {key path: PRNG impl name}


def _is_prng_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _path_name(path) -> str:
  """'opt_state/1/0/mu/w': a key path with dict keys, indices and attribute names alike
  (Orbax's metadata stores a NamedTuple's fields as dict keys)."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def abstract_state(state: Any) -> Any:
  """`jax.ShapeDtypeStruct` of every leaf, keeping shardings and PRNG key dtypes.

  Use it (or build the structs by hand with the target shardings) as the
  `abstract_state` of `Checkpointer.restore`.
  """
  def one(x):
    if _is_prng_key(x):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return ocp.utils.to_shape_dtype_struct(x)
  return jax.tree.map(one, state)


def _encode_keys(state: Any) -> tuple[Any, dict[str, str]]:
  """Replaces typed PRNG keys by their uint32 data; returns {path: impl name}."""
  impls: dict[str, str] = {}

  def one(path, x):
    if _is_prng_key(x):
      impls[jax.tree_util.keystr(path)] = str(jax.random.key_impl(x))
      return jax.random.key_data(x)
    return x
  return jax.tree_util.tree_map_with_path(one, state), impls


def _key_data_struct(sds: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """The uint32 `key_data` struct of a typed-key struct (trailing dims replicated)."""
  data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(sds.shape, sds.dtype))
  sharding = getattr(sds, "sharding", None)
  extra = len(data.shape) - len(sds.shape)
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(sds.shape) - len(sharding.spec) + extra)
    sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec), memory_kind=sharding.memory_kind)
  elif sharding is not None and not isinstance(sharding, jax.sharding.SingleDeviceSharding):
    raise ValueError(f"cannot restore a PRNG key onto sharding {sharding}; use a NamedSharding")
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` for (state pytree, JSON meta) steps."""

  def __init__(self, directory: str, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """The newest step, or None. Unfinalised (killed) saves are never listed;
    within this process a save still in flight is (restore waits for it)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every kept step, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> None:
    """Saves `state` and `meta` (JSON-serialisable) as `step`; returns once the
    arrays are copied off device when async. A step at or below the latest one
    is skipped with a log line unless `force`, which overwrites it."""
    step = int(step)
    if _KEYS_META in meta:
      raise ValueError(f"meta key {_KEYS_META!r} is reserved")
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      if not force:
        logging.info("checkpoint: step %d not saved (latest is %d)", step, latest)
        return
      self._manager.wait_until_finished()
      if step in self._manager.all_steps():
        self._manager.delete(step)
    encoded, impls = _encode_keys(state)
    meta = {**meta, _KEYS_META: impls}
    args = ocp.args.Composite(state=ocp.args.StandardSave(encoded), meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=args, force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) of `step` (latest when None) into the structure,
    dtypes and shardings of `abstract_state` (ShapeDtypeStructs or arrays).

    Leaves are placed with each struct's `.sharding`, so a checkpoint written
    on one mesh restores onto another.
    """
    self._manager.wait_until_finished()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")

    def target(x):
      x = x if isinstance(x, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(x)
      return _key_data_struct(x) if _is_prng_key(x) else x
    targets = jax.tree.map(target, abstract_state)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(targets), meta=ocp.args.JsonRestore()))
    restored, meta = out["state"], dict(out["meta"])
    impls: dict[str, str] = meta.pop(_KEYS_META, {})

    def decode(path, x):
      impl = impls.get(jax.tree_util.keystr(path))
      return x if impl is None else jax.random.wrap_key_data(x, impl=impl)
    return jax.tree_util.tree_map_with_path(decode, restored), meta

  def check_structure(self, abstract_state: Any, step: int) -> None:
    """Raises CheckpointMismatchError when `step`'s stored tensors (paths, shapes) differ
    from `abstract_state`'s; any other error means the metadata is unreadable."""
    self._manager.wait_until_finished()
    md = self._manager.item_metadata(step)
    tree = getattr(md["state"] if md is not None else None, "tree", None)
    if tree is None:
      raise OSError(f"no readable metadata in {os.path.join(self.directory, str(step))}")
    stored = {_path_name(p): tuple(x.shape)
              for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    where = os.path.join(self.directory, str(step))
    wanted = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    for path, x in wanted:
      name = _path_name(path)
      shape = tuple(x.shape)
      if _is_prng_key(x):
        shape = tuple(jax.eval_shape(jax.random.key_data,
                                     jax.ShapeDtypeStruct(x.shape, x.dtype)).shape)
      if name not in stored:
        raise CheckpointMismatchError(f"checkpoint {where} has no tensor {name} (this run's "
                                      "state has it: a different model or method?)")
      if stored[name] != shape:
        raise CheckpointMismatchError(f"checkpoint {where}: tensor {name} has shape "
                                      f"{stored[name]}, this run expects {shape}")
    extra = sorted(set(stored) - {_path_name(p) for p, _ in wanted})
    if extra:
      raise CheckpointMismatchError(f"checkpoint {where} holds tensor {extra[0]}, which this "
                                    "run's state does not have")

  def move_aside(self, step: int) -> str:
    """Renames `<dir>/<step>` to `<dir>/<step>.corrupt-<n>` (never deletes it), so the
    previous step becomes the latest; returns the new path."""
    self._manager.wait_until_finished()
    src = os.path.join(self.directory, str(int(step)))
    n = 0
    while os.path.exists(f"{src}.corrupt-{n}"):
      n += 1
    dst = f"{src}.corrupt-{n}"
    if jax.process_index() == 0:
      os.rename(src, dst)
    if jax.process_count() > 1:  # every process sees the rename before it reloads
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices(f"lrjax move_aside {src}")
    self._manager.reload()
    return dst

  def wait(self) -> None:
    """Blocks until an in-flight async save is finalised on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
