"""Log-probs read in vocabulary chunks (`lrjax.model.vocab`) equal the full-logits ones.

Values and gradients (w.r.t. the hidden states and every parameter) of the
primitive (tied and untied heads), of the three objectives that score ids
(token, LEPO's soft CE, Latent-GRPO's surrogate) through the learner's loss,
KL to a reference included, and of the SFT cross-entropy. Chunks that divide
V (16) and leave a remainder (24); τ = 1 reads a rule's two terms in one pass,
τ != 1 in two. The first argmax across chunks (SFT accuracy) keeps the lowest
id on a tie between chunks. The compiled update's temporaries (XLA's count)
stay below one [B, N, V] float32 tensor with chunks, and exceed it without.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.latent import LATENT, RuleContext, init_rule_params
from lrjax.model import init, lm_logits, preset
from lrjax.model.vocab import chunked, gather_logp, vocab_stats
from lrjax.rl import learner as L
from lrjax.rollout import Sampling
from lrjax.sft import build_batch
from lrjax.sft.step import sft_loss
from tests.e2e_runs import FAST_COMPILER_OPTIONS as FAST
from tests import test_learner as TL
from tests.test_sft_step import PROBLEMS, TOK

SMALL = preset("tiny", hidden_size=32, intermediate_size=64, num_layers=1)  # V = 64


def _close(a, b):
  """float32 agreement of two pytrees (summation order differs, nothing else)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("tied,chunk", [(True, 24), (False, 16)])
def test_gather_logp_values_and_gradients(tied, chunk):
  cfg = SMALL.replace(tie_word_embeddings=tied)
  params = init(cfg, jax.random.key(0))
  ks = jax.random.split(jax.random.key(1), 3)
  hidden = jax.random.normal(ks[0], (3, 5, cfg.hidden_size))  # B N H
  ids = jax.random.randint(ks[1], (3, 5, 4), 0, cfg.vocab_size)  # B N K
  weight = jax.random.normal(ks[2], (3, 5, 4))

  def loss(c):
    return jax.jit(jax.value_and_grad(
        lambda p, h: jnp.sum(weight * gather_logp(c, p, h, ids, 0.7)), argnums=(0, 1)),
        compiler_options=FAST)

  on = cfg.replace(logits_chunk=chunk)
  assert chunked(on) and not chunked(cfg) and not chunked(cfg.replace(logits_chunk=64))
  want = jax.nn.log_softmax(lm_logits(cfg, params, hidden) / 0.7, axis=-1)
  np.testing.assert_allclose(np.asarray(gather_logp(on, params, hidden, ids, 0.7)),
                             np.asarray(jnp.take_along_axis(want, ids, axis=-1)),
                             rtol=2e-5, atol=2e-6)
  _close(loss(on)(params, hidden), loss(cfg)(params, hidden))


def test_argmax_across_chunks_keeps_the_first_tie():
  cfg = SMALL.replace(logits_chunk=24)
  params = init(cfg, jax.random.key(0))
  table = params["embed"]["embedding"].at[40].set(params["embed"]["embedding"][10])
  params = {**params, "embed": {"embedding": table}}  # ids 10 and 40 (other chunk) tie
  hidden = jnp.stack([table[10] * 50.0, table[50] * 50.0, -table[3]])  # R H
  ids = jnp.zeros((3, 1), jnp.int32)
  lse, _, arg = jax.jit(vocab_stats, static_argnums=0, compiler_options=FAST)(
      cfg, params, hidden, ids)
  full = lm_logits(cfg, params, hidden)  # R V
  np.testing.assert_array_equal(np.asarray(arg), np.asarray(jnp.argmax(full, axis=-1)))
  assert int(arg[0]) == 10
  np.testing.assert_allclose(np.asarray(lse), np.asarray(jax.nn.logsumexp(full, -1)), rtol=1e-6)


def _rule_traj(rule: str, k: int = 3):
  """test_learner's hand-built trajectory with the first two positions latent and the
  records `rule` replays (random candidates, weights / noisy scores)."""
  traj = TL.make_traj("token")
  rng = np.random.default_rng(5)
  b, n = traj.ids.shape
  latent = np.zeros((b, n), bool)
  latent[:, :2] = True
  span = np.where(latent, LATENT, np.asarray(traj.span)).astype(np.int8)
  sampled = np.asarray(traj.sampled) & ~latent
  ids = np.where(latent[..., None], rng.integers(3, 50, (b, n, k)), 0).astype(np.int32)
  if rule == "gumbel_soft":
    z = rng.dirichlet(np.ones(k), (b, n)).astype(np.float32)
    records = {"ids": ids, "z": np.where(latent[..., None], z, 0.0).astype(np.float32)}
  else:
    scores = rng.normal(-2.0, 1.0, (b, n, k)).astype(np.float32)
    records = {"ids": ids, "scores": np.where(latent[..., None], scores, 0.0),
               "soft": latent.copy()}
  return traj.replace(span=jnp.asarray(span), sampled=jnp.asarray(sampled),
                      records=jax.tree.map(jnp.asarray, records))


_LOSS = jax.jit(jax.value_and_grad(L.policy_loss, argnums=2, has_aux=True),
                static_argnums=(0, 1), compiler_options=FAST)


