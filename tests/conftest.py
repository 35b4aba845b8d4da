"""Test set-up: the CPU with 8 fake devices (the CPU-sharded smoke tests), an offline
Hub, and one persistent XLA compilation cache for the test processes and every
`python -m lrjax...` they start.

The cache (`.pytest_cache/jax` in the checkout, or `$JAX_COMPILATION_CACHE_DIR`)
holds each compiled program once: the many short runs of the suite compile the
same tiny programs, and a run that finds them there skips XLA's compile. A
fresh clone starts with it empty. `LRJAX_TEST_CACHE=0` turns it off.
"""
import os

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

import jax  # noqa: E402

# Must run before JAX initialises its backends.
jax.config.update("jax_num_cpu_devices", 8)
