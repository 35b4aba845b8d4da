"""Length-bucketed updates (`rl.bucket_width`): the bucketed update is the padded one.

One SGD update (lr 1, so the parameter change is the gradient) on a batch of rows of
mixed lengths, padded (every row over the whole response buffer) against bucketed
(rows sorted by length, chunks cut to a multiple of the width), for every shipped
objective: the token, hidden (Coconut / LatR) and hybrid (HRPO) rules with each
aggregation, a reference KL and an auxiliary loss; LEPO's `gumbel_soft` and
Latent-GRPO's `topk_gumbel` rules on sampled rollouts; DLR's objective with its
auxiliary losses and frozen main model; Latent RL's `latent_value` objective with
the value BCE. Loss, KL, gradient norm and parameters agree to float32 precision
(loss and metrics rtol 1e-5, atol 1e-6; parameter changes rtol 1e-4 and atol the
larger of 2.5e-7, as tests/test_accumulate.py, and 1e-5 of the leaf's largest
change), and every case cuts at least one chunk short.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax.latent import DONE, RuleContext, init_rule_params
from lrjax.optim import GroupedOptimizer
from lrjax.rl import buckets
from lrjax.rl import learner as L
from lrjax.rollout import Sampling, pad_prompts
from tests import test_learner as TL
from tests import test_replay as TR

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")


def test_last_scored_and_plan_hand_example():
  mask = np.zeros((6, 10), bool)
  for b, n in enumerate([3, 10, 0, 7, 1, 5]):
    mask[b, max(n - 2, 0):n] = n > 0
  lengths = buckets.last_scored(mask)
  assert lengths.tolist() == [3, 10, 0, 7, 1, 5]
  chunks = buckets.plan(lengths, 2, 4, 10)
  assert [c.rows.tolist() for c in chunks] == [[1, 3], [5, 0], [4, 2]]
  assert [c.length for c in chunks] == [10, 8, 4]  # min(10, 4·⌈max/4⌉)
  whole = buckets.plan(lengths, 0, 4, 10)  # one chunk: the batch cut to its longest row
  assert len(whole) == 1 and whole[0].length == 10
  assert buckets.plan(np.minimum(lengths, 6), 0, 4, 10)[0].length == 8
  # groups of 2 kept together, ordered by their longest row: (3, 10), (0, 7), (1, 5)
  grouped = buckets.plan(lengths, 2, 4, 10, unit=2)
  assert [c.rows.tolist() for c in grouped] == [[0, 1], [2, 3], [4, 5]]
  assert [c.length for c in grouped] == [10, 8, 8]
  with pytest.raises(ValueError, match="whole groups of 4"):
    buckets.plan(lengths, 2, 4, 10, unit=4)
  # rows per chunk when rl.microbatch is 0: the largest divisor up to rl.bucket_rows
  assert [buckets.chunk_rows_for(r, 8) for r in (64, 12, 2, 11, 8)] == [8, 6, 2, 1, 8]
  assert buckets.chunk_rows_for(64, 8, unit=16) == 16  # whole groups, even past the limit
  assert buckets.chunk_rows_for(48, 20, unit=8) == 16
  assert buckets.chunk_rows_for(12, 0) == 12


def _shorten(traj, lengths):
  """traj with row b's response ended after lengths[b] positions (DONE after)."""
  n = traj.ids.shape[1]
  live = jnp.asarray(np.arange(n)[None] < np.asarray(lengths)[:, None])
  return dataclasses.replace(
      traj, span=jnp.where(live, traj.span, DONE).astype(traj.span.dtype),
      sampled=traj.sampled & live, logp=jnp.where(live, traj.logp, 0.0),
      lengths=jnp.minimum(traj.lengths, jnp.asarray(lengths, jnp.int32)))


def _compare(ctx, spec, opt, params, ref, traj, adv, aux=None, old=None, rewards=None,
             microbatch=2, width=2, unit=1):
  """Padded and bucketed updates from the same start; asserts they agree."""
  mask = np.asarray(L.loss_mask(L.loss_masks(ctx, traj)))
  n = mask.shape[1]
  chunks = buckets.plan(buckets.last_scored(mask), microbatch, width, n, unit)
  assert min(c.length for c in chunks) < n, "no chunk is cut: the case tests nothing"
  out = []
  for w in (0, width):
    update = L.make_update(ctx, spec, opt, microbatch=microbatch if w else 0, bucket_width=w,
                           bucket_unit=unit)
    p = jax.tree.map(jnp.array, params)
    out.append(update(p, opt.init(p), ref, traj, adv, aux, old, rewards))
  (base_params, _, base), (new_params, _, metrics) = out
  assert bool(base["ok"]) and bool(metrics["ok"])
  assert float(base["grad_norm"]) > 0
  for key in sorted(base):
    if key != "ok":
      # atol: approx_kl and kl_mean are means of log-prob differences near 0, whose
      # float32 noise between two replays of different widths is ~1e-7
      np.testing.assert_allclose(float(metrics[key]), float(base[key]), rtol=1e-5, atol=1e-6,
                                 err_msg=key)
  for x, y, p0 in zip(jax.tree.leaves(new_params), jax.tree.leaves(base_params),
                      jax.tree.leaves(params), strict=True):  # p - ∇ (sgd, lr 1)
    want = np.asarray(y - p0)
    # atol: float32 sums of a leaf's gradient in another order (by chunk, and each chunk's
    # replay at its own width) differ by a few ulps of the leaf's largest entries
    np.testing.assert_allclose(np.asarray(x - p0), want, rtol=1e-4,
                               atol=max(2.5e-7, 1e-5 * float(np.abs(want).max())))
  return base


