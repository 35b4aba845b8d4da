"""HRPO's gate (Yue et al., arXiv 2505.18454) against a NumPy re-derivation, and the
think span of the `hybrid` rule step on forced tokens with the real '####' tables."""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
from lrjax.latent import ANSWER, LATENT, RuleContext
from lrjax.methods import hrpo as hybrid
from lrjax.model import preset
from lrjax.rollout import Sampling
from tests.e2e_runs import FAST_COMPILER_OPTIONS as FAST

H, C = 16, 8.0


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_gate(p, e, c=C):
  r = sigmoid(e @ p["gate_r"]["kernel"] + p["gate_r"]["bias"])
  i = sigmoid(e @ p["gate_i"]["kernel"] + p["gate_i"]["bias"])
  a = np.exp(-c * np.log1p(np.exp(-p["lambda"])) * r)  # softplus(−Λ) = log(1 + e^−Λ)
  return a, i


def np_mix(p, e, soft, c=C):
  a, i = np_gate(p, e, c)
  return a * e + np.sqrt(1 - a * a + 1e-8) * (i * soft)


def test_lambda_init_gives_a_equal_u_to_the_r():
  key = jax.random.key(0)
  lam = np.asarray(hybrid.lambda_init(key, 512, 0.95, C), np.float64)
  chex.assert_shape(lam, (512,))
  u = np.asarray(jax.random.uniform(key, (512,), jnp.float32, 0.95, 0.999), np.float64)
  assert u.min() >= 0.95 and u.max() <= 0.999 and u.std() > 0.01
  np.testing.assert_allclose(lam, -np.log(u ** (-1 / C) - 1), rtol=1e-4)
  for r in (0.0, 0.3, 1.0):
    a = np.exp(-C * np.log1p(np.exp(-lam)) * r)
    np.testing.assert_allclose(a, u ** r, rtol=1e-4)


def test_init_params_shapes_and_statistics():
  cfg = preset("tiny")
  p = hybrid.init_params(cfg, {"r_min": 0.99}, jax.random.key(1))
  h = cfg.hidden_size
  chex.assert_shape([p["gate_r"]["kernel"], p["gate_i"]["kernel"]], (h, h))
  chex.assert_shape([p["gate_r"]["bias"], p["gate_i"]["bias"], p["lambda"]], (h,))
  chex.assert_trees_all_equal_dtypes(p, jax.tree.map(lambda x: x.astype(jnp.float32), p))
  assert abs(float(p["gate_r"]["kernel"].std()) - 0.02) < 0.002
  np.testing.assert_array_equal(p["gate_i"]["bias"], 0.0)
  # zero input: r = σ(0) = 1/2, so a = u^(1/2) with u in [0.99, 0.999]: mostly the token
  a, i = hybrid.gate(p, jnp.zeros((h,)))
  assert 0.99 ** 0.5 - 1e-6 <= float(a.min()) and float(a.max()) <= 0.999 ** 0.5 + 1e-6
  np.testing.assert_allclose(i, 0.5)


def test_gate_and_mix_match_numpy():
  rng = np.random.default_rng(0)
  p = {"gate_r": {"kernel": rng.normal(0, 0.5, (H, H)), "bias": rng.normal(0, 0.1, H)},
       "gate_i": {"kernel": rng.normal(0, 0.5, (H, H)), "bias": rng.normal(0, 0.1, H)},
       "lambda": rng.normal(2.0, 1.0, H)}
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), p)
  e, soft = (rng.normal(size=(3, 5, H)).astype(np.float32) for _ in range(2))
  think = rng.random((3, 5)) < 0.5
  a, i = hybrid.gate(p, jnp.asarray(e), C)
  a_np, i_np = np_gate(jax.tree.map(lambda x: x.astype(np.float64), p), e.astype(np.float64))
  np.testing.assert_allclose(a, a_np, rtol=1e-5)
  np.testing.assert_allclose(i, i_np, rtol=1e-5)
  got = np.asarray(hybrid.mix(p, jnp.asarray(e), jnp.asarray(soft), jnp.asarray(think), C))
  want = np.where(think[..., None], np_mix(p, e.astype(np.float64), soft), e)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  probs = rng.dirichlet(np.ones(7), size=3).astype(np.float32)
  table = rng.normal(size=(7, H)).astype(np.float32)
  np.testing.assert_allclose(hybrid.soft_embedding(jnp.asarray(probs), jnp.asarray(table)),
                             probs @ table / np.linalg.norm(probs, axis=-1, keepdims=True),
                             rtol=1e-5)


