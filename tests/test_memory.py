"""The qwen2.5-0.5b RL update compiles ahead of time on a 2x2x2 fake mesh (data, fsdp,
tensor) from abstract inputs (`benchmarks/memory.py`), nothing allocated.

XLA's per-device arguments are exactly the shards lrjax's partition rules give
(parameters and AdamW state over fsdp x tensor, the batch over data x fsdp), the
donated parameters and optimizer state are aliased to the outputs, and a short
sequence (8 rows x (16 + 16) tokens) keeps the compile fast.
"""
from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import memory  # noqa: E402


def _shard_bytes(tree) -> int:
  """Bytes of one device's shard of every leaf (ShapeDtypeStructs with shardings)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def test_qwen_0_5b_update_compiles_on_a_2x2x2_mesh():
  args = memory.parse_args(["--batch", "8", "--prompt", "16", "--new", "16"])
  cfg = memory.model_config("qwen2.5-0.5b", args)
  mesh = memory.make_mesh((2, 2, 2))
  compiled, inputs = memory.compile_update(cfg, mesh, args, return_inputs=True)
  m = compiled.memory_analysis()
  params, opt_state = inputs[0], inputs[1]
  donated = _shard_bytes((params, opt_state))
  total = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
  assert 0.9e9 < total < 1.1e9  # 0.49 B bfloat16 parameters
  traj = inputs[3]  # jit drops the arguments the update never reads: lengths, truncated
  assert m.argument_size_in_bytes == _shard_bytes(inputs) - _shard_bytes(
      (traj.lengths, traj.truncated))
  assert donated < 0.3 * 3 * total  # three parameter-sized trees, each over 4 shards
  # every large donated buffer is updated in place (a few small replicated ones may not be)
  assert 0.999 * donated < m.alias_size_in_bytes <= donated
  assert 0 < m.temp_size_in_bytes < 16 * 2 ** 30