@pytest.mark.parametrize("rule", ["token", "hidden", "hybrid"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_bucketed_update_equals_padded_for_each_rule(rule, aggregation):
  ctx = TL.contexts()[rule]
  params = {"model": TL.random_params(), "heads": {"probe": jnp.asarray(TL.HEADS)},
            "rule": init_rule_params(ctx, jax.random.key(3)) if rule == "hybrid" else {}}
  ref = jax.tree.map(lambda x: x * 1.05, params)
  traj = TL.make_traj(rule)  # rows of lengths between 2 and N
  aux = TL._hybrid_aux() if rule == "hybrid" else None
  spec = L.LossSpec(beta=0.1, aggregation=aggregation, aux_losses=(("heads_l2", 0.3),),
                    kl_reference="token_inputs" if rule == "hybrid" else "policy_inputs")
  adv = jnp.linspace(-1.0, 1.0, traj.ids.shape[0])
  old = L.behaviour_logp(ctx, params, traj, aux)
  base = _compare(ctx, spec, optax.sgd(1.0), params, ref, traj, adv, aux, old)
  assert float(base["kl_mean"]) > 0


def test_one_chunk_is_the_batch_cut_to_its_longest_row():
  ctx = TL.contexts()["token"]
  params = {"model": TL.random_params(), "heads": {}, "rule": {}}
  traj = _shorten(TL.make_traj("token"), [5, 3, 4, 2, 5, 4, 3, 2])
  _compare(ctx, L.LossSpec(aggregation="seq_sum_norm"), optax.sgd(1.0), params, None, traj,
           jnp.linspace(-1.0, 1.0, 8), microbatch=0, width=1)


@pytest.mark.parametrize("method", ["lepo", "latent_grpo"])
def test_bucketed_update_equals_padded_on_sampled_latent_rollouts(method):
  if method == "lepo":
    from tests.test_lepo import SAMPLED as ctx  # noqa: PLC0415
    aux = None
  else:
    from tests.test_latent_grpo import SAMPLED as ctx, _aux  # noqa: PLC0415
    aux = _aux(TR.EOS)
  ids, mask = pad_prompts(TR.PROMPTS, TR.BUCKET)
  params = TR.full_params()
  traj = TR.rollout_fast(ctx, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(3), aux)
  traj = _shorten(traj, [TR.N, 4, TR.N - 3, 9])
  ref = jax.tree.map(lambda x: x * 1.05, params)
  spec = L.LossSpec(beta=0.1, aggregation="seq_mean")
  old = L.behaviour_logp(ctx, params, traj, aux)
  _compare(ctx, spec, optax.sgd(1.0), params, ref, traj, jnp.asarray([1.0, -0.5, 2.0, -1.5]),
           aux, old, width=4)


def test_bucketed_update_equals_padded_for_dlr():
  """DLR: the chain objective, gspo_clip, the KL and contrastive terms over a group's
  rows (groups kept whole), and the frozen main model (grouped optimizer); the
  chunks hold the chains, not the main model's text."""
  from lrjax.rl import advantages as adv_lib  # noqa: PLC0415
  from tests import test_dlr as TD  # noqa: PLC0415
  ctx = TD._ctx(max_new=8)
  params = TD._params(ctx)
  traj = TD._roll(ctx, params)
  # every row scores its chain's T positions only (the main model's text is frozen):
  # the chunks are cut to T of the buffer's 8
  assert np.asarray(L.loss_mask(L.loss_masks(ctx, traj))).sum(-1).tolist() == [TD.T] * 2 * TD.G
  rewards = jnp.asarray([1.5, -0.5, 0.5, -1.5] * 2, jnp.float32)
  spec = L.LossSpec.from_config(TD._rl_cfg())
  # the config's parameter groups (main model frozen) with SGD, lr 1: the change is −∇
  opt = GroupedOptimizer(L.make_rl_optimizer(TD._rl_cfg(), 10).groups, optax.sgd(1.0))
  old = L.behaviour_logp(ctx, params, traj)
  _compare(ctx, spec, opt, params, None, traj, adv_lib.grpo(rewards, TD.G), None, old, rewards,
           microbatch=TD.G, width=1, unit=TD.G)


def test_bucketed_update_equals_padded_for_latent_value():
  from lrjax.methods.latr.value_head import fit_input_norm, init_value_head  # noqa: PLC0415
  from lrjax.rollout import sample_trajectory  # noqa: PLC0415
  ctx = RuleContext(TR.CFG, "hidden", sampling=Sampling(temperature=1.0), bot_id=TR.BOT,
                    latent_id=TR.LAT, eot_id=TR.EOT, eos_id=TR.EOS, num_latent=3, max_new=10,
                    objective="latent_value", objective_cfg={"pos_weight": 4.0, "dropout": 0.0})
  ids, mask = pad_prompts([[20, 21, 22, TR.BOT], [5, 9, 13, TR.BOT], [TR.BOT],
                           [40, 41, 42, 43, TR.BOT]], 8, 0)
  states = np.random.default_rng(0).normal(0.3, 2.0, (50, TR.CFG.hidden_size))
  head = fit_input_norm(init_value_head(TR.CFG.hidden_size, jax.random.key(7)), states)
  params = {"model": TR.model_params(), "rule": {}, "heads": {"value": head, "value_start": head}}
  traj = jax.jit(sample_trajectory, static_argnums=0)(ctx, params, jnp.asarray(ids),
                                                       jnp.asarray(mask), jax.random.key(0))
  traj = _shorten(traj, [10, 2, 3, 10])
  rewards = jnp.asarray([1.0, 0.0, 0.0, 1.0])
  spec = L.LossSpec(aux_losses=(("value_bce", 1.0),))
  _compare(ctx, spec, optax.sgd(1.0), params, None, traj, jnp.ones(4), None, None, rewards,
           width=2)
