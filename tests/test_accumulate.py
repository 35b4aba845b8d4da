"""Gradient accumulation (`rl.microbatch`): the accumulated update is the single-batch one.

One SGD update (so the parameter change is the gradient itself) of the token
rule's PPO loss with a KL to a reference and a parameter-only auxiliary loss,
on test_learner's trajectory (rows of different lengths, so the chunks hold
different numbers of scored positions): chunks of 2 and 4 rows against the
whole batch of 8, for `token_mean` (chunk weights T_c / T; 4 chunks of 2)
and `seq_mean` (1 / n; 2 chunks of 4). Loss, gradient norm and parameters agree to float32 precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax.latent import RuleContext
from lrjax.rl import learner as L
from lrjax.rl.accumulate import chunk_weights
from lrjax.rollout import Sampling
from tests import test_learner as TL

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")


def call_fast(update, *args):
  """update(*args) through an ahead-of-time compile at test_learner's fast XLA options."""
  return update.lower(*args).compile(compiler_options=TL.FAST)(*args)


def test_chunk_weights_hand_example():
  mask = jnp.asarray([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], bool)  # 4 + 2 positions
  np.testing.assert_allclose(np.asarray(chunk_weights("token_mean", mask, 2)), [4 / 6, 2 / 6])
  np.testing.assert_allclose(np.asarray(chunk_weights("seq_mean", mask, 2)), [0.5, 0.5])
  np.testing.assert_allclose(np.asarray(chunk_weights("token_mean", mask & False, 1)), [0.25] * 4)


@pytest.mark.parametrize("aggregation,microbatch", [("token_mean", 2), ("seq_mean", 4)])
def test_accumulated_update_equals_single_batch(aggregation, microbatch):
  ctx = RuleContext(TL.CFG, "token", sampling=Sampling(0.7), eos_id=TL.EOS, pad_id=0,
                    max_new=TL.N)
  traj = TL.make_traj("token")
  params = {"model": TL.random_params(), "heads": {"probe": jnp.asarray(TL.HEADS)}, "rule": {}}
  ref = jax.tree.map(lambda x: x * 1.05, params)
  adv = jnp.linspace(-1.0, 1.0, traj.ids.shape[0])
  spec = L.LossSpec(beta=0.1, aggregation=aggregation, aux_losses=(("heads_l2", 0.3),))
  opt = optax.sgd(1.0)
  out = {}
  for m in (0, microbatch):
    update = L.make_update(ctx, spec, opt, microbatch=m)
    p = jax.tree.map(jnp.array, params)
    out[m] = call_fast(update, p, opt.init(p), ref, traj, adv, None)
  base_params, _, base = out[0]
  assert float(base["kl_mean"]) > 0
  new_params, _, metrics = out[microbatch]
  for key in ("loss", "grad_norm", "kl_mean"):
    np.testing.assert_allclose(float(metrics[key]), float(base[key]), rtol=1e-5)
  for x, y, p0 in zip(jax.tree.leaves(new_params), jax.tree.leaves(base_params),
                      jax.tree.leaves(params), strict=True):  # p - ∇ (sgd, lr 1)
    # atol: two float32 ulps of the unit norm scales that p − p0 is read back from
    np.testing.assert_allclose(np.asarray(x - p0), np.asarray(y - p0), rtol=1e-4, atol=2.5e-7)
