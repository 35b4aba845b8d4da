"""Latent-GRPO's `topk_gumbel` rule: replay = rollout, the noise bounds, the nucleus,
the end-of-thinking step, greedy determinism, the Gumbel-density surrogate (value and
both gradient branches against NumPy), the objective through the learner, frozen
embeddings, and the config rows.

Tolerances: replayed vs rollout logits max |Δ| <= 1e-4 in float32 (measured ~1e-5,
as tests/test_replay.py); recorded scores vs log_softmax of the rollout's logits plus
noise, and the recorded mixture vs the next input, <= 1e-5.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent_grpo as latent_grpo_config
from lrjax.config_utils import ConfigError
from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
from lrjax.latent import ANSWER, DONE, LATENT, RuleContext
from lrjax.methods.latent_grpo import rule as lg
from lrjax.model import preset
from lrjax.optim import ParamGroups
from lrjax.phases import PHASES
from lrjax.rl import learner
from lrjax.rollout import Sampling, pad_prompts
from lrjax.rollout.trajectory import Trajectory
from lrjax.validate import validate_config
from tests.e2e_runs import FAST_COMPILER_OPTIONS
from tests.test_replay import (BUCKET, CFG, EOS, N, PROMPTS, fast_jit, full_params, replay_fast,
                               rollout_fast)

K = 4
RULE = {"top_k": K, "top_p": 0.95, "tau": 1.0, "noise_scale": 1.0, "end_token": "#"}
SAMPLED = RuleContext(CFG, "topk_gumbel", RULE, sampling=Sampling(temperature=0.7), eos_id=EOS,
                      max_new=N, return_logits=True)
GREEDY = SAMPLED.replace(sampling=Sampling(temperature=0.7, greedy=True))
KEY = 3
STEP = fast_jit(lg.step)


def _aux(end_id: int) -> dict:
  return {"end_id": jnp.asarray(end_id, jnp.int32)}


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
      -1, keepdims=True)


@pytest.fixture(scope="module")
def setup():
  """A sampled rollout whose end token is a token some row shows mid-response."""
  ids, mask = pad_prompts(PROMPTS, BUCKET)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  params = full_params()
  probe = rollout_fast(SAMPLED, params, ids, mask, jax.random.key(KEY), _aux(-1))
  shown = np.asarray(probe.ids)
  live = np.asarray(probe.span) != DONE
  end = int(next(t for t in shown[:, 2:][live[:, 2:]] if t != EOS))  # shown at t >= 2
  traj = rollout_fast(SAMPLED, params, ids, mask, jax.random.key(KEY), _aux(end))
  return params, ids, mask, end, traj


def test_replay_matches_rollout_and_the_end_step(setup):
  params, _, _, end, traj = setup
  _, logits = replay_fast(SAMPLED, params, traj, _aux(end))
  span, ids = np.asarray(traj.span), np.asarray(traj.ids)
  live = span != DONE
  diff = np.abs(np.asarray(logits) - np.asarray(traj.logits))[live]
  print(f"topk_gumbel: max |replay - rollout| logit diff = {diff.max():.2e}")
  assert diff.max() <= 1e-4
  soft = np.asarray(traj.records["soft"])
  ended = 0
  for b in range(ids.shape[0]):
    hits = np.flatnonzero((ids[b] == end) & live[b])
    first = hits[0] if len(hits) else None
    want = live[b] & (np.arange(N) <= (first if first is not None else N))
    np.testing.assert_array_equal(span[b] == LATENT, want)  # latent up to the end step
    if first is not None and first + 1 < N and live[b, first + 1]:
      ended += 1
      assert span[b, first + 1] == ANSWER and not soft[b, first]  # next input E[end]
      assert (soft[b, :first] == True).all()  # noqa: E712  mixtures before it
  assert ended >= 1  # some row crossed its end step into answer tokens
  latent = span == LATENT
  np.testing.assert_array_equal(np.asarray(traj.sampled), live & ~latent)
  # scores = ℓ + g with 0 <= g <= 4.5 (one-sided, clamped) at the rollout's parameters
  ell = np.take_along_axis(_log_softmax(traj.logits), np.asarray(traj.records["ids"]), -1)
  g = np.asarray(traj.records["scores"], np.float64) - ell  # B N K
  assert g[latent].min() >= -1e-5 and g[latent].max() <= 4.5 + 1e-5
  assert g[latent].max() > 0.5  # the noise is on
  # the shown token is the top noisy score
  top = np.take_along_axis(np.asarray(traj.records["ids"]),
                           np.asarray(traj.records["scores"]).argmax(-1)[..., None], -1)[..., 0]
  np.testing.assert_array_equal(ids[latent], top[latent])
  np.testing.assert_array_equal(np.asarray(traj.records["scores"])[~latent], 0.0)


def test_noise_is_one_sided_and_clamped():
  g = np.asarray(lg.one_sided_noise(jax.random.key(0), (200_000,), 0.5))
  assert g.min() == 0.0 and g.max() == pytest.approx(4.5 * 0.5)  # both clamps are hit
  assert ((g >= 0) & (g <= 2.25)).all()
  # between the clamps it is a shifted, scaled Gumbel: P(G <= 0) = exp(-1)
  np.testing.assert_allclose(np.mean(g / 0.5 - 1.5 <= 0.0), np.exp(-1.0), atol=5e-3)


def test_nucleus_keeps_at_least_k_hand_example():
  """p = [.5, .3, .1, .05, .03, .02]: top-p 0.75 -> {0, 1} (mass before 2 is .8), but
  at least K: K 3 -> {0, 1, 2}; top-p .9 -> {0, 1, 2} (mass before 3 is .9, not < .9)."""
  logp = jnp.log(jnp.asarray([[0.5, 0.3, 0.1, 0.05, 0.03, 0.02]]))
  keep = lambda p, k: np.asarray(lg.nucleus(logp, p, k))[0].tolist()
  assert keep(0.75, 1) == [True, True, False, False, False, False]
  assert keep(0.75, 3) == [True, True, True, False, False, False]
  assert keep(0.9, 2) == [True, True, True, False, False, False]
  assert keep(1.0, 1) == [True] * 6
  # the noisy top-K draws only from the nucleus, even under large noise outside it
  noise = jnp.asarray([[0.0, 0.0, 0.0, 9.0, 9.0, 9.0]])
  ids, y = lg.noisy_top_k(jnp.log(jnp.asarray([[0.5, 0.3, 0.1, 0.05, 0.03, 0.02]])), 3, 0.75,
                          noise)
  np.testing.assert_array_equal(np.asarray(ids[0]), [0, 1, 2])
  np.testing.assert_allclose(np.asarray(y[0]), np.log([0.5, 0.3, 0.1]), rtol=1e-6)


@pytest.mark.parametrize("top_p,k", [(0.95, 10), (0.5, 1), (0.999, 3)])
def test_nucleus_matches_a_sorted_numpy_loop(top_p, k):
  """On a 32k vocabulary (a flat row, a peaked row, rows with ties at the cut): the
  sort-free nucleus = the descending cumsum rule in NumPy (float64), ties at the cut kept."""
  rng = np.random.default_rng(7)
  logits = rng.normal(0, 3, (5, 32000)).astype(np.float32)
  logits[1] *= 0.02
  logits[2] = np.round(logits[2])
  logits[3, :7] = 20.0
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  got = np.asarray(lg.nucleus(jnp.asarray(logp), top_p, k))
  for row, keep in zip(logp.astype(np.float64), got):
    desc = np.sort(row)[::-1]
    before = np.cumsum(np.exp(desc)) - np.exp(desc)
    cut = desc[max(int((before < top_p).sum()), k) - 1]
    np.testing.assert_array_equal(keep, row >= cut)
  assert got[1].sum() > 1000 * (top_p > 0.9) and got.sum(-1).min() >= k


def test_record_reproduces_next_input_and_the_end_token():
  """One step on random logits: Σ_k w_k E[v_k] with w = softmax(y/τ) from the record
  is the next input; a row whose shown token is the end token reads E[end] next and
  leaves latent mode; an answer row reads E[y] and records nothing."""
  b, v, h = 6, CFG.vocab_size, CFG.hidden_size
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (b, v)), jnp.float32)
  emb = jnp.asarray(rng.normal(0, 1, (v, h)), jnp.float32)
  params = {"model": {"embed": {"embedding": emb}}, "rule": {}, "heads": {}}
  ctx = RuleContext(CFG, "topk_gumbel", {**RULE, "tau": 0.5}, max_new=3)
  out = STEP(ctx, params, logits, None, jax.random.key(1), lg.init_state(ctx, b), _aux(-1))
  ids, y = np.asarray(out.record["ids"]), np.asarray(out.record["scores"], np.float64)
  w = np.exp(y / 0.5 - (y / 0.5).max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  want = np.einsum("bk,bkh->bh", w, np.asarray(emb, np.float64)[ids])
  np.testing.assert_allclose(np.asarray(out.next_embed), want, atol=1e-5)
  assert (w.max(-1) < 0.999).any()  # real mixtures
  assert bool(out.state["thinking"].all()) and (np.asarray(out.span) == LATENT).all()
  assert not bool(out.sampled.any())
  # make row 0's shown token the end token
  end = int(out.token[0])
  again = STEP(ctx, params, logits, None, jax.random.key(1), lg.init_state(ctx, b), _aux(end))
  assert int(again.token[0]) == end and int(again.span[0]) == LATENT
  np.testing.assert_array_equal(np.asarray(again.next_embed[0]), np.asarray(emb[end]))
  assert not bool(again.state["thinking"][0]) and not bool(again.record["soft"][0])
  # answer mode: a sampled token, its embedding next, an empty record
  ans = STEP(ctx, params, logits, None, jax.random.key(1), {"thinking": jnp.zeros((b,), bool)},
             _aux(end))
  assert (np.asarray(ans.span) == ANSWER).all() and bool(ans.sampled.all())
  np.testing.assert_array_equal(np.asarray(ans.next_embed), np.asarray(emb)[ans.token])
  np.testing.assert_array_equal(np.asarray(ans.record["scores"]), 0.0)
  # the replay rebuilds all three from the records
  for o in (out, again, ans):
    traj = Trajectory(
        prompt_ids=jnp.zeros((b, 1), jnp.int32), prompt_mask=jnp.ones((b, 1), jnp.int32),
        ids=o.token[:, None], span=o.span[:, None], sampled=o.sampled[:, None],
        logp=jnp.zeros((b, 1)), records={k: x[:, None] for k, x in o.record.items()},
        lengths=jnp.ones((b,), jnp.int32), truncated=jnp.ones((b,), bool))
    rebuilt = fast_jit(lg.replay_inputs)(ctx, params, traj)[:, 0]
    np.testing.assert_allclose(np.asarray(rebuilt), np.asarray(o.next_embed), atol=1e-5)


def test_greedy_evaluation_is_deterministic(setup):
  params, ids, mask, end, sampled = setup
  a = rollout_fast(GREEDY, params, ids, mask, jax.random.key(0), _aux(end))
  b = rollout_fast(GREEDY, params, ids, mask, jax.random.key(1), _aux(end))
  for x, y in [(a.ids, b.ids), (a.span, b.span), (a.records["scores"], b.records["scores"])]:
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # no noise: the recorded scores are the top-K log-probs, the shown token their argmax
  latent = np.asarray(a.span) == LATENT
  ell = _log_softmax(a.logits)
  top = np.sort(ell, -1)[..., ::-1][..., :K]
  np.testing.assert_allclose(np.sort(np.asarray(a.records["scores"]), -1)[..., ::-1][latent],
                             top[latent], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(a.ids)[latent], ell.argmax(-1)[latent])
  # sampled rollouts keep the noise: another key, other scores
  other = rollout_fast(SAMPLED, params, ids, mask, jax.random.key(KEY + 1), _aux(end))
  s1, s2 = np.asarray(sampled.records["scores"]), np.asarray(other.records["scores"])
  assert np.abs(s1[:, 0] - s2[:, 0]).max() > 1e-3


def _np_surrogate(logp, scores, adv):
  g = scores - logp
  value = (-g - np.exp(-g)).mean(-1)
  capped = (adv[..., None] <= 0) & (g < 0)
  grad = np.where(capped, np.exp(g) - 1.0, 1.0 - np.exp(-g)) / g.shape[-1]  # d value / d logp
  return value, grad


def test_gumbel_surrogate_value_and_both_gradient_branches():
  """g' = scores - logp spans both signs (an update has moved logp above the stored
  score for some entries); A has both signs and zero; [B] and [B, N] advantages."""
  rng = np.random.default_rng(0)
  logp = rng.normal(-2.0, 1.0, (3, 4, 5)).astype(np.float32)
  scores = (logp + rng.uniform(-1.5, 3.0, logp.shape)).astype(np.float32)  # g' in [-1.5, 3]
  for adv in (np.asarray([1.0, -0.5, 0.0], np.float32),
              rng.choice([-1.0, 0.0, 2.0], (3, 4)).astype(np.float32)):
    full = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, (3, 4))
    want, want_grad = _np_surrogate(logp.astype(np.float64), scores.astype(np.float64), full)
    capped = (full[..., None] <= 0) & (scores < logp)
    assert capped.any() and ((full[..., None] > 0) & (scores < logp)).any()  # both branches
    got = lg.gumbel_surrogate(jnp.asarray(logp), jnp.asarray(scores), jnp.asarray(adv))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    cot = rng.normal(0, 1, (3, 4)).astype(np.float32)
    grad = jax.grad(lambda lp: jnp.sum(cot * lg.gumbel_surrogate(lp, scores, adv)))(
        jnp.asarray(logp))
    np.testing.assert_allclose(np.asarray(grad), cot[..., None] * want_grad, rtol=1e-5,
                               atol=1e-6)
    # the capped branch's magnitude is at most 1/K
    assert np.abs(want_grad[capped]).max() <= 1.0 / 5 + 1e-7
  # no advantages: the plain gradient everywhere, the same value
  grad = jax.grad(lambda lp: jnp.sum(lg.gumbel_surrogate(lp, scores)))(jnp.asarray(logp))
  np.testing.assert_allclose(np.asarray(grad), (1.0 - np.exp(-(scores - logp))) / 5, rtol=1e-5,
                             atol=1e-6)


def test_objective_through_the_learner(setup):
  """Loss = token-mean over latent and answer positions of the dual-clipped PPO term,
  with latent log p = the surrogate and answer log p = log_softmax(l / T)[y], the old
  terms recomputed (none read from traj.logp)."""
  params, _, _, end, traj = setup
  aux = _aux(end)
  masks = learner.loss_masks(SAMPLED, traj)
  live = np.asarray(traj.span) != DONE
  np.testing.assert_array_equal(np.asarray(masks.ratio), live)
  assert not np.asarray(masks.stored_old).any()
  old = learner.behaviour_logp(SAMPLED, params, traj, aux)
  assert old is not None
  new_params = jax.tree.map(lambda x: x * 1.02, params)
  adv = jnp.asarray([1.0, -0.5, 2.0, -1.5])
  spec = learner.LossSpec(loss="ppo_clip", aggregation="token_mean", dual_clip=3.0)
  loss_fn = jax.jit(learner.policy_loss, static_argnums=(0, 1),
                    compiler_options=FAST_COMPILER_OPTIONS)
  loss, _ = loss_fn(SAMPLED, spec, new_params, None, traj, adv, aux, old)

  def np_terms(p):
    logits = np.asarray(replay_fast(SAMPLED, p, traj, aux)[1], np.float64)
    ell = _log_softmax(logits)
    picked = np.take_along_axis(ell, np.asarray(traj.records["ids"]), -1)
    g = np.asarray(traj.records["scores"], np.float64) - picked
    lat = (-g - np.exp(-g)).mean(-1)
    txt = np.take_along_axis(_log_softmax(logits / 0.7), np.asarray(traj.ids)[..., None],
                             -1)[..., 0]
    return np.where(np.asarray(traj.span) == LATENT, lat, txt)

  o, n = np_terms(params), np_terms(new_params)
  np.testing.assert_allclose(np.asarray(old)[live], o[live], rtol=1e-4, atol=1e-5)
  a = np.asarray(adv)[:, None]
  ratio = np.exp(n - o)
  pg = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2))
  pg = np.where(a < 0, np.minimum(pg, -a * 3.0), pg)
  want = pg[live].mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)


def test_embeddings_and_head_are_frozen_by_the_config(setup):
  """Two mini-batch updates with the config's parameter groups: the embedding table
  (= the tied LM head of the tiny preset) is bit-identical, the layers moved."""
  params, _, _, end, traj = setup
  aux = _aux(end)
  c = latent_grpo_config.get_config()
  groups = ParamGroups(tuple(c.rl.param_groups))
  assert groups.lr(groups.group_of("model/embed/embedding")) is None
  assert groups.lr(groups.group_of("model/lm_head/kernel")) is None
  assert groups.lr(groups.group_of("model/layers/attn/q/kernel")) is not None
  rl = c.rl
  optimizer = learner.make_rl_optimizer(rl, rl.steps)
  spec = learner.LossSpec.from_config(rl)
  update = learner.make_update(SAMPLED, spec, optimizer)
  p = jax.tree.map(jnp.copy, params)
  opt_state = optimizer.init(p)
  old = learner.behaviour_logp(SAMPLED, p, traj, aux)
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
  rows = [np.asarray([0, 1]), np.asarray([2, 3])]
  p, opt_state, m = learner.learn_batch(update, p, opt_state, None, traj, adv, aux, old, rows)
  np.testing.assert_array_equal(np.asarray(p["model"]["embed"]["embedding"]),
                                np.asarray(params["model"]["embed"]["embedding"]))
  moved = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(jnp.abs(x - y).max()), p["model"]["layers"], params["model"]["layers"]))
  assert max(moved) > 0
  assert np.isfinite(float(m["loss"]))


def test_end_token_comes_from_the_tokenizer():
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  aux = lg.make_aux(tok, {"end_token": "####"})
  assert int(aux["end_id"]) == tok.encode("#", add_special_tokens=False)[0]


def _latent_grpo(arg=None, **fields):
  c = latent_grpo_config.get_config(arg)
  for field, value in fields.items():
    section, leaf = field.split(".")
    c[section][leaf] = value
  return c


@pytest.mark.parametrize("arg", [None, "paper", "prosqa"])
def test_shipped_latent_grpo_configs_pass(arg):
  c = latent_grpo_config.get_config(arg)
  assert validate_config(c, PHASES) == c.mode.split(",")


@pytest.mark.parametrize("field, bad, expect", [
    ("latent_grpo.top_k", 0, "must be > 0"),
    ("latent_grpo.top_p", 0.0, "must be in (0, 1]"),
    ("latent_grpo.tau", 0.0, "must be > 0"),
    ("latent_grpo.noise_scale", -1.0, "must be >= 0"),
    ("latent_grpo.end_token", "", "must be a non-empty string"),
])
def test_config_validation_names_the_field(field, bad, expect):
  with pytest.raises(ConfigError) as e:
    validate_config(_latent_grpo(**{field: bad}), PHASES)
  assert str(e.value) == f"config.{field}={bad!r} {expect}"


def test_first_token_groups_metric_hand_example():
  """Groups of 2: [first zeroed on a positive row | no positive | one positive kept]."""
  from lrjax.phases.rl_step import first_token_groups
  adv = np.asarray([[0.0, 1.0, 1.0], [-1.0, -1.0, -1.0],    # row 0 positive, zeroed at first
                    [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],       # all-equal group
                    [0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]])   # the positive kept its first A
  mask = np.ones_like(adv, bool)
  mask[0, 0] = False  # row 0's first loss position is column 1: its A there is 1, not zeroed
  assert first_token_groups(adv, mask, 2) == pytest.approx(0.0)
  mask[0, 0] = True
  assert first_token_groups(adv, mask, 2) == pytest.approx(1 / 3)
