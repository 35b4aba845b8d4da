"""Policy losses and aggregations: values, gradients and metrics vs. NumPy loop references."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.rl.losses import AGGREGATIONS, POLICY_LOSSES, ppo_clip, reinforce_onpolicy

AGG_NAMES = ["seq_mean", "seq_sum_norm", "token_mean"]

# ----------------------------------------------------------------------------- NumPy references


def np_aggregate(per_token, mask, aggregation, max_len=None):
  """The three aggregations written out as loops (float64)."""
  b, t = mask.shape
  if aggregation == "token_mean":
    total, count = 0.0, 0
    for i in range(b):
      for j in range(t):
        if mask[i, j]:
          total += per_token[i, j]
          count += 1
    return total / count if count else 0.0
  if aggregation == "seq_mean":
    acc = 0.0
    for i in range(b):
      n = sum(1 for j in range(t) if mask[i, j])
      if n:
        acc += sum(per_token[i, j] for j in range(t) if mask[i, j]) / n
    return acc / b
  if aggregation == "seq_sum_norm":
    total = sum(per_token[i, j] for i in range(b) for j in range(t) if mask[i, j])
    return total / (b * (t if max_len is None else max_len))
  raise ValueError(aggregation)


def np_agg_weight(mask, aggregation, max_len=None):
  """w[b, t] = d aggregate / d L[b, t]."""
  b, t = mask.shape
  w = np.zeros((b, t))
  n_all = mask.sum()
  for i in range(b):
    n_i = mask[i].sum()
    for j in range(t):
      if not mask[i, j]:
        continue
      if aggregation == "token_mean":
        w[i, j] = 1.0 / n_all
      elif aggregation == "seq_mean":
        w[i, j] = 1.0 / (b * n_i)
      else:
        w[i, j] = 1.0 / (b * (t if max_len is None else max_len))
  return w


def np_ppo_token(new, old, a, ref, eps_lo, eps_hi, dual, beta):
  """One token of the PPO-clip loss: (L, dL/dnew, clipped?, dual-clipped?)."""
  rho = math.exp(new - old)
  unclipped = rho * a
  clipped_obj = min(max(rho, 1 - eps_lo), 1 + eps_hi) * a
  obj = min(unclipped, clipped_obj)
  inside = 1 - eps_lo <= rho <= 1 + eps_hi
  d_obj = rho * a if (unclipped < clipped_obj or inside) else 0.0
  loss, grad = -obj, -d_obj
  is_clipped = clipped_obj < unclipped
  is_dual = False
  if dual is not None and a < 0 and loss > -dual * a:
    loss, grad, is_dual = -dual * a, 0.0, True
  if beta:
    d = ref - new
    loss += beta * (math.exp(d) - d - 1)
    grad += beta * (1 - math.exp(d))
  return loss, grad, is_clipped, is_dual


def np_ppo(new, old, adv, mask, ref, *, eps_lo=0.2, eps_hi=None, dual=None, beta=0.0,
           aggregation="token_mean", max_len=None):
  """Loss value, gradient w.r.t. new [B, T] and metrics of ppo_clip, token by token."""
  eps_hi = eps_lo if eps_hi is None else eps_hi
  b, t = mask.shape
  adv2 = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, (b, t))
  per_tok, per_grad, pg_tok = np.zeros((b, t)), np.zeros((b, t)), np.zeros((b, t))
  n = clip_n = dual_n = 0
  ratio_sum = kl_sum = approx_sum = 0.0
  for i in range(b):
    for j in range(t):
      if not mask[i, j]:
        continue
      r = ref[i, j] if ref is not None else 0.0
      loss, grad, c, d = np_ppo_token(float(new[i, j]), float(old[i, j]), float(adv2[i, j]),
                                      float(r), eps_lo, eps_hi, dual, beta)
      pg_loss, _, _, _ = np_ppo_token(float(new[i, j]), float(old[i, j]), float(adv2[i, j]),
                                      0.0, eps_lo, eps_hi, dual, 0.0)
      per_tok[i, j], per_grad[i, j], pg_tok[i, j] = loss, grad, pg_loss
      n += 1
      clip_n += c
      dual_n += d
      ratio_sum += math.exp(new[i, j] - old[i, j])
      approx_sum += old[i, j] - new[i, j]
      if ref is not None:
        dd = float(ref[i, j]) - float(new[i, j])
        kl_sum += math.exp(dd) - dd - 1
  value = np_aggregate(per_tok, mask, aggregation, max_len)
  grad = per_grad * np_agg_weight(mask, aggregation, max_len)
  n = max(n, 1)
  metrics = {"loss": value, "pg_loss": np_aggregate(pg_tok, mask, aggregation, max_len),
             "clip_frac": clip_n / n, "dual_clip_frac": dual_n / n, "ratio_mean": ratio_sum / n,
             "kl_mean": kl_sum / n, "approx_kl": approx_sum / n}
  return value, grad, metrics


def np_reinforce(new, adv, mask, ref, *, beta=0.0, aggregation="seq_mean"):
  """HRPO loss: value = agg(−A + β KL), d/dnew = (−A + β (1 − e^{ref − new})) · w."""
  b, t = mask.shape
  adv2 = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, (b, t))
  per_tok, per_grad = np.zeros((b, t)), np.zeros((b, t))
  for i in range(b):
    for j in range(t):
      if not mask[i, j]:
        continue
      per_tok[i, j] = -adv2[i, j]
      per_grad[i, j] = -adv2[i, j]
      if beta:
        d = float(ref[i, j]) - float(new[i, j])
        per_tok[i, j] += beta * (math.exp(d) - d - 1)
        per_grad[i, j] += beta * (1 - math.exp(d))
  return (np_aggregate(per_tok, mask, aggregation),
          per_grad * np_agg_weight(mask, aggregation))


# ----------------------------------------------------------------------------- fixtures


def make_batch(seed=0, b=4, t=6, spread=0.4):
  rng = np.random.default_rng(seed)
  mask = rng.random((b, t)) < 0.7
  mask[0] = True
  mask[1] = False  # a row with no valid token
  mask[2, :2] = True
  old = (-rng.random((b, t)) * 3).astype(np.float32)
  new = (old + rng.normal(size=(b, t)) * spread).astype(np.float32)
  ref = (old + rng.normal(size=(b, t)) * 0.3).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  adv[2] = -abs(adv[2]) - 0.5  # guarantee a negative-advantage row...
  new[2, 0] = old[2, 0] + np.float32(math.log(4.5))  # ...with a ratio above the dual clip
  new[0, 0] = old[0, 0] + np.float32(math.log(1.6))
  adv[0] = abs(adv[0]) + 0.5  # and a positive one clipped from above
  return new, old, ref, adv, mask


def _jnp(*xs):
  return [None if x is None else jnp.asarray(x) for x in xs]


def loss_and_grad(fn, new, old, adv, mask, **kw):
  def f(x):
    loss, metrics = fn(x, *_jnp(old, adv, mask), **kw)
    return loss, metrics
  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(new))
  return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- aggregations


def test_registries():
  assert POLICY_LOSSES.names() == ["gspo_clip", "ppo_clip", "reinforce_onpolicy"]
  assert AGGREGATIONS.names() == AGG_NAMES
  with pytest.raises(ValueError, match="unknown policy loss"):
    POLICY_LOSSES.get("dpo")


@pytest.mark.parametrize("aggregation", AGG_NAMES)
def test_aggregations_match_numpy(aggregation):
  rng = np.random.default_rng(3)
  per_tok = rng.normal(size=(4, 6)).astype(np.float32)
  mask = rng.random((4, 6)) < 0.5
  mask[1] = False
  mask[3] = True
  agg = AGGREGATIONS.get(aggregation)
  got = float(agg(jnp.asarray(per_tok), jnp.asarray(mask)))
  assert got == pytest.approx(np_aggregate(per_tok.astype(np.float64), mask, aggregation),
                              rel=1e-5, abs=1e-7)
  # NaN / inf at masked positions do not leak.
  dirty = np.where(mask, per_tok, np.nan).astype(np.float32)
  assert float(agg(jnp.asarray(dirty), jnp.asarray(mask))) == pytest.approx(got, rel=1e-6)
  # An all-masked batch gives 0, not NaN.
  assert float(agg(jnp.asarray(dirty), jnp.zeros((4, 6), bool))) == 0.0


def test_aggregations_differ_and_max_len():
  per_tok = np.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
  vals = {n: float(AGGREGATIONS.get(n)(jnp.asarray(per_tok), jnp.asarray(mask))) for n in AGG_NAMES}
  assert vals["token_mean"] == pytest.approx(8 / 5)
  assert vals["seq_mean"] == pytest.approx((1 + 4) / 2)
  assert vals["seq_sum_norm"] == pytest.approx(8 / (2 * 4))
  got = float(AGGREGATIONS.get("seq_sum_norm")(jnp.asarray(per_tok), jnp.asarray(mask), max_len=16))
  assert got == pytest.approx(8 / (2 * 16))


# ----------------------------------------------------------------------------- ppo_clip


def test_ppo_clip_region_table():
  """Hand-computed per-token losses and gradients in every region (ε = 0.2, token_mean, T = 7)."""
  rho = np.array([1.1, 1.5, 0.5, 0.5, 1.5, 5.0, 1.25])
  a = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0], np.float32)
  # The 7 tokens sit at the first 7 positions of a [4, 6] batch (the shape every test here
  # uses, so eager ops compile once); the other positions are masked.
  place = lambda v, fill: np.concatenate([v, np.full(24 - 7, fill)]).reshape(4, 6)  # noqa: E731
  old = np.full((4, 6), -1.0, np.float32)
  new = (old + np.log(place(rho, 1.0))).astype(np.float32)
  adv_bt = place(a, 0.0).astype(np.float32)
  mask = place(np.ones(7, bool), False).astype(bool)
  #                 in-range  clip-hi  low,A>0  clip-lo  hi,A<0  ratio 5,A<0  1.25,A>0
  cases = [
      (None, None, [-1.1, -1.2, -0.5, 0.8, 1.5, 5.0, -1.2], [-1.1, 0, -0.5, 0, 1.5, 5.0, 0], 3, 0),
      (3.0, None, [-1.1, -1.2, -0.5, 0.8, 1.5, 3.0, -1.2], [-1.1, 0, -0.5, 0, 1.5, 0.0, 0], 3, 1),
      (3.0, 0.28, [-1.1, -1.28, -0.5, 0.8, 1.5, 3.0, -1.25], [-1.1, 0, -0.5, 0, 1.5, 0.0, -1.25],
       2, 1),
  ]
  for dual, eps_high, losses, grads, n_clip, n_dual in cases:
    loss, grad, metrics = loss_and_grad(ppo_clip, new, old, adv_bt, mask, dual_clip=dual,
                                        clip_eps_high=eps_high)
    assert loss == pytest.approx(sum(losses) / 7, rel=1e-5), (dual, eps_high)
    np.testing.assert_allclose(grad, place(np.array(grads) / 7, 0.0), rtol=1e-5, atol=1e-7,
                               err_msg=f"dual={dual} eps_high={eps_high}")
    assert metrics["clip_frac"] == pytest.approx(n_clip / 7)
    assert metrics["dual_clip_frac"] == pytest.approx(n_dual / 7)
    assert metrics["ratio_mean"] == pytest.approx(rho.mean(), rel=1e-5)


@pytest.mark.parametrize("aggregation", AGG_NAMES)
@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("beta,eps_hi", [(0.0, None), (0.04, 0.28)])
def test_ppo_clip_matches_numpy(aggregation, dual, beta, eps_hi):
  new, old, ref, adv, mask = make_batch(seed=1)
  ref_arg = ref if beta else None
  want, want_grad, want_m = np_ppo(new, old, adv, mask, ref_arg, eps_hi=eps_hi, dual=dual,
                                   beta=beta, aggregation=aggregation)
  loss, grad, metrics = loss_and_grad(ppo_clip, new, old, adv, mask, ref_logp=ref_arg, beta=beta,
                                      clip_eps=0.2, clip_eps_high=eps_hi, dual_clip=dual,
                                      aggregation=aggregation)
  assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
  for k, v in want_m.items():
    assert metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
  # The batch really covers the clipped (and, with dual, the dual-clipped) branch.
  assert want_m["clip_frac"] > 0
  assert (want_m["dual_clip_frac"] > 0) == (dual is not None)
  assert np.all(grad[~mask] == 0.0)


def test_ppo_clip_per_token_advantages():
  new, old, ref, adv, mask = make_batch(seed=2)
  rng = np.random.default_rng(5)
  adv_bt = (rng.normal(size=mask.shape)).astype(np.float32)
  for aggregation in ("token_mean", "seq_mean"):
    want, want_grad, _ = np_ppo(new, old, adv_bt, mask, ref, dual=3.0, beta=0.01,
                                aggregation=aggregation)
    loss, grad, _ = loss_and_grad(ppo_clip, new, old, adv_bt, mask, ref_logp=ref, beta=0.01,
                                  dual_clip=3.0, aggregation=aggregation)
    assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
  # [B] advantages equal their explicit broadcast.
  a = loss_and_grad(ppo_clip, new, old, adv, mask)
  b = loss_and_grad(ppo_clip, new, old, np.repeat(adv[:, None], mask.shape[1], 1), mask)
  assert a[0] == pytest.approx(b[0], rel=1e-6)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


# ----------------------------------------------------------------------------- reinforce_onpolicy


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
@pytest.mark.parametrize("beta", [0.0, 0.005, 0.3])
def test_reinforce_onpolicy_matches_numpy(aggregation, beta):
  new, old, ref, adv, mask = make_batch(seed=4)
  ref_arg = ref if beta else None
  want, want_grad = np_reinforce(new, adv, mask, ref, beta=beta, aggregation=aggregation)
  loss, grad, metrics = loss_and_grad(reinforce_onpolicy, new, old, adv, mask, ref_logp=ref_arg,
                                      beta=beta, aggregation=aggregation)
  assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
  assert metrics["clip_frac"] == 0.0


def test_reinforce_onpolicy_hrpo_gradient_formula():
  """d/dnew_{b,t} = (−A_b + β (1 − exp(ref − new))) / (B |y_b|) under seq_mean (HRPO's L)."""
  new, _, ref, adv, mask = make_batch(seed=11)
  beta = 0.005
  _, grad, _ = loss_and_grad(reinforce_onpolicy, new, None, adv, mask, ref_logp=ref, beta=beta,
                             aggregation="seq_mean")
  n_rows, n_pos = mask.shape
  for b in range(n_rows):
    length = int(mask[b].sum())
    for t in range(n_pos):
      want = 0.0
      if mask[b, t]:
        want = (-adv[b] + beta * (1 - math.exp(ref[b, t] - new[b, t]))) / (n_rows * length)
      assert grad[b, t] == pytest.approx(want, rel=1e-5, abs=1e-8)


def test_reinforce_gradient_equals_onpolicy_ppo():
  """At old = new every ratio is 1 (inside the clip range): same gradient as ppo_clip."""
  new, _, ref, adv, mask = make_batch(seed=6)
  for aggregation in AGG_NAMES:
    _, g1, _ = loss_and_grad(reinforce_onpolicy, new, new, adv, mask, ref_logp=ref, beta=0.02,
                             aggregation=aggregation)
    _, g2, m2 = loss_and_grad(ppo_clip, new, new, adv, mask, ref_logp=ref, beta=0.02,
                              dual_clip=3.0, aggregation=aggregation)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-8)
    assert m2["clip_frac"] == 0.0 and m2["ratio_mean"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("name", ["ppo_clip", "reinforce_onpolicy"])
def test_garbage_at_masked_positions_is_harmless(name):
  fn = POLICY_LOSSES.get(name)
  new, old, ref, adv, mask = make_batch(seed=8)
  adv_bt = np.repeat(adv[:, None], mask.shape[1], 1)
  clean = loss_and_grad(fn, new, old, adv_bt, mask, ref_logp=ref, beta=0.01, dual_clip=3.0,
                        aggregation="seq_mean")
  dirty_new = np.where(mask, new, -np.inf).astype(np.float32)
  dirty_old = np.where(mask, old, -np.inf).astype(np.float32)
  dirty_ref = np.where(mask, ref, np.nan).astype(np.float32)
  dirty_adv = np.where(mask, adv_bt, np.nan).astype(np.float32)
  dirty = loss_and_grad(fn, dirty_new, dirty_old, dirty_adv, mask, ref_logp=dirty_ref, beta=0.01,
                        dual_clip=3.0, aggregation="seq_mean")
  assert np.isfinite(dirty[0]) and np.all(np.isfinite(dirty[1]))
  assert dirty[0] == pytest.approx(clean[0], rel=1e-6)
  np.testing.assert_allclose(dirty[1], clean[1], rtol=1e-6)
  for k, v in clean[2].items():
    assert dirty[2][k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
  # An all-masked batch: loss 0, gradient 0.
  empty = np.zeros_like(mask)
  loss, grad, _ = loss_and_grad(fn, dirty_new, dirty_old, dirty_adv, empty, ref_logp=dirty_ref,
                                beta=0.01)
  assert loss == 0.0 and np.all(grad == 0.0)


def test_argument_errors():
  new, old, ref, adv, mask = make_batch()
  args = _jnp(new, old, adv, mask)
  for fn in (ppo_clip, reinforce_onpolicy):
    with pytest.raises(ValueError, match="ref_logp"):
      fn(*args, beta=0.1)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
      fn(*args, aggregation="sum")
    with pytest.raises(ValueError, match="advantages"):
      fn(args[0], args[1], jnp.zeros(3), args[3])
  with pytest.raises(ValueError, match="dual_clip"):
    ppo_clip(*args, dual_clip=1.0)
  with pytest.raises(ValueError, match="old_logp"):
    ppo_clip(args[0], None, args[2], args[3])


def test_losses_jit():
  new, old, ref, adv, mask = make_batch(seed=9)
  for name in POLICY_LOSSES.names():
    fn = functools.partial(POLICY_LOSSES.get(name), beta=0.01, dual_clip=3.0,
                           aggregation="seq_mean")
    eager, eager_m = fn(*_jnp(new, old, adv, mask), ref_logp=jnp.asarray(ref))
    jitted, jit_m = jax.jit(fn)(*_jnp(new, old, adv, mask), ref_logp=jnp.asarray(ref))
    assert float(jitted) == pytest.approx(float(eager), rel=1e-5)
    # A float 0/1 mask (as the learner passes) means the same as a bool one.
    as_float, _ = jax.jit(fn)(*_jnp(new, old, adv, mask.astype(np.float32)),
                              ref_logp=jnp.asarray(ref))
    assert float(as_float) == pytest.approx(float(eager), rel=1e-6)
    assert set(jit_m) == set(eager_m) == {"loss", "pg_loss", "kl_mean", "ratio_mean", "clip_frac",
                                          "dual_clip_frac", "approx_kl"}
