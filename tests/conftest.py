"""Test set-up: the CPU with 8 fake devices (the CPU-sharded smoke tests), an offline
Hub, and one persistent XLA compilation cache for the test processes and every
`python -m lrjax...` they start.

The cache (`.pytest_cache/jax` in the checkout, or `$JAX_COMPILATION_CACHE_DIR`)
holds each compiled program once: the many short runs of the suite compile the
same tiny programs, and a run that finds them there skips XLA's compile. A
fresh clone starts with it empty. `LRJAX_TEST_CACHE=0` turns it off.

Every test program compiles with XLA:CPU's fast-compile options
(`tests.e2e_runs.FAST_XLA_FLAGS`: no LLVM backend optimisation, no expensive LLVM
passes, the classic elemental emitters in place of the MLIR fusion emitters): the
suite's programs are tiny and run for milliseconds, so compile time is most of
their cost. The numerical comparisons hold under both settings; set
`LRJAX_TEST_XLA=default` to run the suite with XLA's default options.

The `python -m lrjax...` runs of the README, config and entrypoint tests fork from a
warm interpreter that has imported jax, flax, optax, orbax and transformers
(`tests/forkserver.py`), which saves each run ~1.5 s of imports; `LRJAX_TEST_FORK=0`
starts each as a fresh process.

An in-process run (`Run.create`) whose config leaves the device count open lays its
mesh over 2 of the 8 fake devices (`DEFAULT_MESH_DEVICES`, below).
"""
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A GPU or TPU host runs the suite on its CPU too: the sharded tests fake CPU devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ.get("LRJAX_TEST_CACHE", "1") != "0":
  # read by jax at import, here and in every subprocess the tests start
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

if os.environ.get("LRJAX_TEST_XLA", "fast") != "default":
  from tests.e2e_runs import FAST_XLA_FLAGS  # noqa: E402  (imports no jax)
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""), FAST_XLA_FLAGS) if f)

import jax  # noqa: E402

# Must run before JAX initialises its backends.
jax.config.update("jax_num_cpu_devices", 8)

import lrjax.methods  # noqa: E402,F401  (registers the shipped methods, as the entry points do)
from lrjax import parallel  # noqa: E402

# The mesh of an in-process run whose config leaves the device count open (`mesh.data=-1`):
# 2 of the 8 fake devices, one per core, still a sharded batch. Laid over all 8, the same
# runs took 1.3-1.8x the CPU (tests/test_dlr.py 32 -> 19 s, tests/test_latent_rl.py
# 24 -> 15 s). A mesh that names more devices (the sharding tests' 2x2x2) gets them, and a
# test that passes its own devices keeps them.
DEFAULT_MESH_DEVICES = 2


@pytest.fixture(scope="session", autouse=True)
def _default_mesh_on_two_devices():
  """Session-wide, so that a module's fixtures (a trained warm-up) and its tests share it."""
  make_mesh = parallel.make_mesh

  def on_two(mesh_cfg=None, devices=None):
    if devices is None:
      named = math.prod(max(1, int(getattr(mesh_cfg, axis, None) or 1))
                        for axis in ("data", "fsdp", "tensor"))
      devices = jax.devices()[:max(DEFAULT_MESH_DEVICES, named)]
    return make_mesh(mesh_cfg, devices)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(parallel, "make_mesh", on_two)
    yield


# Files that take longest go first, so that with `-n 2` (whole files per worker) the
# last file to start is a short one (seconds measured with both cores busy, longest
# first). pytest.ini's `--no-loadscope-reorder` keeps this order; xdist would otherwise
# send the files with the most tests first.
SLOW_FIRST = ("test_user_paths.py",         # 215 s
              "test_real_checkpoints.py",   # 148
              "test_faults.py",             # 68
              "test_main.py",               # 55
              "test_buckets.py",            # 45
              "test_multiprocess.py",       # 33
              "test_colab_notebook.py",     # 29
              "test_compare.py",            # 28
              "test_param_groups.py",       # 27
              "test_model.py",              # 24
              "test_dlr.py",                # 22
              "test_vocab.py",              # 19
              "test_latent_rl.py")          # 16


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
