"""Checkpointer: bit-exact round trips, PRNG keys, other meshes, SIGKILL safety."""
import os
import shutil
import signal
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lrjax import checkpoint as ckpt_lib
from lrjax.checkpoint import Checkpointer, abstract_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed: int = 0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  params = {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,)).astype(jnp.bfloat16)}
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)
  return {
      "params": params,
      "opt_state": opt_state,
      "step": jnp.array(7, jnp.int32),
      "rng": jax.random.key(seed + 1),
      "rbg": jax.random.split(jax.random.key(seed, impl="rbg"), 3),
      "legacy_rng": jax.random.PRNGKey(seed + 2),
  }


def _assert_same(a, b):
  chex.assert_trees_all_equal_structs(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert str(jax.random.key_impl(x)) == str(jax.random.key_impl(y))
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("abstract_fn", [abstract_state, lambda s: jax.tree.map(ocp.utils.to_shape_dtype_struct, s)])
def test_round_trip_is_bit_exact(tmp_path, abstract_fn):
  state = _state()
  meta = {"data_position": 123, "phase": "sft", "nested": {"a": [1, 2]}}
  with Checkpointer(str(tmp_path / "ck")) as ck:
    assert ck.latest_step() is None
    ck.save(10, state, meta)
  ck = Checkpointer(str(tmp_path / "ck"))
  assert ck.latest_step() == 10
  restored, rmeta = ck.restore(abstract_fn(state))
  ck.close()
  assert rmeta == meta
  _assert_same(state, restored)
  # optax states come back as their namedtuples, not lists
  assert type(restored["opt_state"][0]) is type(state["opt_state"][0])
  # typed keys come back as typed keys that sample the same numbers
  assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.normal(restored["rng"], (5,)), jax.random.normal(state["rng"], (5,)))


def test_restore_onto_8_device_mesh(tmp_path):
  x = jnp.arange(32.0).reshape(8, 4)  # one device
  keys = jax.random.split(jax.random.key(3), 8)
  state = {"x": x, "keys": keys}
  assert len(x.sharding.device_set) == 1
  with Checkpointer(str(tmp_path), async_save=False) as ck:
    ck.save(1, state, {})
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = NamedSharding(mesh, P("data"))
  target = {"x": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sh),
            "keys": jax.ShapeDtypeStruct((8,), keys.dtype, sharding=sh)}
  with Checkpointer(str(tmp_path)) as ck:
    restored, _ = ck.restore(target)
  assert restored["x"].sharding == sh
  assert len(restored["x"].sharding.device_set) == 8
  assert restored["keys"].sharding.spec == P("data")
  assert len(restored["keys"].sharding.device_set) == 8
  _assert_same(state, restored)


def test_steps_max_to_keep_and_force(tmp_path):
  ck = Checkpointer(str(tmp_path), max_to_keep=2)
  for step in (1, 2, 3):
    ck.save(step, {"v": jnp.full((2,), float(step))}, {"step": step})
  ck.wait()
  assert ck.all_steps() == [2, 3]
  ck.save(3, {"v": jnp.zeros(2)}, {"step": -1})  # not newer: skipped
  _, meta = ck.restore({"v": jnp.zeros(2)})
  assert meta == {"step": 3}
  ck.save(3, {"v": jnp.full((2,), 9.0)}, {"step": 9}, force=True)  # overwritten
  state, meta = ck.restore({"v": jnp.zeros(2)}, step=3)
  assert meta == {"step": 9}
  np.testing.assert_array_equal(state["v"], [9.0, 9.0])
  state, _ = ck.restore({"v": jnp.zeros(2)}, step=2)
  np.testing.assert_array_equal(state["v"], [2.0, 2.0])
  ck.close()
  with pytest.raises(FileNotFoundError):
    Checkpointer(str(tmp_path / "empty")).restore({"v": jnp.zeros(2)})


def test_latest_step_ignores_unfinalised_tmp_dir(tmp_path):
  with Checkpointer(str(tmp_path)) as ck:
    ck.save(2, {"v": jnp.ones(3)}, {})
  # what a save killed mid-write leaves behind (this Orbax names it "<step>.orbax-checkpoint-tmp")
  shutil.copytree(tmp_path / "2", tmp_path / "5.orbax-checkpoint-tmp")
  shutil.copytree(tmp_path / "2", tmp_path / "6.orbax-checkpoint-tmp-1700000000")
  ck = Checkpointer(str(tmp_path))
  assert ck.latest_step() == 2
  state, _ = ck.restore({"v": jnp.zeros(3)})
  np.testing.assert_array_equal(state["v"], np.ones(3))
  ck.close()


