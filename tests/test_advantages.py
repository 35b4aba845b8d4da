"""Advantage estimators and Latent-GRPO first-token selection vs. NumPy loop references."""
from __future__ import annotations

import functools
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings

from lrjax.rl.advantages import (ADVANTAGES, first_token_advantages, first_token_selection, grpo,
                                 grpo_no_std, seq_logp_mean)
from lrjax.rl.kl import kl_k1, kl_k2, kl_k3

# Jitted copies for the property tests: one XLA compile per shape instead of one per op.
_jit_kw = dict(static_argnums=(1,), static_argnames=("exclude_invalid_from_stats",))
jgrpo = jax.jit(grpo, **_jit_kw)
jgrpo_no_std = jax.jit(grpo_no_std, **_jit_kw)
jfirst = jax.jit(first_token_selection, static_argnums=(2,))
jfirst_adv = jax.jit(first_token_advantages)
jseq_logp_mean = jax.jit(seq_logp_mean)
jk3 = jax.jit(kl_k3)

# ----------------------------------------------------------------------------- NumPy references


def np_group_adv(rewards, group_size, eps=1e-4, valid=None, exclude=False, use_std=True):
  """Loop-based GRPO / Dr. GRPO advantages in float64 (the definition, written out)."""
  rewards = [float(r) for r in rewards]
  b = len(rewards)
  out = np.zeros(b, np.float64)
  for p in range(b // group_size):
    rows = list(range(p * group_size, (p + 1) * group_size))
    stat_rows = [i for i in rows if not (exclude and valid is not None and not valid[i])]
    vals = [rewards[i] for i in stat_rows]
    n = len(vals)
    flat = n <= 1 or max(vals) == min(vals)
    if not flat:
      mean = sum(vals) / n
      std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    for i in rows:
      if valid is not None and not valid[i]:
        out[i] = 0.0
      elif flat:
        out[i] = 0.0
      elif use_std:
        out[i] = (rewards[i] - mean) / (std + eps)
      else:
        out[i] = rewards[i] - mean
  return out


def np_first_token_selection(adv, lp, group_size):
  out = np.array(adv, np.float64)
  for p in range(len(adv) // group_size):
    rows = range(p * group_size, (p + 1) * group_size)
    positives = [i for i in rows if adv[i] > 0]
    if not positives:
      continue
    best = positives[0]
    for i in positives[1:]:
      if lp[i] > lp[best]:  # strict: ties keep the earliest
        best = i
    for i in rows:
      if i != best:
        out[i] = 0.0
  return out


def np_first_token_advantages(adv, first_adv, mask):
  b, t = mask.shape
  out = np.zeros((b, t), np.float64)
  for i in range(b):
    first = None
    for j in range(t):
      if mask[i, j]:
        first = j
        break
    for j in range(t):
      out[i, j] = first_adv[i] if j == first else adv[i]
  return out


def np_seq_logp_mean(logp, mask):
  b, t = mask.shape
  out = np.zeros(b)
  for i in range(b):
    n = sum(1 for j in range(t) if mask[i, j])
    s = sum(float(logp[i, j]) for j in range(t) if mask[i, j])
    out[i] = s / n if n else 0.0
  return out


# ----------------------------------------------------------------------------- GRPO


def test_registry():
  assert ADVANTAGES.names() == ["constant", "grpo", "grpo_no_std"]
  assert ADVANTAGES.get("grpo") is grpo
  with pytest.raises(ValueError, match="unknown advantage estimator"):
    ADVANTAGES.get("ppo")


def test_grpo_hand_values_use_unbiased_std():
  # group [1, 0, 0, 0]: mean .25, unbiased std = sqrt((.75² + 3 · .25²) / 3) = .5
  # (the biased std would be .433).
  a = np.asarray(grpo(jnp.array([1.0, 0.0, 0.0, 0.0]), 4))  # eager once
  np.testing.assert_allclose(a, [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001],
                             rtol=1e-6)
  a = np.asarray(jgrpo(jnp.array([1.0, 0.0, 0.0, 0.0]), 4, eps=0.0))
  np.testing.assert_allclose(a, [1.5, -0.5, -0.5, -0.5], rtol=1e-6)


@pytest.mark.parametrize("group_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("eps", [1e-4, 1e-6, 0.5])
def test_grpo_matches_numpy(group_size, eps):
  rng = np.random.default_rng(group_size * 100 + int(eps * 1e6))
  b = 4 * group_size
  for rewards in (rng.normal(size=b) * 3.0, rng.integers(0, 2, size=b).astype(np.float64)):
    r32 = rewards.astype(np.float32)
    got = np.asarray(jgrpo(jnp.asarray(r32), group_size, eps=eps))
    want = np_group_adv(r32, group_size, eps=eps)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = np.asarray(jgrpo_no_std(jnp.asarray(r32), group_size, eps=eps))
    np.testing.assert_allclose(got, np_group_adv(r32, group_size, use_std=False), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("value", [0.1, 0.3, 1.0, -7.3, 1e6, 0.7])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_all_equal_group_gives_exact_zero(value, eps):
  rewards = jnp.array([value] * 7 + [0.0, 1.0, 0.5, 0.25, 0.0, 1.0, 2.0], jnp.float32)
  group_relative = [n for n in ADVANTAGES.names()
                    if getattr(ADVANTAGES.get(n), "min_group_size", 1) >= 2]
  assert group_relative == ["grpo", "grpo_no_std"]
  for name in group_relative:
    a = np.asarray(jax.jit(ADVANTAGES.get(name), **_jit_kw)(rewards, 7, eps=eps))
    assert np.all(a[:7] == 0.0), (name, a)
    assert np.all(np.isfinite(a))
    assert np.any(a[7:] != 0.0)


def test_group_size_one_gives_zero():
  a = np.asarray(jgrpo(jnp.array([1.0, 0.0, 3.0]), 1))
  assert np.all(a == 0.0)


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("name", ["grpo", "grpo_no_std"])
def test_valid_mask_matches_numpy(exclude, name):
  rng = np.random.default_rng(7)
  g = 4
  rewards = np.array([1, 0, 1, 0,  # all valid
                      1, 0, 0, 5,  # last one invalid (e.g. truncated, reward 5 is junk)
                      1, 1, 1, 1,  # all invalid
                      0, 3, 1, 1,  # only one valid
                      1, 1, 0, 2], np.float32)  # valid rows equal, invalid differ
  valid = np.array([1, 1, 1, 1,
                    1, 1, 1, 0,
                    0, 0, 0, 0,
                    0, 1, 0, 0,
                    1, 1, 0, 0], bool)
  fn = jax.jit(ADVANTAGES.get(name), **_jit_kw)
  got = np.asarray(fn(jnp.asarray(rewards), g, eps=1e-4, valid=jnp.asarray(valid),
                      exclude_invalid_from_stats=exclude))
  want = np_group_adv(rewards, g, eps=1e-4, valid=valid, exclude=exclude,
                      use_std=name == "grpo")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(got[~valid] == 0.0)
  # The statistics really differ between the two modes in group 2.
  other = np_group_adv(rewards, g, eps=1e-4, valid=valid, exclude=not exclude,
                       use_std=name == "grpo")
  assert not np.allclose(want[4:7], other[4:7])
  # Random masks too.
  for _ in range(5):
    r = rng.normal(size=24).astype(np.float32)
    v = rng.random(24) < 0.7
    got = np.asarray(fn(jnp.asarray(r), 6, eps=1e-4, valid=jnp.asarray(v),
                        exclude_invalid_from_stats=exclude))
    want = np_group_adv(r, 6, eps=1e-4, valid=v, exclude=exclude, use_std=name == "grpo")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grpo_jits_and_rejects_bad_shapes():
  f = jax.jit(functools.partial(grpo, group_size=3, eps=1e-4))
  r = jnp.array([1.0, 0.0, 0.0, 2.0, 2.0, 1.0])
  np.testing.assert_allclose(np.asarray(f(r)), np_group_adv(np.asarray(r), 3), rtol=1e-6)
  with pytest.raises(ValueError, match="multiple of group_size"):
    grpo(jnp.zeros(5), 2)
  with pytest.raises(ValueError, match="multiple of group_size"):
    grpo(jnp.zeros((2, 2)), 2)


_group_sizes = st.sampled_from([3, 8])  # few shapes: each one compiles
_prompts = st.sampled_from([1, 2])


@settings(max_examples=30, deadline=None)
@given(g=_group_sizes, p=_prompts, data=st.data())
def test_grpo_zero_group_mean(g, p, data):
  rewards = np.array(data.draw(st.lists(st.floats(-10, 10, width=32), min_size=g * p,
                                        max_size=g * p)), np.float32)
  a = np.asarray(jgrpo(jnp.asarray(rewards), g)).reshape(p, g)
  # |A| <= sqrt(g - 1) for a group-normalised sample, so the tolerance is relative to that.
  np.testing.assert_allclose(a.mean(-1), 0.0, atol=1e-5 * math.sqrt(g))
  a = np.asarray(jgrpo_no_std(jnp.asarray(rewards), g)).reshape(p, g)
  np.testing.assert_allclose(a.mean(-1), 0.0, atol=1e-5 * 10)


@settings(max_examples=30, deadline=None)
@given(g=_group_sizes, p=_prompts, shift=st.floats(-100, 100), scale=st.floats(0.1, 10),
       data=st.data())
def test_grpo_shift_and_scale_invariance(g, p, shift, scale, data):
  rewards = np.array(data.draw(st.lists(st.floats(-10, 10, width=32), min_size=g * p,
                                        max_size=g * p)), np.float32)
  grouped = rewards.reshape(p, g)
  assume(np.all(grouped.max(-1) - grouped.min(-1) >= 0.5))  # away from the eps regime
  eps = 1e-6
  a = np.asarray(jgrpo(jnp.asarray(rewards), g, eps=eps))
  shifted = np.asarray(jgrpo(jnp.asarray(rewards + np.float32(shift)), g, eps=eps))
  scaled = np.asarray(jgrpo(jnp.asarray(rewards * np.float32(scale)), g, eps=eps))
  np.testing.assert_allclose(shifted, a, atol=1e-3)
  np.testing.assert_allclose(scaled, a, atol=1e-3)
  # Dr. GRPO: shift-invariant, scale-equivariant.
  b = np.asarray(jgrpo_no_std(jnp.asarray(rewards), g))
  np.testing.assert_allclose(np.asarray(jgrpo_no_std(jnp.asarray(rewards + np.float32(shift)), g)),
                             b, atol=1e-3)
  np.testing.assert_allclose(np.asarray(jgrpo_no_std(jnp.asarray(rewards * np.float32(scale)), g)),
                             b * scale, rtol=1e-4, atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(g=_group_sizes, p=_prompts, shift=st.floats(-100, 100), scale=st.floats(0.1, 10),
       data=st.data())
def test_grpo_invariance_on_discrete_rewards(g, p, shift, scale, data):
  # Integer rewards include all-equal groups, which must stay exactly 0 after shift / scale.
  rewards = np.array(data.draw(st.lists(st.integers(0, 2), min_size=g * p, max_size=g * p)),
                     np.float32)
  eps = 1e-4  # grpo's default
  a = np.asarray(jgrpo(jnp.asarray(rewards), g))
  std = rewards.reshape(p, g).astype(np.float64).std(-1, ddof=1).repeat(g)
  s = np.float64(np.float32(scale))
  # Shifting leaves (r - m) / (std + eps) unchanged; scaling by s turns it into
  # s (r - m) / (s std + eps), i.e. a times s (std + eps) / (s std + eps): exact
  # invariance only as eps -> 0 (a plain `b == a` fails for small s, where
  # eps / (s std) reaches 3e-3).
  for other, factor in ((rewards + np.float32(shift), np.ones_like(std)),
                        (rewards * np.float32(scale), s * (std + eps) / (s * std + eps))):
    b = np.asarray(jgrpo(jnp.asarray(other), g))
    flat = (rewards.reshape(p, g).max(-1) == rewards.reshape(p, g).min(-1)).repeat(g)
    assert np.all(b[flat] == 0.0) and np.all(a[flat] == 0.0)
    np.testing.assert_allclose(b, a * factor, rtol=2e-4, atol=1e-4)


# ----------------------------------------------------------------------------- first token


def test_first_token_selection_hand_example():
  adv = jnp.array([0.5, 0.5, -1.0, 0.0,    # two positives, the second has the higher log-prob
                   -0.5, -0.5, 0.5, 0.5,   # tie in log-prob -> the earlier positive
                   -1.0, 1.0, -1.0, 1.0])  # positives at 1 and 3, row 9 has the higher log-prob
  lp = jnp.array([-2.0, -1.0, -0.1, -0.2,
                  -0.3, -0.3, -0.7, -0.7,
                  -5.0, -3.0, -0.1, -4.0])
  got = np.asarray(jfirst(adv, lp, 4))
  np.testing.assert_array_equal(got, [0.0, 0.5, 0.0, 0.0,
                                      0.0, 0.0, 0.5, 0.0,
                                      0.0, 1.0, 0.0, 0.0])
  # A group without positives keeps its advantages.
  adv = jnp.array([-0.5, -0.5, 0.0, -1.0])
  np.testing.assert_array_equal(np.asarray(jfirst(adv, jnp.zeros(4), 4)),
                                np.asarray(adv))


def test_first_token_selection_nonfinite_logp_of_positive():
  adv = jnp.array([-1.0, 1.0, -1.0, 1.0])
  lp = jnp.array([0.0, -jnp.inf, 5.0, jnp.nan])
  got = np.asarray(jfirst(adv, lp, 4))
  # Both positives rank lowest; the earlier one wins, never a non-positive row.
  np.testing.assert_array_equal(got, [0.0, 1.0, 0.0, 0.0])


@settings(max_examples=30, deadline=None)
@given(g=_group_sizes, p=_prompts, data=st.data())
def test_first_token_selection_matches_numpy(g, p, data):
  n = g * p
  adv = np.array(data.draw(st.lists(st.sampled_from([-1.0, -0.3, 0.0, 0.4, 1.2]), min_size=n,
                                    max_size=n)), np.float32)
  lp = np.array(data.draw(st.lists(st.sampled_from([-3.0, -1.0, -0.5, -0.25]), min_size=n,
                                   max_size=n)), np.float32)  # small set -> many ties
  got = np.asarray(jfirst(jnp.asarray(adv), jnp.asarray(lp), g))
  np.testing.assert_array_equal(got, np_first_token_selection(adv, lp, g))
  # At most one nonzero entry per group that has a positive.
  for q in range(p):
    block = got[q * g:(q + 1) * g]
    if np.any(adv[q * g:(q + 1) * g] > 0):
      assert np.count_nonzero(block) == 1 and block.max() > 0


def test_first_token_advantages_and_seq_logp_mean():
  rng = np.random.default_rng(0)
  b, t = 6, 7
  mask = rng.random((b, t)) < 0.6
  mask[0] = False  # empty row
  mask[1] = True
  mask[2, :3] = False
  adv = rng.normal(size=b).astype(np.float32)
  first = rng.normal(size=b).astype(np.float32)
  got = np.asarray(jfirst_adv(jnp.asarray(adv), jnp.asarray(first), jnp.asarray(mask)))
  np.testing.assert_allclose(got, np_first_token_advantages(adv, first, mask), rtol=1e-7)
  assert got.shape == (b, t)

  logp = rng.normal(size=(b, t)).astype(np.float32) - 1.0
  logp_pad = np.where(mask, logp, -np.inf).astype(np.float32)  # padding may be -inf
  got = np.asarray(jseq_logp_mean(jnp.asarray(logp_pad), jnp.asarray(mask)))
  np.testing.assert_allclose(got, np_seq_logp_mean(logp, mask), rtol=1e-6, atol=1e-7)
  assert got[0] == 0.0


def test_latent_grpo_pipeline_end_to_end():
  """grpo with valid mask -> first-token selection -> [B, T] advantages."""
  rewards = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
  valid = jnp.array([True, True, True, True, True, False, True, True])
  mask = jnp.ones((8, 3), bool)
  old_logp = jnp.array([[-1.0] * 3, [-0.5] * 3, [-0.1] * 3, [-2.0] * 3,
                        [-1.0] * 3, [-1.0] * 3, [-1.0] * 3, [-1.0] * 3])
  a = jgrpo(rewards, 4, valid=valid, exclude_invalid_from_stats=True)
  first = jfirst(a, jseq_logp_mean(old_logp, mask), 4)
  per_token = np.asarray(jfirst_adv(a, first, mask))
  want_a = np_group_adv(np.asarray(rewards), 4, valid=np.asarray(valid), exclude=True)
  np.testing.assert_allclose(np.asarray(a), want_a, rtol=1e-6)
  assert per_token[0, 0] == 0.0 and per_token[1, 0] == pytest.approx(want_a[1])  # row 1 wins
  assert per_token[2, 0] == 0.0 and per_token[3, 0] == 0.0
  np.testing.assert_allclose(per_token[:, 1:], np.repeat(want_a[:, None], 2, 1), rtol=1e-6)
  assert per_token[5].tolist() == [0.0, 0.0, 0.0]  # invalid row
  assert per_token[7, 0] == pytest.approx(want_a[7])  # sole positive of group 2


# ----------------------------------------------------------------------------- KL


def np_k3(new, ref):
  out = np.zeros(np.shape(new))
  for idx in np.ndindex(out.shape):
    d = float(ref[idx]) - float(new[idx])
    out[idx] = math.expm1(d) - d  # = e^d - d - 1 without cancellation
  return out


def test_kl_values():
  rng = np.random.default_rng(1)
  new = (rng.normal(size=(3, 5)) - 2).astype(np.float32)
  ref = (rng.normal(size=(3, 5)) - 2).astype(np.float32)
  np.testing.assert_allclose(np.asarray(kl_k3(jnp.asarray(new), jnp.asarray(ref))), np_k3(new, ref),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(kl_k1(jnp.asarray(new), jnp.asarray(ref))),
                             new.astype(np.float64) - ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(kl_k2(jnp.asarray(new), jnp.asarray(ref))),
                             0.5 * (new.astype(np.float64) - ref) ** 2, rtol=1e-5, atol=1e-7)
  # Gradient of k3 w.r.t. new: 1 - exp(ref - new).
  g = jax.grad(lambda x: kl_k3(x, jnp.asarray(ref)).sum())(jnp.asarray(new))
  np.testing.assert_allclose(np.asarray(g), 1 - np.exp(ref.astype(np.float64) - new), rtol=1e-5,
                             atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(new=st.lists(st.floats(-40, 0, width=32), min_size=16, max_size=16),
       delta=st.lists(st.one_of(st.floats(-2.0**-10, 2.0**-10, width=32),
                                st.floats(-20, 20, width=32)), min_size=16, max_size=16))
def test_k3_nonnegative(new, delta):
  new = np.array(new, np.float32)
  ref = (new + np.array(delta[:len(new)], np.float32)).astype(np.float32)
  k = np.asarray(jk3(jnp.asarray(new), jnp.asarray(ref)))
  assert np.all(k >= 0.0), (new, ref, k)
  np.testing.assert_allclose(k, np_k3(new, ref), rtol=1e-4, atol=1e-6)
