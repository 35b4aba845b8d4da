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
from tests.test_accumulate import call_fast  # noqa: E402


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
  assert 1.8e9 < total < 2.2e9  # 0.49 B parameters, float32 masters (model.param_dtype)
  traj = inputs[3]  # jit drops the arguments the update never reads: lengths, truncated
  assert m.argument_size_in_bytes == _shard_bytes(inputs) - _shard_bytes(
      (traj.lengths, traj.truncated))
  assert donated < 0.3 * 3 * total  # three parameter-sized trees, each over 4 shards
  # every large donated buffer is updated in place (a few small replicated ones may not be)
  assert 0.999 * donated < m.alias_size_in_bytes <= donated
  assert 0 < m.temp_size_in_bytes < 16 * 2 ** 30


def test_update_under_the_mesh_equals_one_device():
  """`make_update(..., mesh=)` (activation rows constrained to (data, fsdp)) on a 2x2x2
  mesh gives the single-device SGD update, and its row constraint is in the program."""
  import jax.numpy as jnp
  import optax

  from lrjax import parallel
  from lrjax.latent import RuleContext
  from lrjax.rl import learner as L
  from lrjax.rollout import Sampling
  from tests import test_learner as TL

  ctx = RuleContext(TL.CFG.replace(logits_chunk=24), "token", sampling=Sampling(0.7),
                    eos_id=TL.EOS, pad_id=0, max_new=TL.N)
  traj = TL.make_traj("token")
  params = {"model": TL.random_params(), "rule": {}, "heads": {}}
  adv = jnp.linspace(-1.0, 1.0, traj.ids.shape[0])
  sgd = optax.sgd(1.0)
  copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
  p1, _, m1 = call_fast(L.make_update(ctx, L.LossSpec(), sgd), copy(params), sgd.init(params),
                       None, traj, adv, None)
  mesh = memory.make_mesh((2, 2, 2))
  update = L.make_update(ctx, L.LossSpec(), sgd, mesh=mesh)
  ps = jax.device_put(copy(params), parallel.param_shardings(params, mesh))
  traj_s, adv_s = parallel.shard_batch((traj, adv), mesh)
  args = (ps, sgd.init(ps), None, traj_s, adv_s, None)
  with jax.set_mesh(mesh):
    lowered = update.lower(*args)
  assert "sharding_constraint" in lowered.as_text()  # the blocks' inputs, the vocabulary pass
  assert "sharding_constraint" not in update.lower(*args).as_text()  # no mesh set: none
  p8, _, m8 = lowered.compile(compiler_options=TL.FAST)(*args)
  np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
  for x, y, p0 in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), jax.tree.leaves(params),
                      strict=True):
    np.testing.assert_allclose(np.asarray(x - p0), np.asarray(y - p0), rtol=1e-4, atol=1e-6)


def test_memory_options_keep_the_update():
  """remat per block + vocabulary chunks + 2 accumulated chunks of 4 rows: the float32 SGD
  update of the plain setting; in bfloat16 the parameters stay bfloat16 and the loss is the
  float32 one to bfloat16 precision."""
  import jax.numpy as jnp
  import optax

  from lrjax.latent import RuleContext
  from lrjax.rl import learner as L
  from lrjax.rollout import Sampling
  from tests import test_learner as TL

  traj = TL.make_traj("token")
  params = {"model": TL.random_params(), "rule": {}, "heads": {}}
  adv = jnp.linspace(-1.0, 1.0, traj.ids.shape[0])
  sgd = optax.sgd(1.0)

  def run(microbatch=0, **model):
    ctx = RuleContext(TL.CFG.replace(**model), "token", sampling=Sampling(0.7),
                      eos_id=TL.EOS, pad_id=0, max_new=TL.N)
    dt = ctx.model_cfg.jnp_dtype
    p = jax.tree.map(lambda x: jnp.array(x, dt), params)  # a copy: the update donates it
    return call_fast(L.make_update(ctx, L.LossSpec(beta=0.0), sgd, microbatch=microbatch),
                     p, sgd.init(p), None, traj, adv, None)

  plain = run()
  lean = run(microbatch=4, remat=True, logits_chunk=24)
  np.testing.assert_allclose(float(lean[2]["loss"]), float(plain[2]["loss"]), rtol=1e-5)
  for x, y, p0 in zip(jax.tree.leaves(lean[0]), jax.tree.leaves(plain[0]),
                      jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(np.asarray(x - p0), np.asarray(y - p0), rtol=1e-4, atol=1e-6)
  half = run(microbatch=4, remat=True, logits_chunk=24, dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(half[0]))
  np.testing.assert_allclose(float(half[2]["loss"]), float(plain[2]["loss"]), rtol=0.05,
                             atol=1e-3)


def test_a_config_compiles_its_own_rl_step_on_its_mesh():
  """`--config`: the config's rule (Latent-GRPO's, with its frozen embeddings), batch,
  remat, microbatch and mesh (a `:paper` preset's data=1, fsdp=-1 over 8 fake devices); the
  batch rows split over the 8 devices, and accumulating in chunks lowers the temporaries."""
  import memory_config as mc
  from configs import base, latent_grpo
  config = latent_grpo.get_config()  # the tiny default: topk_gumbel, 2 updates per batch
  base.fit_paper_host(config, microbatch=4)
  config.rl.num_prompts, config.rl.group_size, config.rl.max_new = 4, 8, 16
  args = memory.parse_args(["--prompt", "16", "--no_rollout"])
  mesh = mc.mesh_for(config, 8)
  assert tuple(mesh.shape.values()) == (1, 8, 1)
  step = mc.abstract_step(config, mesh, args.prompt)
  assert step["minibatch"] == 16 and step["new"] == 16
  assert step["ctx"].rule == "topk_gumbel"
  traj = step["args"][3]
  assert traj.ids.sharding.shard_shape(traj.ids.shape) == (2, 16)  # 16 rows over 8 devices
  accumulated = mc.compile_step(step, mesh, rollout_too=False)["update"].memory_analysis()
  config.rl.microbatch = 0
  whole = mc.compile_step(mc.abstract_step(config, mesh, args.prompt), mesh,
                          rollout_too=False)["update"].memory_analysis()
  assert 0 < accumulated.temp_size_in_bytes < whole.temp_size_in_bytes
  assert accumulated.argument_size_in_bytes == whole.argument_size_in_bytes
