"""Test set-up: 8 fake CPU devices (the CPU-sharded smoke test) and an offline Hub."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

# Must run before JAX initialises its backends.
jax.config.update("jax_num_cpu_devices", 8)
