"""Coconut forward: the KV-cached scan equals the explicit growing-sequence loop."""
import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import optax
import pytest

from lrjax.data.tasks import Problem
from lrjax.model import embed, forward, init, preset
from lrjax.methods.coconut.forward import coconut_forward
from lrjax.sft import build_batch, make_train_step
from tests.test_sft_sequences import LAT, P3, TOK

CFG = preset("tiny")
PARAMS = init(CFG, jax.random.PRNGKey(0))
# Different question lengths (<bot> at columns 2, 5, 3) and step counts (3, 3, 1).
PROBLEMS = [P3, Problem("qqqq", ("a b", "c", "d"), "dd"), Problem("qq", ("a",), "b")]
_jit_forward = jax.jit(coconut_forward, static_argnums=0)


@jax.jit
def _prefix_forward(params, x, length):
  """forward over the first `length` embeddings of x [1, T, H] (the rest masked out)."""
  t = x.shape[1]
  mask = (jnp.arange(t) < length)[None]  # 1 T
  return forward(CFG, params, x, jnp.arange(t)[None], mask)


def reference_logits(params, batch, row, stop_chain=False):
  """Coconut by hand: run `forward` on the embeddings so far, append the last hidden.

  The growing sequence lives in a fixed [1, T, H] buffer whose tail is masked
  out (causal attention: the tail never affects the prefix), so this compiles once.
  """
  length = int(batch.mask[row].sum())
  bot, n = int(batch.bot_pos[row]), int(batch.n_latents[row])
  x = embed(CFG, params, jnp.asarray(batch.ids[row:row + 1]))  # 1 T H: tokens, latents later
  for t in range(bot + 1, bot + 1 + n):  # x[:, :t] is the sequence so far
    h = _prefix_forward(params, x, t).hidden[:, t - 1]  # 1 H: the last hidden state
    x = x.at[:, t].set(jax.lax.stop_gradient(h) if stop_chain else h)  # append it
  return _prefix_forward(params, x, length).logits[0, :length]


def reference_loss(params, batch, stop_chain=False):
  total, count = 0.0, 0.0
  for row in range(batch.ids.shape[0]):
    length = int(batch.mask[row].sum())
    logits = reference_logits(params, batch, row, stop_chain)
    m = jnp.asarray(batch.loss_mask[row, :length])
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(batch.labels[row, :length])[:, None], -1)[:, 0]
    total, count = total + (nll * m).sum(), count + m.sum()
  return total / count


def _batch(stage, c=1, problems=PROBLEMS):
  return build_batch(problems, TOK, "coconut", stage=stage, c=c, max_len=24, latent_ids=LAT)


# The gradient program under test is the real train step with plain SGD:
# new = params - LR * grad, so grad = (params - new) / LR. It is compiled once
# (for the 2-row stage-3 batch) and shared by the gradient, finite-difference
# and loss-decrease tests (compiles dominate this file's runtime).
LR = 0.05
SGD = optax.sgd(LR)
STEP = make_train_step(CFG, SGD, "coconut", max_traces=1)


def _loss_and_grad(params, batch):
  new, _, metrics = STEP(jax.tree.map(jnp.copy, params), SGD.init(params), batch)
  return metrics["loss"], jax.tree.map(lambda a, b: (a - b) / LR, params, new)


@pytest.mark.parametrize("stage, c", [(0, 1), (1, 1), (3, 1), (1, 3)])
def test_scan_matches_explicit_loop_mixed_bot_positions(stage, c):
  batch = _batch(stage, c)
  assert len(set(batch.bot_pos.tolist())) == 3  # <bot> at three different columns
  assert batch.n_latents.tolist() == [min(stage, 3) * c, min(stage, 3) * c, min(stage, 1) * c]
  hidden, logits = _jit_forward(CFG, PARAMS, batch)
  chex.assert_shape(logits, (3, 24, CFG.vocab_size))
  chex.assert_shape(hidden, (3, 24, CFG.hidden_size))
  assert logits.dtype == jnp.float32
  for row in range(3):
    length = int(batch.mask[row].sum())
    ref = reference_logits(PARAMS, batch, row)
    np.testing.assert_allclose(logits[row, :length], ref, atol=1e-5, rtol=0)
    if stage > 0:  # the thoughts matter: the token-only forward differs
      tok = embed(CFG, PARAMS, jnp.asarray(batch.ids[row:row + 1]))
      plain = _prefix_forward(PARAMS, tok, length).logits[0, :length]
      assert float(jnp.abs(plain - ref).max()) > 1e-3


def test_gradients_flow_through_the_chain():
  batch = _batch(3, problems=PROBLEMS[::2])  # <bot> at 2 and 3; 3 and 1 latents
  value, grads = _loss_and_grad(PARAMS, batch)
  ref_value, ref_grads = jax.value_and_grad(reference_loss)(PARAMS, batch)
  cut_grads = jax.grad(reference_loss)(PARAMS, batch, stop_chain=True)
  np.testing.assert_allclose(value, ref_value, atol=1e-5)
  chex.assert_trees_all_close(grads, ref_grads, atol=1e-5, rtol=1e-4)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves)
  assert max(float(jnp.abs(g).max()) for g in leaves) > 1e-3  # nonzero
  # Cutting the chain (stop_gradient on each fed-back hidden state) changes the
  # gradient well beyond the tolerance above: ours carries the chain's part.
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(leaves, jax.tree.leaves(cut_grads)))
  assert diff > 1e-3


def test_finite_difference_along_a_direction():
  batch = _batch(3, problems=PROBLEMS[::2])
  flat, unravel = ravel_pytree(PARAMS)
  _, grads = _loss_and_grad(PARAMS, batch)
  direction = jax.random.normal(jax.random.PRNGKey(1), flat.shape)  # P
  eps = 1e-3
  loss_at = lambda s: _loss_and_grad(unravel(flat + s * eps * direction), batch)[0]
  fd = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
  analytic = jnp.vdot(ravel_pytree(grads)[0], direction)
  np.testing.assert_allclose(fd, analytic, rtol=2e-2)


def test_coconut_train_step_reduces_loss():
  batch = _batch(3, problems=PROBLEMS[::2])
  params, opt_state = jax.tree.map(jnp.copy, PARAMS), SGD.init(PARAMS)
  losses = []
  for _ in range(10):
    params, opt_state, metrics = STEP(params, opt_state, batch)
    losses.append(float(metrics["loss"]))
  assert max(losses[-3:]) < 0.6 * losses[0], losses
