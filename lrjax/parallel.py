"""Meshes and partition rules: `jax.jit` over a `Mesh` with `NamedSharding`.

lrjax never uses `pmap` (in maintenance mode since JAX 0.8 and itself built on
jit + shard_map): one program runs on 1 CPU, 8 fake CPU devices, a GPU or a
TPU pod, and the mesh shape comes from the config:

    mesh.data = -1, mesh.fsdp = 1, mesh.tensor = 1     # -1 = all remaining devices

Parameters are sharded FSDP-style over `fsdp` (the hidden dimension) and
Megatron-style over `tensor` (heads, MLP width, vocabulary); the batch is split
over (`data`, `fsdp`). XLA's GSPMD inserts the collectives.

With several processes (a pod slice; `lrjax.distributed` joins them) every
process builds the same host batch, feeds only the rows its devices hold
(`feed`), decodes and scores only those (`local_rows`), and shares the results
(`gather_rows`, `fetch`).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch dimension is split over both

# (regex over the '/'-joined parameter path, spec without the stacked layer axis)
PARAM_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed/embedding$", ("tensor", "fsdp")),  # V H
    (r"attn/(q|k|v)/kernel$", ("fsdp", "tensor")),  # H, N*D
    (r"attn/(q|k|v)/bias$", ("tensor",)),
    (r"attn/o/kernel$", ("tensor", "fsdp")),  # N*D, H
    (r"attn/o/bias$", (None,)),
    (r"mlp/(gate|up)/kernel$", ("fsdp", "tensor")),  # H F
    (r"mlp/(gate|up)/bias$", ("tensor",)),
    (r"mlp/down/kernel$", ("tensor", "fsdp")),  # F H
    (r"lm_head/kernel$", ("fsdp", "tensor")),  # H V
    # LoRA adapters (lrjax/model/lora.py), L in r / L r out: A B gets its kernel's sharding
    (r"lora/(attn/(q|k|v)|mlp/(gate|up))/a$", (None, "fsdp", None)),
    (r"lora/(attn/(q|k|v)|mlp/(gate|up))/b$", (None, None, "tensor")),
    (r"lora/(attn/o|mlp/down)/a$", (None, "tensor", None)),
    (r"lora/(attn/o|mlp/down)/b$", (None, None, "fsdp")),
    # HRPO gate Linears, H H: FSDP only. With the output dim also over `tensor`, XLA's SPMD
    # partitioner (jax 0.10.2, Shardy and GSPMD alike) miscompiles the backward of
    # x + (x @ W) * s (the gated mix, x and s batch-split over (data, fsdp)) on a
    # 2x2x2 mesh: it permutes the cotangent's batch shards from (data, fsdp) to
    # (fsdp, data) order and never permutes them back, so two of the four batch
    # shards get each other's gradient (tests/test_rl_sharded.py has the reproducer).
    (r"gate_[a-z]+/kernel$", ("fsdp", None)),
)


def mesh_shape(n_devices: int, data: int = -1, fsdp: int = 1, tensor: int = 1) -> tuple[int, ...]:
  """Resolves one -1 entry to the remaining devices; checks the product."""
  dims = [data, fsdp, tensor]
  if dims.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = math.prod(d for d in dims if d != -1)
  if -1 in dims:
    if n_devices % known:
      raise ValueError(f"{n_devices} devices are not divisible by the fixed mesh axes ({known})")
    dims[dims.index(-1)] = n_devices // known
  if math.prod(dims) != n_devices:
    raise ValueError(
        f"mesh data={dims[0]} x fsdp={dims[1]} x tensor={dims[2]} = {math.prod(dims)} "
        f"does not match the {n_devices} available devices")
  return tuple(dims)


def make_mesh(mesh_cfg: Any = None, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (GSPMD-style propagation)."""
  devices = list(devices if devices is not None else jax.devices())
  get = (lambda k: getattr(mesh_cfg, k, None) if mesh_cfg is not None else None)
  shape = mesh_shape(len(devices), data=get("data") if get("data") is not None else -1,
                     fsdp=get("fsdp") or 1, tensor=get("tensor") or 1)
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def _fit(spec: tuple, shape: tuple[int, ...], mesh: Mesh, path: str) -> P:
  """Drops mesh axes that do not divide their dimension (logged, replicated instead)."""
  out = []
  for dim, axis in zip(shape, spec):
    if axis is not None and dim % mesh.shape[axis]:
      logging.debug("parameter %s: dim %d not divisible by mesh axis %s=%d; replicated",
                    path, dim, axis, mesh.shape[axis])
      axis = None
    out.append(axis)
  return P(*out)


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec of one parameter; `layers/...` leaves carry a leading layer axis."""
  stacked = path.startswith("layers/") or "/layers/" in path
  core = shape[1:] if stacked else shape
  for pattern, spec in PARAM_RULES:
    if re.search(pattern, path) and len(spec) == len(core):
      fitted = _fit(spec, core, mesh, path)
      return P(None, *fitted) if stacked else fitted
  return P()  # norms, Λ, small heads: replicated


def param_shardings(params: Any, mesh: Mesh) -> Any:
  """A pytree of NamedShardings matching `params` (arrays or ShapeDtypeStructs)."""
  def one(path, leaf):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return NamedSharding(mesh, param_spec(name, tuple(leaf.shape), mesh))
  return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def constrain_rows(x: jax.Array) -> jax.Array:
  """x with its leading axis split over (data, fsdp) when a mesh is set (`jax.set_mesh`)
  and the axis divides; unchanged otherwise.

  Without it GSPMD may follow the FSDP weights' sharding of the hidden dimension
  and keep the activations whole on every device (measured: the qwen2.5-0.5b
  update kept all 64 rows on each of 8 devices, benchmarks/memory.py).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH) <= set(mesh.axis_names):
    return x
  n = math.prod(mesh.shape[a] for a in BATCH)
  if n == 1 or x.ndim == 0 or x.shape[0] % n:
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH, *([None] * (x.ndim - 1))))


