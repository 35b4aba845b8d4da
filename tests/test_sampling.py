"""Temperature / top-k / top-p processing against a NumPy reference (HF's warper rules)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.sampling import (Sampling, first_argmax, gumbel, kth_largest, process_logits,
                                   sample, token_logp)
from tests.e2e_runs import FAST_COMPILER_OPTIONS as FAST


def np_process(logits, temperature, top_k, top_p):
  """HF: TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (ascending cumsum)."""
  x = logits.astype(np.float64) / temperature
  if 0 < top_k < x.shape[-1]:
    kth = np.sort(x, -1)[..., -top_k][..., None]
    x = np.where(x < kth, -np.inf, x)
  if top_p < 1.0:
    order = np.argsort(x, -1)  # ascending
    xs = np.take_along_axis(x, order, -1)
    p = np.exp(xs - xs.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    remove = np.cumsum(p, -1) <= 1 - top_p
    remove[..., -1] = False  # min_tokens_to_keep = 1
    out = np.empty_like(x)
    np.put_along_axis(out, order, np.where(remove, -np.inf, xs), -1)
    x = out
  return x


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 20, 0.9), (0.5, 0, 0.3), (1.0, 0, 1.0), (2.0, 64, 1e-6)])
def test_process_logits_matches_numpy(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(0, 2, (6, 64)).astype(np.float32)
  got = np.asarray(process_logits(jnp.asarray(logits), temperature, top_k, top_p))
  want = np_process(logits, temperature, top_k, top_p)
  chex.assert_trees_all_equal(np.isinf(got), np.isinf(want))
  kept = np.isfinite(want)
  np.testing.assert_allclose(got[kept], want[kept], rtol=1e-6)
  assert kept.sum(-1).min() >= 1
  if top_k:
    assert kept.sum(-1).max() <= top_k


@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), (0, 0.5), (30, 0.95), (0, 1e-6)])
def test_sort_free_nucleus_matches_numpy_on_a_large_vocabulary(top_k, top_p):
  """The bisection nucleus on a 32k vocabulary with rows of ties across the cut, a row
  mostly −inf and a constant row, float32 and (sorted path) bfloat16."""
  x = np.random.default_rng(5).normal(0, 3, (6, 32000)).astype(np.float32)
  x[0] = np.round(x[0])  # many ties, one of them at the cut
  x[1, 5:] = -np.inf
  x[2] = 0.25
  x[3] *= 0.05  # a flat distribution: a nucleus of thousands
  for dtype in (jnp.float32, jnp.bfloat16):
    xd = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32))
    got = np.asarray(process_logits(jnp.asarray(xd, dtype), 1.0, top_k, top_p))
    hf = np_process(xd, 1.0, top_k, top_p)
    # HF's nucleus, with every token tied at its cut kept (HF keeps some of them)
    cut = np.where(np.isfinite(hf), hf, np.inf).min(-1, keepdims=True)
    want = np.isfinite(hf) | (xd >= cut)
    np.testing.assert_array_equal(np.isfinite(got), want)
    assert want.sum(-1).min() >= 1
    if top_k == 0 and top_p > 0.1:
      assert want[3].sum() > 100  # the flat row's nucleus is wide
    assert want[2].all()  # a constant row: all tied at the cut, all kept


def test_sample_frequencies_follow_temperature_and_truncation():
  logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 0.8], np.float32)
  rows = jnp.asarray(np.tile(logits, (10000, 1)))  # one draw per row
  draw = jax.jit(sample, static_argnums=2, compiler_options=FAST)
  s = Sampling(temperature=0.5, top_k=4)
  freq = np.bincount(np.asarray(draw(jax.random.key(0), rows, s)), minlength=6) / len(rows)
  want = np.exp(np_process(logits, s.temperature, s.top_k, s.top_p))
  np.testing.assert_allclose(freq, want / want.sum(), atol=0.02)
  assert freq[4] == 0 and freq[3] == 0  # outside the top-4 (ties kept: none here)
  cold = np.asarray(draw(jax.random.key(1), rows[:500], Sampling(temperature=1e-3)))
  np.testing.assert_array_equal(cold, 0)  # temperature -> 0 is greedy


def test_greedy_is_argmax_of_raw_logits():
  logits = np.random.default_rng(1).normal(size=(4, 3, 64)).astype(np.float32)
  y = sample(jax.random.key(2), logits, Sampling(temperature=0.3, top_k=2, greedy=True))
  chex.assert_type(y, jnp.int32)
  np.testing.assert_array_equal(y, np.asarray(logits).argmax(-1))


def test_behaviour_logp_is_untruncated():
  logits = np.random.default_rng(3).normal(size=(2, 5, 64)).astype(np.float32)
  ids = logits.argmax(-1)
  got = np.asarray(token_logp(jnp.asarray(logits), jnp.asarray(ids), 0.7))
  x = np.asarray(logits, np.float64) / 0.7
  ref = x - x.max(-1, keepdims=True)
  ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
  np.testing.assert_allclose(got, np.take_along_axis(ref, ids[..., None], -1)[..., 0],
                             rtol=1e-5)
  assert (got < -1e-3).all()  # a top-1 truncation would have given log 1 = 0


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0),
                                dict(top_p=1.5)])
def test_sampling_validates(kw):
  with pytest.raises(ValueError):
    Sampling(**kw)


def test_kth_largest_and_first_argmax_match_lax():
  """The bisection k-th largest = lax.top_k's; first_argmax = jnp.argmax (ties, ±0, ±inf)."""
  x = np.random.default_rng(4).normal(0, 3, (8, 96)).astype(np.float32)
  x[0, :40] = 1.5  # ties across the cut
  x[1] = -np.inf
  x[1, 3] = 0.0
  x[2] = 0.0
  x[2, 5] = -0.0
  x[3, :10] = -np.inf
  x[4] = np.finfo(np.float32).min
  x[5, 7] = np.inf
  x = jnp.asarray(x)
  for k in (1, 2, 3, 30, 50, 95, 96):
    np.testing.assert_array_equal(np.asarray(kth_largest(x, k)),
                                  np.asarray(jax.lax.top_k(x, k)[0][..., -1:]))
  np.testing.assert_array_equal(np.asarray(first_argmax(x)), np.asarray(jnp.argmax(x, -1)))
  for i in range(5):  # the Gumbel-max draw is jax.random.categorical's, id for id
    key = jax.random.key(i)
    np.testing.assert_array_equal(np.asarray(sample(key, x[6:], Sampling(top_k=5))),
                                  np.asarray(jax.random.categorical(key, process_logits(x[6:], 1.0, 5))))


@pytest.mark.parametrize("shape", [(64, 512), (3, 5, 7), (1,)])
def test_gumbel_is_jax_random_gumbel_bit_for_bit(shape):
  for i in range(4):
    key = jax.random.fold_in(jax.random.key(i), 11)
    np.testing.assert_array_equal(np.asarray(jax.jit(gumbel, static_argnums=1)(key, shape)),
                                  np.asarray(jax.random.gumbel(key, shape)))
  raw = jax.random.PRNGKey(0)  # legacy uint32 keys take jax's own path
  np.testing.assert_array_equal(np.asarray(gumbel(raw, shape)),
                                np.asarray(jax.random.gumbel(raw, shape)))
