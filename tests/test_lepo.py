"""LEPO's `gumbel_soft` rule: replay = rollout, the record rebuilds the next input,
the processing order, greedy determinism, the soft cross-entropy, the objective
through the learner, and the config rows.

Tolerances: replayed vs rollout logits max |Δ| <= 1e-4 in float32 (measured
~1e-5, as tests/test_replay.py); the recorded mixture Σ_k z_k E[ids_k] vs the
rollout's next input and a dense float64 z^T E <= 1e-6.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lepo as lepo_config
from lrjax.config_utils import ConfigError
from lrjax.latent import ANSWER, DONE, LATENT, RuleContext
from lrjax.methods import lepo
from lrjax.model import preset
from lrjax.phases import PHASES
from lrjax.rl import learner
from lrjax.rollout import Sampling, pad_prompts, token_logp
from lrjax.sampling import process_logits
from lrjax.rollout.trajectory import Trajectory
from lrjax.validate import validate_config
from tests.test_replay import (BUCKET, CFG, EOS, FAST, N, PROMPTS, fast_jit, full_params,
                               replay_fast, rollout_fast)

L, K = 6, 8
RULE = {"tau": 0.3, "latent_len": L, "top_k": K, "top_p": 0.95}
SAMPLED = RuleContext(CFG, "gumbel_soft", RULE, sampling=Sampling(temperature=1.0), eos_id=EOS,
                      max_new=N, return_logits=True)
GREEDY = SAMPLED.replace(sampling=Sampling(temperature=1.0, greedy=True))
KEY = 3  # with this key row 1 ends with eos inside its latent positions (asserted below)
STEP = fast_jit(lepo.step)


@pytest.fixture(scope="module")
def setup():
  ids, mask = pad_prompts(PROMPTS, BUCKET)
  params = full_params()
  traj = rollout_fast(SAMPLED, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(KEY),
                      None)
  return params, jnp.asarray(ids), jnp.asarray(mask), traj


def test_replay_matches_rollout(setup):
  params, _, _, traj = setup
  _, logits = replay_fast(SAMPLED, params, traj, None)
  span, ids = np.asarray(traj.span), np.asarray(traj.ids)
  live = span != DONE
  diff = np.abs(np.asarray(logits) - np.asarray(traj.logits))[live]
  print(f"gumbel_soft: max |replay - rollout| logit diff = {diff.max():.2e}")
  assert diff.max() <= 1e-4
  # the first L live positions are latent (not sampled, no stored log-prob), then text
  latent = span == LATENT
  np.testing.assert_array_equal(latent, live & (np.arange(N) < L)[None])
  np.testing.assert_array_equal(np.asarray(traj.sampled), live & ~latent)
  np.testing.assert_array_equal(np.asarray(traj.logp)[latent], 0.0)
  assert (span == ANSWER).any()
  sampled = np.asarray(traj.sampled)
  lp = np.asarray(token_logp(logits, traj.ids, 1.0))
  np.testing.assert_allclose(lp[sampled], np.asarray(traj.logp)[sampled], atol=1e-4)
  # a row ended with eos inside its latent positions: eos ends a row in any span
  lengths = np.asarray(traj.lengths)
  ended_latent = [b for b in range(len(lengths)) if not traj.truncated[b] and lengths[b] <= L]
  assert ended_latent
  for b in ended_latent:
    assert ids[b, lengths[b] - 1] == EOS and span[b, lengths[b] - 1] == LATENT
  # the shown token is argmax l_t; the inputs are real mixtures (not one-hot)
  np.testing.assert_array_equal(ids[latent], np.asarray(traj.logits).argmax(-1)[latent])
  z = np.asarray(traj.records["z"])
  np.testing.assert_allclose(z.sum(-1)[latent], 1.0, atol=1e-6)
  np.testing.assert_array_equal(z[~latent], 0.0)
  assert z.max(-1)[latent].min() < 0.99
  top = float(lepo.metrics(SAMPLED, params, traj)["latent_top_weight"])
  np.testing.assert_allclose(top, z.max(-1)[latent].mean(), rtol=1e-6)


def test_processing_order_hand_example():
  """l = [4, 2.5, 2, 1, 0, 0, 0, 0], T = 2, top-k 3, top-p 0.7.

  T first: s = [2, 1.25, 1, .5, 0 ...]; top-3 renormalised p = [.5434, .2567, .1999];
  mass before each = [0, .5434, .8001] -> top-p keeps {0, 1}.
  (Top-p before top-k, on the full T-scaled distribution, would keep {0, 1, 2};
  truncation on the raw logits, T after, would keep {0} (p_0 = .736).)
  Greedy: z = softmax(s/τ) = softmax([4, 2.5]) with τ = 0.5; with E = I the next
  input is z itself, exactly 0 outside {0, 1}.
  """
  v = 8
  ctx = RuleContext(preset("tiny", vocab_size=v, hidden_size=v), "gumbel_soft",
                    {"tau": 0.5, "latent_len": 2, "top_k": 3, "top_p": 0.7},
                    sampling=Sampling(temperature=2.0, greedy=True), max_new=4)
  logits = jnp.asarray([[4.0, 2.5, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
  params = {"model": {"embed": {"embedding": jnp.eye(v)}}, "rule": {}, "heads": {}}
  out = STEP(ctx, params, logits, None, jax.random.key(0),
                                             lepo.init_state(ctx, 1))
  z0 = 1.0 / (1.0 + math.exp(-1.5))
  np.testing.assert_allclose(np.asarray(out.next_embed[0]), [z0, 1 - z0, 0, 0, 0, 0, 0, 0],
                             rtol=1e-6, atol=0)
  np.testing.assert_array_equal(np.asarray(out.record["ids"][0]), [0, 1, 2])
  np.testing.assert_allclose(np.asarray(out.record["z"][0]), [z0, 1 - z0, 0.0], rtol=1e-6, atol=0)
  assert int(out.token[0]) == 0 and int(out.span[0]) == LATENT and not bool(out.sampled[0])
  ids, s = lepo.candidates(logits, 2.0, 3, 0.7)
  np.testing.assert_array_equal(np.asarray(ids[0]), [0, 1, 2])
  np.testing.assert_array_equal(np.asarray(s[0]), [2.0, 1.25, -np.inf])
  # the shared sampler's processing over the whole vocabulary agrees
  np.testing.assert_array_equal(np.asarray(process_logits(logits, 2.0, 3, 0.7)[0]),
                                [2.0, 1.25] + [-np.inf] * 6)
  # with noise g: z = softmax((s + g) / τ) over the kept set; the cut entry stays 0
  z = lepo.mixture(s, 0.5, jnp.asarray([[0.3, -0.2, 5.0]]))
  g0 = 1.0 / (1.0 + math.exp(-(2.3 - 1.05) / 0.5))
  np.testing.assert_allclose(np.asarray(z[0]), [g0, 1 - g0, 0.0], rtol=1e-6, atol=0)


def test_top_k_ids_ties_and_leading_axes():
  """k ids per row, ties at the k-th value broken towards lower ids, in id order;
  the same set as lax.top_k (which breaks ties the same way)."""
  x = jnp.asarray([[[3.0, 1.0, 2.0, 2.0, 2.0, 0.0]], [[2.0, 2.0, 5.0, 5.0, 4.0, 2.0]]])  # 2 1 6
  ids = lepo.top_k_ids(x, 3)
  assert ids.shape == (2, 1, 3) and ids.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(ids), [[[0, 2, 3]], [[2, 3, 4]]])
  np.testing.assert_array_equal(np.asarray(lepo.top_k_ids(x, 4)), [[[0, 2, 3, 4]], [[0, 2, 3, 4]]])
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.integers(0, 10, (16, 40)), jnp.float32)  # many ties
  for k in (1, 5, 12, 40):
    np.testing.assert_array_equal(np.sort(np.asarray(lepo.top_k_ids(y, k)), -1),
                                  np.sort(np.asarray(jax.lax.top_k(y, k)[1]), -1))


def test_record_reproduces_next_input():
  """Random logits, top-p cutting inside the top-k: the record holds every token
  with z > 0, z sums to 1, and Σ_k z_k E[ids_k] is the rollout's next input (and a
  dense float64 z^T E); the replay rebuilds it from the record."""
  b, v, h = 6, CFG.vocab_size, CFG.hidden_size
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (b, v)), jnp.float32)
  emb = jnp.asarray(rng.normal(0, 1, (v, h)), jnp.float32)
  params = {"model": {"embed": {"embedding": emb}}, "rule": {}, "heads": {}}
  ctx = RuleContext(CFG, "gumbel_soft", {**RULE, "top_p": 0.9}, max_new=3)
  out = STEP(ctx, params, logits, None, jax.random.key(1),
                                             lepo.init_state(ctx, b))
  ids, z = np.asarray(out.record["ids"]), np.asarray(out.record["z"], np.float64)
  kept = np.isfinite(np.asarray(process_logits(logits, 1.0, K, 0.9)))  # the sampler's processing
  assert (kept.sum(-1) < K).any()  # top-p cut inside the top-k somewhere
  dense = np.zeros((b, v))
  np.add.at(dense, (np.arange(b)[:, None], ids), z)
  np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(dense[~kept], 0.0)  # z is exactly 0 outside the kept set
  assert (dense[kept] > 0).all()  # and the record holds every kept token
  np.testing.assert_allclose(np.asarray(out.next_embed), dense @ np.asarray(emb, np.float64),
                             atol=1e-6)
  traj = Trajectory(
      prompt_ids=jnp.zeros((b, 1), jnp.int32), prompt_mask=jnp.ones((b, 1), jnp.int32),
      ids=out.token[:, None], span=out.span[:, None], sampled=out.sampled[:, None],
      logp=jnp.zeros((b, 1)), records={k: x[:, None] for k, x in out.record.items()},
      lengths=jnp.ones((b,), jnp.int32), truncated=jnp.ones((b,), bool))
  rebuilt = fast_jit(lepo.replay_inputs)(ctx, params, traj)[:, 0]
  np.testing.assert_allclose(np.asarray(rebuilt), np.asarray(out.next_embed), atol=1e-6)
  # past L: ordinary sampling, the token's embedding, an empty record
  late = STEP(ctx, params, logits, None, jax.random.key(1),
                                              {"t": jnp.full((b,), L, jnp.int32)})
  np.testing.assert_array_equal(np.asarray(late.record["z"]), 0.0)
  np.testing.assert_array_equal(np.asarray(late.next_embed), np.asarray(emb)[late.token])
  assert bool(late.sampled.all()) and (np.asarray(late.span) == ANSWER).all()
  assert kept[np.arange(b), np.asarray(late.token)].all()  # drawn from the kept set


def test_greedy_evaluation_is_deterministic(setup):
  params, ids, mask, sampled = setup
  a = rollout_fast(GREEDY, params, ids, mask, jax.random.key(0), None)
  b = rollout_fast(GREEDY, params, ids, mask, jax.random.key(1), None)
  for x, y in [(a.ids, b.ids), (a.span, b.span), (a.records["z"], b.records["z"]),
               (a.records["ids"], b.records["ids"])]:
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # g = 0: z = softmax(s / τ) of the rollout's own logits
  latent = np.asarray(a.span) == LATENT
  cand, s = lepo.candidates(a.logits, 1.0, K, 0.95)
  np.testing.assert_array_equal(np.asarray(a.records["ids"])[latent], np.asarray(cand)[latent])
  np.testing.assert_allclose(np.asarray(a.records["z"])[latent],
                             np.asarray(lepo.mixture(s, RULE["tau"]))[latent], atol=1e-6)
  # sampled rollouts keep the noise: another key, other mixtures
  other = rollout_fast(SAMPLED, params, ids, mask, jax.random.key(KEY + 1), None)
  z1, z2 = np.asarray(sampled.records["z"]), np.asarray(other.records["z"])
  assert np.abs(z1[:, 0] - z2[:, 0]).max() > 1e-3


def test_soft_cross_entropy_value_and_gradient():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (2, 3, 7)).astype(np.float32)
  ids = rng.integers(0, 7, (2, 3, 4)).astype(np.int32)
  ids[0, 0] = [5, 5, 1, 0]  # a repeated id adds up
  w = rng.random((2, 3, 4)).astype(np.float32)
  w[1, 2, 1:] = 0.0
  cot = rng.normal(0, 1, (2, 3)).astype(np.float32)

  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # B N V
  want = -(w * np.take_along_axis(logp, ids, -1)).sum(-1)
  onehot = np.zeros((2, 3, 7))
  np.add.at(onehot, (np.arange(2)[:, None, None], np.arange(3)[None, :, None], ids), w)
  p = np.exp(logp)
  want_grad = cot[..., None] * (w.sum(-1, keepdims=True) * p - onehot)  # d/dl of Σ cot·CE

  got = lepo.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(w))
  assert got.shape == (2, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda l: jnp.sum(cot * lepo.soft_cross_entropy(l, ids, w)))(
      jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)


def test_objective_through_the_learner(setup):
  """Loss = mean_b (1/|y_b|) [Σ_latent A_b CE + Σ_text (−A_b ρ + β KL_k3)], KL on text only."""
  params, _, _, traj = setup
  adv = jnp.asarray([1.0, -0.5, 2.0, -1.5])
  masks = learner.loss_masks(SAMPLED, traj)
  latent = np.asarray(traj.span) == LATENT
  np.testing.assert_array_equal(np.asarray(masks.direct), latent)
  np.testing.assert_array_equal(np.asarray(masks.ratio), np.asarray(traj.sampled))
  assert not (np.asarray(masks.ratio) & latent).any()
  ref = jax.tree.map(lambda x: x * 1.05, params)
  spec = learner.LossSpec(loss="ppo_clip", aggregation="seq_mean", beta=0.1)
  loss_fn = jax.jit(learner.policy_loss, static_argnums=(0, 1), compiler_options=FAST)
  loss, _ = loss_fn(SAMPLED, spec, params, ref, traj, adv, None)

  out = [np.asarray(replay_fast(SAMPLED, p, traj, None)[1], np.float64) for p in (params, ref)]
  logp, ref_logp = [x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in out]  # T = 1
  ce = -(np.asarray(traj.records["z"]) * np.take_along_axis(
      logp, np.asarray(traj.records["ids"]), -1)).sum(-1)  # B N
  ids = np.asarray(traj.ids)[..., None]
  new, old = np.take_along_axis(logp, ids, -1)[..., 0], np.asarray(traj.logp)
  r = np.take_along_axis(ref_logp, ids, -1)[..., 0] - new
  a = np.asarray(adv)[:, None]
  ratio = np.exp(new - old)
  pg = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2))
  text = np.asarray(traj.sampled)
  per = np.where(latent, a * ce, 0.0) + np.where(text, pg + 0.1 * (np.exp(r) - r - 1), 0.0)
  want = (per.sum(-1) / np.maximum((latent | text).sum(-1), 1)).mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)


def _lepo(arg=None, **fields):
  c = lepo_config.get_config(arg)
  for field, value in fields.items():
    section, leaf = field.split(".")
    c[section][leaf] = value
  return c


@pytest.mark.parametrize("arg", [None, "paper", "prosqa"])
def test_shipped_lepo_configs_pass(arg):
  c = lepo_config.get_config(arg)
  assert validate_config(c, PHASES) == c.mode.split(",")


@pytest.mark.parametrize("field, bad, expect", [
    ("lepo.tau", 0.0, "must be > 0"),
    ("lepo.tau", -0.3, "must be > 0"),
    ("lepo.latent_len", 0, "must be > 0"),
    ("lepo.latent_len", -4, "must be > 0"),
    ("lepo.top_k", 0, "must be > 0"),
    ("lepo.top_p", 0.0, "must be in (0, 1]"),
    ("lepo.top_p", 1.5, "must be in (0, 1]"),
])
def test_config_validation_names_the_field(field, bad, expect):
  with pytest.raises(ConfigError) as e:
    validate_config(_lepo(**{field: bad}), PHASES)
  assert str(e.value) == f"config.{field}={bad!r} {expect}"