def on_mesh(jitted: Any, mesh: Mesh | None) -> Any:
  """`jitted` called under `jax.set_mesh(mesh)` (so `constrain_rows` applies); itself
  when mesh is None. `.lower` is the jitted function's (set the mesh around it)."""
  if mesh is None:
    return jitted

  def call(*args, **kw):
    with jax.set_mesh(mesh):
      return jitted(*args, **kw)
  call.lower = jitted.lower
  return call


def place_state(tree: dict, mesh: Mesh, optimizer: Any, trainable: Any) -> dict:
  """`tree` and "opt_state" = `optimizer.init(trainable)`, all laid out with lrjax's
  partition rules (`param_shardings` of the whole tree). The optimizer state is made by
  one program straight into its layout (op by op, each leaf shape would compile its own
  zeros)."""
  target = param_shardings({**tree, "opt_state": jax.eval_shape(optimizer.init, trainable)},
                           mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=target["opt_state"])(trainable)
  return {**jax.device_put(tree, {k: target[k] for k in tree}), "opt_state": opt_state}


def shardings_of(tree: Any) -> Any:
  """The pytree of each array's sharding (a layout to place or return another tree in)."""
  return jax.tree.map(lambda a: a.sharding, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH]))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places every array of a batch pytree with its leading axis split over (data, fsdp)."""
  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim == 0:
      return jax.device_put(x, replicated(mesh))
    if x.shape[0] % data_parallel_size(mesh):
      raise ValueError(f"batch dimension {x.shape[0]} is not divisible by the data-parallel "
                       f"size {data_parallel_size(mesh)} (mesh.data x mesh.fsdp)")
    return jax.device_put(x, batch_sharding(mesh, x.ndim))
  return jax.tree.map(put, batch)



# -- Multi-process batches: every process builds the same host batch (numpy), feeds
# -- only the rows its own devices hold, and reads back only those.

def batch_rows(mesh: Mesh, n: int) -> np.ndarray:
  """The rows of an n-row batch (split over (data, fsdp)) that this process's devices
  hold, ascending: all of them in one process or when the data-parallel size does not
  divide n (such a batch is replicated); on a pod the process's blocks of rows."""
  if jax.process_count() == 1 or n % data_parallel_size(mesh):
    return np.arange(n)
  index = batch_sharding(mesh, 1).addressable_devices_indices_map((n,))
  blocks = sorted({idx[0].indices(n)[:2] for idx in index.values()})
  return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def _target(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  """Batch-split over (data, fsdp) when the data-parallel size divides the leading
  dimension, else replicated."""
  if not shape or shape[0] % data_parallel_size(mesh):
    return replicated(mesh)
  return batch_sharding(mesh, len(shape))


def feed(batch: Any, mesh: Mesh) -> Any:
  """Global arrays from a host batch pytree that every process builds alike: each
  process hands over only its own rows (`batch_rows`,
  `jax.make_array_from_process_local_data`). The leading axis is split over (data,
  fsdp); a batch the data-parallel size does not divide is replicated."""
  def put(x):
    x = np.asarray(x)
    sharding = _target(mesh, x.shape)
    split = sharding != replicated(mesh)
    local = x[batch_rows(mesh, x.shape[0])] if split else x
    return jax.make_array_from_process_local_data(sharding, local, x.shape)
  return jax.tree.map(put, batch)


def fetch(tree: Any) -> Any:
  """Numpy copies of a pytree of arrays, each whole on every process. An array that
  spans processes is all-gathered: a collective, so every process must call `fetch`
  on the same tree."""
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def local_rows(tree: Any, mesh: Mesh) -> Any:
  """This process's rows (`batch_rows`) of a pytree of global [n, ...] arrays, as numpy,
  read from its own devices. An array laid out otherwise is first resharded (a
  collective every process runs alike: the decision depends on shapes and shardings)."""
  def one(x):
    n = x.shape[0]
    if jax.process_count() == 1 or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))[batch_rows(mesh, n)]
    target = _target(mesh, x.shape)
    if not x.sharding.is_equivalent_to(target, x.ndim):
      x = jax.device_put(x, target)
    blocks = {}
    for shard in x.addressable_shards:
      blocks.setdefault(shard.index[0].indices(n)[0], shard.data)
    return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])
  return jax.tree.map(one, tree)


def gather_rows(local: np.ndarray, mesh: Mesh, n: int) -> np.ndarray:
  """The whole n-row array on every process from each process's own rows (`batch_rows`
  order), e.g. the rewards each process scored on its own rollouts."""
  local = np.asarray(local)
  if jax.process_count() == 1 or n % data_parallel_size(mesh):
    return local
  x = jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local,
                                             (n, *local.shape[1:]))
  return fetch(x)