_KILLED_SCRIPT = textwrap.dedent("""
  import os, signal, sys
  import jax, jax.numpy as jnp
  from lrjax.checkpoint import Checkpointer

  def state(step):
    return {"big": jnp.full((4_000_000,), float(step)), "key": jax.random.key(step)}

  ck = Checkpointer(sys.argv[1], max_to_keep=3, async_save=True)
  ck.save(1, state(1), {"step": 1})
  ck.save(2, state(2), {"step": 2})
  ck.wait()
  ck.save(3, state(3), {"step": 3})   # async: returns while the files are written
  os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkill_leaves_a_restorable_checkpoint(tmp_path):
  directory = str(tmp_path / "ck")
  from tests import e2e_runs as e2e
  from tests import forkserver
  rc, _, err = forkserver.run_code(_KILLED_SCRIPT, [directory], REPO, e2e.env(), timeout=120)
  assert rc == -signal.SIGKILL, err[-2000:]
  ck = Checkpointer(directory)
  latest = ck.latest_step()
  assert latest in (2, 3), os.listdir(directory)
  target = {"big": jax.ShapeDtypeStruct((4_000_000,), jnp.float32),
            "key": jax.ShapeDtypeStruct((), jax.random.key(0).dtype)}
  state, meta = ck.restore(target)
  assert meta == {"step": latest}
  np.testing.assert_array_equal(np.asarray(state["big"]), np.full((4_000_000,), float(latest), np.float32))
  np.testing.assert_array_equal(jax.random.key_data(state["key"]), jax.random.key_data(jax.random.key(latest)))
  ck.close()


def test_config_mismatch_is_reexported():
  assert ckpt_lib.config_mismatch({"rl": {"lr": 1e-5}}, {"rl": {"lr": 1e-4}}) == [
      "rl.lr: 1e-05 (stored) != 0.0001 (now)"]


def test_bfloat16_compute_run_resumes_float32_masters(tmp_path):
  """An SFT run in bfloat16 compute (`model.dtype`) checkpoints its float32 master weights
  (`model.param_dtype`) and AdamW state, and a resume restores them bit for bit in float32:
  not bfloat16 values (most masters differ from their bfloat16 rounding)."""
  from configs import sft
  from lrjax.optim import make_optimizer
  from lrjax.phases import workdir as workdir_lib
  from lrjax.phases.pipeline import prepare, run_phases
  from lrjax.testing.rehearsal import override
  fields = {"model.dtype": "bfloat16", "sft.steps": 2, "sft.batch_size": 4,
            "sft.warmup_steps": 0, "sft.eval_every": 2, "checkpoint.every": 2,
            "data.train_size": 64, "data.sft_size": 64, "eval.num_problems": 4, "eval.batch_size": 4,
            "eval.max_new": 8, "eval.sampled": False, "eval.show_samples": 1}
  config = override(sft.get_config(), fields)
  assert config.model.param_dtype == "float32"  # the default: master weights
  work = str(tmp_path / "run")
  run, phases = prepare(config, work)
  run_phases(run, phases)
  trained = jax.device_get(run.params)
  leaves = jax.tree.leaves(trained)
  assert all(x.dtype == np.float32 for x in leaves)
  rounded = [np.asarray(x) != np.asarray(x.astype(jnp.bfloat16), np.float32) for x in leaves]
  assert np.mean(np.concatenate([r.ravel() for r in rounded])) > 0.5
  again, _ = prepare(config, work)
  s = config.sft  # the phase's own optimizer, for its state's structure
  opt = make_optimizer(s.lr, s.weight_decay, s.warmup_steps, s.steps, s.schedule, s.clip_norm)
  template = again.place({"params": again.params, "opt_state": opt.init(again.params)})
  with workdir_lib.checkpointer(again, "sft") as ck:
    state, step, _ = workdir_lib.try_resume(again, "sft", ck, template)
  assert step == 2
  for x, y in zip(jax.tree.leaves(state["params"]), leaves, strict=True):
    assert x.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(x), y)
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0]
  assert moments and all(x.dtype == jnp.float32 for x in moments)
  again.close()
  run.close()
