"""Meshes and partition rules: `jax.jit` over a `Mesh` with `NamedSharding`.

lrjax never uses `pmap` (in maintenance mode since JAX 0.8 and itself built on
jit + shard_map): one program runs on 1 CPU, 8 fake CPU devices, a GPU or a
TPU pod, and the mesh shape comes from the config:

    mesh.data = -1, mesh.fsdp = 1, mesh.tensor = 1     # -1 = all remaining devices

Parameters are sharded FSDP-style over `fsdp` (the hidden dimension) and
Megatron-style over `tensor` (heads, MLP width, vocabulary); the batch is split
over (`data`, `fsdp`). XLA's GSPMD inserts the collectives.
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


def distributed_settings(dist_cfg: Any = None, environ: Any = None) -> dict:
  """(coordinator_address, num_processes, process_id) from `config.distributed`,
  else the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
  empty / 0 / -1 when unset. The config wins, so one launcher can pass either."""
  import os
  env = os.environ if environ is None else environ
  get = lambda k, d: getattr(dist_cfg, k, d) if dist_cfg is not None else d
  addr = get("coordinator_address", "") or env.get("JAX_COORDINATOR_ADDRESS", "")
  n = int(get("num_processes", 0) or env.get("JAX_NUM_PROCESSES", 0) or 0)
  pid = int(get("process_id", -1))
  if pid < 0:
    pid = int(env.get("JAX_PROCESS_ID", -1))
  return {"coordinator_address": addr, "num_processes": n, "process_id": pid}


def maybe_initialize_distributed(dist_cfg: Any = None) -> bool:
  """`jax.distributed.initialize()` when the runtime says so; True if this call did it.

  Must run before JAX touches a backend (the first `jax.devices()`). Cases:
  * an explicit coordinator (config or environment, see `distributed_settings`)
    with more than one process: initialise with it (CPU and GPU clusters, the
    localhost test);
  * a TPU pod slice (`TPU_WORKER_HOSTNAMES` lists more than one worker), or
    `LRJAX_DISTRIBUTED=1` (SLURM, Open MPI, ...): JAX's own cluster detection.
  A single process (a laptop, one GPU, a one-host TPU VM) never initialises.
  """
  import os
  if jax.distributed.is_initialized():
    return False
  s = distributed_settings(dist_cfg)
  if s["coordinator_address"] and s["num_processes"] > 1:
    if s["process_id"] < 0:
      raise ValueError("distributed: a coordinator address and num_processes > 1 need a "
                       "process id (config.distributed.process_id or JAX_PROCESS_ID)")
    jax.distributed.initialize(s["coordinator_address"], num_processes=s["num_processes"],
                               process_id=s["process_id"])
    return True
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1 or os.environ.get("LRJAX_DISTRIBUTED", "") == "1":
    jax.distributed.initialize()
    return True
  return False


# -- multi-process batches: each process feeds, and reads back, only its own rows --

def batch_rows(mesh: Mesh, n: int) -> slice:
  """The rows of an n-row batch (split over (data, fsdp)) that this process's
  devices hold: all of them in one process, a contiguous block per process on
  a pod (JAX orders devices by process; checked here)."""
  if jax.process_count() == 1 or n % data_parallel_size(mesh):
    return slice(0, n)
  idx = batch_sharding(mesh, 1).addressable_devices_indices_map((n,))
  blocks = sorted({(s[0].start or 0, n if s[0].stop is None else s[0].stop) for s in idx.values()})
  for (_, stop), (start, _) in zip(blocks, blocks[1:]):
    if stop != start:
      raise ValueError(f"this process's batch rows {blocks} are not contiguous; order the mesh "
                       "devices by process")
  return slice(blocks[0][0], blocks[-1][1])


def feed(batch: Any, mesh: Mesh) -> Any:
  """A global batch from the host batch every process builds alike (numpy, equal
  on every process): each process feeds only its own rows
  (`jax.make_array_from_process_local_data`), split over (data, fsdp). A batch
  whose size the data-parallel size does not divide is replicated instead (one
  process only: with several it is an error)."""
  dp = data_parallel_size(mesh)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % dp:
      if x.ndim and jax.process_count() > 1:
        raise ValueError(f"batch dimension {x.shape[0]} is not divisible by the data-parallel "
                         f"size {dp} (mesh.data x mesh.fsdp), which {jax.process_count()} "
                         "processes need to split it")
      return jax.device_put(x, replicated(mesh))
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, x.ndim), x[batch_rows(mesh, x.shape[0])], x.shape)
  return jax.tree.map(put, batch)


def gather_rows(local: np.ndarray, mesh: Mesh, n: int) -> np.ndarray:
  """The whole n-row array on every process from each process's rows (`batch_rows`),
  e.g. the rewards each process scored on its own rollouts."""
  local = np.asarray(local)
  if jax.process_count() == 1:
    return local
  x = jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local,
                                             (n, *local.shape[1:]))
  return fetch(x)


def fetch(tree: Any) -> Any:
  """Numpy copies of a tree of (possibly multi-process) arrays, the whole value on
  every process: a collective when an array spans processes, so every process
  must call it on the same tree."""
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def local_rows(tree: Any, mesh: Mesh) -> Any:
  """This process's rows (`batch_rows`) of a tree of global batch arrays, as numpy;
  read from its own shards when they hold them whole, else gathered (`fetch`)."""
  def one(x):
    rows = batch_rows(mesh, x.shape[0])
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))[rows]
    pieces = {}
    for s in x.addressable_shards:
      r = s.index[0] if s.index else slice(None)
      whole = all(i == slice(None) or (i.start in (None, 0) and i.stop in (None, d))
                  for i, d in zip(s.index[1:], x.shape[1:]))
      if whole:
        pieces.setdefault(r.start or 0, np.asarray(s.data))
    out, at = [], rows.start
    while at < rows.stop and at in pieces:
      out.append(pieces[at])
      at += pieces[at].shape[0]
    if at >= rows.stop:
      return np.concatenate(out)[:rows.stop - rows.start]
    return fetch(x)[rows]
  return jax.tree.map(one, tree)
