"""Sharded forward on 8 fake CPU devices (mesh 2x2x2) equals one device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from lrjax import parallel
from lrjax.model import init, logits, preset


def test_mesh_shape_resolution():
  assert parallel.mesh_shape(8, -1, 2, 2) == (2, 2, 2)
  assert parallel.mesh_shape(8, -1, 1, 1) == (8, 1, 1)
  assert parallel.mesh_shape(8, 2, -1, 1) == (2, 4, 1)
  with pytest.raises(ValueError, match="does not match"):
    parallel.mesh_shape(8, 3, 1, 1)
  with pytest.raises(ValueError, match="at most one"):
    parallel.mesh_shape(8, -1, -1, 1)


def test_every_parameter_gets_a_rule():
  cfg = preset("tiny").replace(tie_word_embeddings=False)
  mesh = parallel.make_mesh(type("M", (), {"data": 2, "fsdp": 2, "tensor": 2})())
  shard = parallel.param_shardings(jax.eval_shape(lambda: init(cfg, jax.random.key(0))), mesh)
  specs = {k: v.spec for k, v in traverse_util.flatten_dict(shard, sep="/").items()}
  assert specs["layers/attn/q/kernel"] == P(None, "fsdp", "tensor")
  assert specs["layers/mlp/down/kernel"] == P(None, "tensor", "fsdp")
  assert specs["embed/embedding"] == P("tensor", "fsdp")
  assert specs["lm_head/kernel"] == P("fsdp", "tensor")
  assert specs["layers/input_norm/scale"] == P()
  # every matrix is sharded somewhere: FSDP must not silently replicate weights
  for k, spec in specs.items():
    if k.endswith("kernel") or k.endswith("embedding"):
      assert any(a is not None for a in spec), k


def test_indivisible_dims_fall_back_to_replication():
  mesh = parallel.make_mesh(type("M", (), {"data": 2, "fsdp": 2, "tensor": 2})())
  assert parallel.param_spec("embed/embedding", (97, 64), mesh) == P(None, "fsdp")


def test_sharded_forward_matches_single_device():
  assert jax.device_count() == 8
  cfg = preset("tiny").replace(num_layers=2)
  params = init(cfg, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (8, 12), 0, cfg.vocab_size)
  mask = jnp.ones_like(ids).at[:4, :3].set(0)
  ref = np.asarray(jax.jit(functools.partial(logits, cfg))(params, ids, mask))

  mesh = parallel.make_mesh(type("M", (), {"data": 2, "fsdp": 2, "tensor": 2})())
  p_shard = parallel.param_shardings(params, mesh)
  sharded_params = jax.device_put(params, p_shard)
  batch = parallel.shard_batch({"ids": ids, "mask": mask}, mesh)
  fn = jax.jit(functools.partial(logits, cfg), in_shardings=(p_shard, parallel.batch_sharding(mesh),
                                                               parallel.batch_sharding(mesh)))
  out = fn(sharded_params, batch["ids"], batch["mask"])
  assert len(out.sharding.device_set) == 8
  q = sharded_params["layers"]["attn"]["q"]["kernel"]
  assert q.addressable_shards[0].data.shape == (2, 64, 64)  # split over fsdp and tensor
  m = np.asarray(mask, bool)
  got = np.asarray(out)
  # float32, reduction order differs across shards: 1e-5 relative to the logit scale
  np.testing.assert_allclose(got[m], ref[m], rtol=1e-5, atol=1e-5 * np.abs(ref).max())