@pytest.mark.parametrize("rule,temperature", [("token", 0.7), ("gumbel_soft", 1.0),
                                              ("topk_gumbel", 1.0), ("topk_gumbel", 0.7)])
def test_objectives_chunked_equal_full(rule, temperature):
  """Loss (PPO clip, β = 0.1 KL to a reference) and its gradient, chunk 24 vs full logits."""
  cfg = TL.CFG
  rule_cfg = {"gumbel_soft": {"top_k": 3, "latent_len": 2}, "topk_gumbel": {"top_k": 3}}
  ctx = RuleContext(cfg, rule, rule_cfg.get(rule, {}), sampling=Sampling(temperature),
                    eos_id=TL.EOS, pad_id=0, max_new=TL.N)
  traj = TL.make_traj("token") if rule == "token" else _rule_traj(rule)
  params = {"model": TL.random_params(), "heads": {},
            "rule": init_rule_params(ctx, jax.random.key(3))}
  ref = jax.tree.map(lambda x: x * 1.05, params)
  adv = jnp.linspace(-1.0, 1.0, traj.ids.shape[0])
  spec = L.LossSpec(beta=0.1, aggregation="seq_mean")
  on = ctx.replace(model_cfg=cfg.replace(logits_chunk=24))
  (loss, m), grads = _LOSS(ctx, spec, params, ref, traj, adv, None)
  (loss_c, m_c), grads_c = _LOSS(on, spec, params, ref, traj, adv, None)
  assert float(m["kl_mean"]) != 0.0 and np.isfinite(float(loss))
  _close((loss_c, m_c["kl_mean"], grads_c), (loss, m["kl_mean"], grads))


def test_sft_cross_entropy_chunked_equals_full():
  cfg = preset("tiny", num_layers=1)
  params = init(cfg, jax.random.key(0))
  batch = build_batch(PROBLEMS, TOK, "cot", max_len=64, pad_to_multiple=8)
  fn = jax.jit(jax.value_and_grad(sft_loss, argnums=1, has_aux=True), static_argnums=(0, 3),
               compiler_options=FAST)
  (loss, aux), grads = fn(cfg, params, batch, "cot")
  (loss_c, aux_c), grads_c = fn(cfg.replace(logits_chunk=24), params, batch, "cot")
  assert float(aux["num_tokens"]) > 0
  _close((loss_c, grads_c), (loss, grads))
  assert float(aux_c["accuracy"]) == float(aux["accuracy"])


def test_update_never_holds_a_full_float32_logits_tensor():
  """XLA's temporaries of the compiled RL update (vocab 32768): with chunks of 1024 they stay
  below one [B, N, V] float32 tensor; with full logits they exceed it."""
  import optax
  cfg = SMALL.replace(vocab_size=32768)
  traj = TL.make_traj("token")
  b, n = traj.ids.shape
  full_logits = b * n * cfg.vocab_size * 4
  temps = {}
  for chunk in (0, 1024):
    ctx = RuleContext(cfg.replace(logits_chunk=chunk), "token", sampling=Sampling(0.7),
                      eos_id=TL.EOS, pad_id=0, max_new=n)
    params = {"model": jax.eval_shape(lambda c=ctx: init(c.model_cfg, jax.random.key(0))),
              "rule": {}, "heads": {}}
    sgd = optax.sgd(1.0)
    update = L.make_update(ctx, L.LossSpec(), sgd)
    compiled = update.lower(params, jax.eval_shape(sgd.init, params), None, traj,
                            jnp.zeros((b,)), None).compile()
    temps[chunk] = compiled.memory_analysis().temp_size_in_bytes
  assert temps[1024] < full_logits < temps[0], (temps, full_logits)


@pytest.mark.parametrize("chunk", [0, 24])
def test_suppressed_ids_have_no_mass_in_every_path(chunk):
  """A suppressed id (a reserved pad) gets probability 0 in the head, the chunked scan and
  the decode step; the other ids renormalise exactly as a softmax without it."""
  cfg = SMALL.replace(logits_chunk=chunk, suppress_ids=(5, 40))
  params = init(cfg, jax.random.key(0))
  h = jax.random.normal(jax.random.key(1), (3, cfg.hidden_size))
  ids = jnp.tile(jnp.arange(cfg.vocab_size)[None], (3, 1))
  logp = np.asarray(gather_logp(cfg, params, h, ids))  # 3 V
  raw = np.asarray(lm_logits(SMALL, params, h), np.float64)  # unsuppressed reference
  keep = np.ones(cfg.vocab_size, bool)
  keep[[5, 40]] = False
  ref = raw[:, keep] - np.log(np.exp(raw[:, keep]).sum(-1, keepdims=True))
  assert np.all(logp[:, ~keep] < -1e8)
  np.testing.assert_allclose(logp[:, keep], ref, atol=1e-5)
  from lrjax.model import decode
  from lrjax.model.api import embed
  dp = decode.prepare(cfg, params)
  x = embed(cfg, params, jnp.asarray([[3, 7]]))
  _, logits, _ = decode.prefill(cfg, dp, x, jnp.asarray([[0, 1]]), jnp.ones((1, 2), bool), 4)
  assert np.all(np.asarray(logits)[:, [5, 40]] < -1e8)