def test_hybrid_ratio_matches_numpy():
  rng = np.random.default_rng(1)
  cfg = preset("tiny")
  v, h = cfg.vocab_size, cfg.hidden_size
  p = hybrid.init_params(cfg, {"r_min": 0.5}, jax.random.key(2))
  params = {"model": {"embed": {"embedding": jnp.asarray(rng.normal(size=(v, h)), jnp.float32)}},
            "rule": p}
  ids = rng.integers(0, v, (2, 6))
  think = rng.random((2, 6)) < 0.5
  traj = types.SimpleNamespace(ids=jnp.asarray(ids), records={"think": jnp.asarray(think)})
  ctx = RuleContext(cfg, "hybrid")
  a, _ = np_gate(jax.tree.map(lambda x: np.asarray(x, np.float64), p),
                 np.asarray(params["model"]["embed"]["embedding"], np.float64)[ids])
  want = np.sqrt(1 - a ** 2 + 1e-8).mean(-1)[think].mean()
  np.testing.assert_allclose(float(hybrid.hybrid_ratio(ctx, params, traj)), want, rtol=1e-5)


def test_step_think_span_ends_after_the_token_completing_delimiter():
  """Forced tokens '1##2#', id 62, '###5#': think (the gate on x_{t+1}) turns off at t = 8.

  The tokenizer has 60 ids: the tables are extended to the model's 64 rows with
  no-text tokens (id 62 keeps the '#' run), so '#' <62> '###' completes '####'.
  """
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  cfg = preset("tiny")
  aux = hybrid.delimiter_aux(tok)  # 60 rows < vocab 64
  ctx = RuleContext(cfg, "hybrid", {"r_min": 0.5}, sampling=Sampling(temperature=0.7))
  rng = np.random.default_rng(3)
  emb = rng.normal(0, 0.1, (cfg.vocab_size, cfg.hidden_size)).astype(np.float32)
  params = {"model": {"embed": {"embedding": jnp.asarray(emb)}},
            "rule": hybrid.init_params(cfg, ctx.rule_cfg, jax.random.key(4))}
  seq = [tok.convert_tokens_to_ids(ch) for ch in "1##2#"] + [62]
  seq += [tok.convert_tokens_to_ids(ch) for ch in "###5#"]
  step = jax.jit(hybrid.step, static_argnums=0, compiler_options=FAST)
  state = hybrid.init_state(ctx, 1)
  pnp = jax.tree.map(lambda x: np.asarray(x, np.float64), params["rule"])
  for t, y in enumerate(seq):
    logits = rng.normal(0, 1, (1, cfg.vocab_size)).astype(np.float32)
    logits[0, y] = 60.0  # forced: the sample is y
    out = step(ctx, params, jnp.asarray(logits), jnp.zeros((1, cfg.hidden_size)),
               jax.random.key(t), state, aux)
    state = out.state
    assert int(out.token[0]) == y
    completed_by_now = t >= 8
    assert bool(out.record["think"][0]) == (not completed_by_now), t
    assert int(out.span[0]) == (LATENT if t <= 8 else ANSWER), t
    x = np.asarray(out.next_embed[0], np.float64)
    if completed_by_now:
      np.testing.assert_array_equal(x, emb[y])  # plain embedding from here on
    else:  # ĥ from softmax(top-50(l / τ)), then the gate
      z = logits[0].astype(np.float64) / 0.7
      z = np.where(z >= np.sort(z)[-50], z, -np.inf)
      prob = np.exp(z - z.max())
      prob /= prob.sum()
      soft = prob @ emb / np.linalg.norm(prob)
      np.testing.assert_allclose(x, np_mix(pnp, emb[y].astype(np.float64), soft), atol=1e-5)
      assert np.abs(x - emb[y]).max() > 1e-3
