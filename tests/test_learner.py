"""The general learner: rule-declared objectives, old terms, the KL reference, config-driven
loss / advantage options, auxiliary losses, mini-batch updates and dynamic sampling.

References are NumPy loops (tests/test_losses.py, tests/test_advantages.py) or the same
update done by hand. The model is a 1-layer `tiny` decoder on hand-built trajectories;
the tests jit with XLA's backend optimisation off (as tests/test_replay.py: same
semantics, compiles ~2x faster) and share compiled programs where they can.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from lrjax.latent import (ANSWER, DONE, LATENT, RULES, RuleContext, ThoughtRule, prompt_suffix,
                          rule_config)
from lrjax.methods import coconut as hidden_rule
from lrjax.model import preset
from lrjax.phases.run import Run, needs_latent_tokens
from tests import test_replay as replay_tests
from lrjax.rl import dynamic
from lrjax.rl import learner as L
from lrjax.rl.advantages import AdvantageSpec, compute_advantages
from lrjax.rl.losses import POLICY_LOSSES, PolicyLoss, ppo_clip
from lrjax.rollout import Sampling, Trajectory, replay, token_logp
from tests.e2e_runs import FAST_COMPILER_OPTIONS as FAST
from tests.test_advantages import np_first_token_advantages, np_first_token_selection, np_group_adv

CFG = preset("tiny").replace(num_layers=1)
EOS, BOT, LAT, EOT = 1, 60, 61, 62
B, G, N, P = 8, 2, 7, 6  # rows, group size, response positions, prompt width
NUM_LATENT = 2

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")


def fast_jit(fn, **kw):
  return jax.jit(fn, compiler_options=FAST, **kw)


loss_fn = fast_jit(L.policy_loss, static_argnums=(0, 1))  # (ctx, spec, params, ref, traj, ...)
loss_and_grad = fast_jit(jax.value_and_grad(L.policy_loss, argnums=2, has_aux=True),
                         static_argnums=(0, 1))
replay_fn = fast_jit(replay, static_argnums=0)
ppo_fn = fast_jit(ppo_clip, static_argnames=("aggregation", "kl_estimator", "kl_clamp", "beta",
                                               "clip_eps_high", "dual_clip"))


# ----------------------------------------------------------------------------- fixtures


def random_params(seed: int = 0, std: float = 0.05) -> dict:
  """test_replay's random backbone, at this file's 1-layer shape."""
  return replay_tests.random_params(CFG, seed, std)


def contexts() -> dict:
  base_kw = dict(eos_id=EOS, pad_id=0, max_new=N)
  return {
      "token": RuleContext(CFG, "token", sampling=Sampling(0.7), **base_kw),
      "hidden": RuleContext(CFG, "hidden", sampling=Sampling(0.7), bot_id=BOT, latent_id=LAT,
                            eot_id=EOT, num_latent=NUM_LATENT, **base_kw),
      "hybrid": RuleContext(CFG, "hybrid", {"r_min": 0.5, "c": 8.0, "top_k": 50},
                            sampling=Sampling(0.7), **base_kw),
  }


def make_traj(rule: str, seed: int = 0) -> Trajectory:
  """A hand-built trajectory of `rule`'s layout: left-padded prompts (ending in <bot> for
  `hidden`), rows of different lengths ending in eos or truncated, stored log-probs at the
  sampled positions (arbitrary values: the tests see whether they are used)."""
  rng = np.random.default_rng(seed)
  prompt_ids = rng.integers(3, 50, (B, P)).astype(np.int32)
  prompt_mask = np.ones((B, P), np.int32)
  prompt_mask[1::2, :2] = 0
  prompt_ids[prompt_mask == 0] = 0
  ids = np.zeros((B, N), np.int32)
  span = np.full((B, N), DONE, np.int8)
  sampled = np.zeros((B, N), bool)
  logp = np.zeros((B, N), np.float32)
  lead = NUM_LATENT + 1 if rule == "hidden" else 0  # latents + <eot>
  lengths = rng.integers(lead + 2, N + 1, B)
  lengths[0] = N  # a truncated row
  for b, n in enumerate(lengths):
    ids[b, lead:n] = rng.integers(3, 50, n - lead)
    if n < N or b % 3 == 1:
      ids[b, n - 1] = EOS
    span[b, lead:n] = ANSWER
    sampled[b, lead:n] = True
    logp[b, lead:n] = rng.normal(-3.0, 0.5, n - lead)
  records = {}
  if rule == "hidden":
    prompt_ids[:, -1] = BOT
    ids[:, :NUM_LATENT], ids[:, NUM_LATENT] = LAT, EOT
    span[:, :lead] = LATENT
    hid = np.zeros((B, N, CFG.hidden_size), np.float32)
    hid[:, :NUM_LATENT] = rng.normal(0, 1, (B, NUM_LATENT, CFG.hidden_size))
    records = {"hidden": hid}
  if rule == "hybrid":
    think = (np.arange(N)[None] < lengths[:, None] - 2)
    span[think] = LATENT
    soft = rng.normal(0, 0.3, (B, N, CFG.hidden_size)).astype(np.float32)
    records = {"soft": np.where(think[..., None], soft, 0.0).astype(np.float32), "think": think}
  truncated = ~((ids == EOS) & sampled).any(-1)
  return Trajectory(prompt_ids=jnp.asarray(prompt_ids), prompt_mask=jnp.asarray(prompt_mask),
                    ids=jnp.asarray(ids), span=jnp.asarray(span), sampled=jnp.asarray(sampled),
                    logp=jnp.asarray(logp), records=jax.tree.map(jnp.asarray, records),
                    lengths=jnp.asarray(lengths, jnp.int32), truncated=jnp.asarray(truncated))


HEADS = np.random.default_rng(2).normal(size=(5,)).astype(np.float32)


@pytest.fixture(scope="module")
def params():
  """One tree for every rule (compiled programs are shared): the hybrid gate in "rule",
  a probe in "heads" that only the auxiliary loss reads."""
  from lrjax.latent import init_rule_params
  ctx = contexts()["hybrid"]
  return {"model": random_params(), "heads": {"probe": jnp.asarray(HEADS)},
          "rule": init_rule_params(ctx, jax.random.key(3))}


def _copy(t):
  return jax.tree.map(jnp.array, t)


def sampler_logp(ctx, params, traj, aux=None, noise=0.05, seed=0):
  """traj with the stored log-probs a sampler would have written (its float noise
  exaggerated), so that PPO ratios are near 1 as in a real run."""
  lp = token_logp(replay_fn(ctx, params, traj, aux).logits, traj.ids, ctx.sampling.temperature)
  lp = lp + noise * jnp.asarray(np.random.default_rng(seed).normal(size=lp.shape), jnp.float32)
  return traj.replace(logp=jnp.where(traj.sampled, lp, 0.0))


def _adv(seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=B), jnp.float32)


def _rl(**fields):
  rl = base.get_config().rl
  for k, v in fields.items():
    rl[k] = v
  return rl


# ----------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("rule", ["token", "hybrid"])
def test_token_and_hybrid_score_the_sampled_token_as_before(params, rule):
  """Mask = traj.sampled, term = log_softmax(l/τ)[y], old = traj.logp: the loss is the
  registered loss on exactly these arrays (the learner's behaviour before objectives)."""
  ctx, traj = contexts()[rule], make_traj(rule)
  masks = L.loss_masks(ctx, traj)
  np.testing.assert_array_equal(np.asarray(masks.ratio), np.asarray(traj.sampled))
  np.testing.assert_array_equal(np.asarray(masks.stored_old), np.asarray(traj.sampled))
  assert masks.direct is None
  assert L.behaviour_logp(ctx, params, traj, None) is None  # nothing to recompute
  aux = _hybrid_aux() if rule == "hybrid" else None
  got, _ = loss_fn(ctx, PLAIN, params, None, traj, _adv(), aux)
  logits = replay_fn(ctx, params, traj, aux).logits
  want, _ = ppo_fn(token_logp(logits, traj.ids, 0.7), traj.logp, _adv(),
                   traj.sampled.astype(jnp.float32), aggregation="seq_mean")
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


PLAIN = L.LossSpec(loss="ppo_clip", aggregation="seq_mean")


def _hybrid_aux():
  from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
  from lrjax.methods.hrpo import delimiter_aux
  return delimiter_aux(build_char_tokenizer(DEFAULT_ALPHABET), "####", CFG.vocab_size)


def test_hidden_mask_is_eot_and_text_and_eot_old_logp_is_recomputed(params):
  ctx, traj = contexts()["hidden"], make_traj("hidden")
  masks = L.loss_masks(ctx, traj)
  ids, span = np.asarray(traj.ids), np.asarray(traj.span)
  want = (span != DONE) & (ids != LAT)  # <eot> and the text after it
  assert (ids[want] == EOT).sum() == B and not (np.asarray(traj.prompt_ids)[:, -1] != BOT).any()
  np.testing.assert_array_equal(np.asarray(masks.ratio), want)
  assert not np.asarray(masks.ratio)[:, :NUM_LATENT].any()  # no latent position
  np.testing.assert_array_equal(np.asarray(masks.stored_old), np.asarray(traj.sampled))
  old = np.asarray(L.behaviour_logp(ctx, params, traj, None))
  # the sampler's value where it sampled, bit for bit ...
  sampled = np.asarray(traj.sampled)
  np.testing.assert_array_equal(old[sampled], np.asarray(traj.logp)[sampled])
  # ... and at <eot> log_softmax(l/τ)[<eot>] of a replay with the same parameters
  logits = np.asarray(replay_fn(ctx, params, traj).logits, np.float64)[:, NUM_LATENT]  # B V
  z = logits / 0.7
  ref = z[:, EOT] - (np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1))
  np.testing.assert_allclose(old[:, NUM_LATENT], ref, atol=1e-5)
  assert np.abs(ref).min() > 1.0  # not a stored 0


@pytest.mark.parametrize("rule, reference", [("token", "policy_inputs"),
                                             ("hidden", "policy_inputs"),
                                             ("hybrid", "policy_inputs")])
def test_kl_to_the_starting_reference_is_zero_at_step_0(params, rule, reference):
  ctx, traj = contexts()[rule], make_traj(rule)
  aux = _hybrid_aux() if rule == "hybrid" else None
  ref = jax.tree.map(jnp.copy, params)  # what the trainer builds: the starting tree
  spec = L.LossSpec(loss="ppo_clip", beta=0.1, kl_reference=reference)
  old = L.behaviour_logp(ctx, params, traj, aux)
  _, m = loss_fn(ctx, spec, params, ref, traj, _adv(), aux, old)
  assert abs(float(m["kl_mean"])) <= 1e-6


def test_hybrid_token_inputs_reference_differs(params):
  """HRPO's reference (plain token embeddings) is not the policy at step 0 when the gate
  mixes: the option reaches the KL."""
  ctx, traj = contexts()["hybrid"], make_traj("hybrid")
  spec = L.LossSpec(loss="ppo_clip", beta=0.1, kl_reference="token_inputs")
  _, m = loss_fn(ctx, spec, params, _copy(params), traj, _adv(), _hybrid_aux())
  assert float(m["kl_mean"]) > 1e-4


def _np_token_logp(logits, ids, tau):
  """log_softmax(l/τ)[y] in float64: logits [B, N, V], ids [B, N] -> [B, N]."""
  z = np.asarray(logits, np.float64) / tau
  zmax = z.max(-1, keepdims=True)
  lse = (np.log(np.exp(z - zmax).sum(-1, keepdims=True)) + zmax)[..., 0]
  return np.take_along_axis(z, np.asarray(ids)[..., None], -1)[..., 0] - lse


def test_hrpo_configured_objective_matches_a_numpy_loop(params):
  """configs/hrpo.py's loss, re-derived from HRPO's formula (arXiv 2505.18454; docs/hrpo.md)
  with a NumPy loop over rows and positions:

      A_i = (R_i − mean_g R) / (std_g R + 1e-4)     (unbiased std, groups of rl.group_size)
      KL_t = exp(ref_t − new_t) − (ref_t − new_t) − 1,  ref_t: the starting model on E[y]
      L = (1/B) Σ_i (1/|y_i|) Σ_t −(A_i − β KL_t),  ∂L/∂new_t = (−A_i + β(1 − e^{ref_t−new_t}))/(B|y_i|)

  new_t / ref_t are log_softmax(l/τ)[y] of the replayed logits (the policy on its hybrid
  inputs, the reference replayed by the plain `token` rule); the learner's value and its
  parameter gradient (= Σ_t ∂L/∂new_t ∇new_t, the reference held constant) must match."""
  from configs import hrpo as hrpo_config
  rl = hrpo_config.get_config().rl
  rl.group_size = 4  # two prompts of four rows in the 8-row batch
  spec = L.LossSpec.from_config(rl)
  assert (spec.loss, spec.aggregation, spec.kl_estimator, spec.kl_reference, spec.beta) == (
      "reinforce_onpolicy", "seq_mean", "k3", "token_inputs", 0.005)
  beta, eps, tau = spec.beta, float(rl.adv_eps), 0.7
  ctx, traj, aux = contexts()["hybrid"], make_traj("hybrid", seed=5), _hybrid_aux()
  ref = _copy(params)  # the starting tree; the policy has moved away from it
  rng = np.random.default_rng(7)
  policy = jax.tree.map(lambda x: x + 0.02 * jnp.asarray(rng.normal(size=x.shape), x.dtype),
                        params)
  rewards = np.asarray([1, 0, 0, 1, 0, 1, 1, 1], np.float32)
  adv = compute_advantages(AdvantageSpec.from_config(rl), jnp.asarray(rewards), traj)
  (loss, m), grad = loss_and_grad(ctx, spec, policy, ref, traj, adv, aux)

  new = _np_token_logp(replay_fn(ctx, policy, traj, aux).logits, traj.ids, tau)
  ref_lp = _np_token_logp(replay_fn(contexts()["token"], ref, traj).logits, traj.ids, tau)
  mask = np.asarray(traj.sampled)
  a = np.zeros(B)
  for g in range(B // 4):
    r = rewards[4 * g:4 * g + 4].astype(np.float64)
    a[4 * g:4 * g + 4] = (r - r.mean()) / (r.std(ddof=1) + eps)
  np.testing.assert_allclose(np.asarray(adv), a, rtol=1e-6)
  total, dnew, kls = 0.0, np.zeros((B, N)), []
  for i in range(B):
    n_i = int(mask[i].sum())
    for t in range(N):
      if mask[i, t]:
        d = ref_lp[i, t] - new[i, t]
        kl = math.exp(d) - d - 1.0
        kls.append(kl)
        total += -(a[i] - beta * kl) / n_i
        dnew[i, t] = (-a[i] + beta * (1.0 - math.exp(d))) / (B * n_i)
  want = total / B
  assert np.mean(kls) > 1e-3  # the token reference differs from the hybrid policy
  # Σ_i A_i = 0 per group: the value is β·KL alone (measured 7e-6 relative, float32)
  np.testing.assert_allclose(float(loss), want, rtol=5e-5)
  np.testing.assert_allclose(float(m["kl_mean"]), np.mean(kls), rtol=5e-5)

  def surrogate(p):  # Σ_t ∂L/∂new_t · new_t(p): the same gradient if the loss is right
    lp = token_logp(replay(ctx, p, traj, aux).logits, traj.ids, tau)
    return jnp.sum(jnp.where(traj.sampled, lp, 0.0) * jnp.asarray(dnew, jnp.float32))
  want_grad = fast_jit(jax.grad(surrogate))(policy)
  for (path, got), w in zip(jax.tree_util.tree_flatten_with_path(grad)[0],
                            jax.tree.leaves(want_grad)):
    got, w = np.asarray(got, np.float64), np.asarray(w, np.float64)
    scale = max(np.linalg.norm(w), 1e-12)
    # measured <= 3e-7 relative L2 per tensor
    assert np.linalg.norm(got - w) / scale < 1e-5 or scale < 1e-9, jax.tree_util.keystr(path)
  assert float(jnp.abs(grad["rule"]["lambda"]).max()) > 0  # the gate is trained too


def test_rule_declarations_replace_name_branches(monkeypatch):
  """prompt suffix, special tokens, config section and answer budget come from the rule."""
  c = base.get_config()
  base.use_rule(c, "hybrid", gate_c=4.0, r_min=0.9, top_k=7)
  assert rule_config("hybrid", c) == {"gate_c": 4.0, "r_min": 0.9, "top_k": 7}
  assert rule_config("token", c) == {}
  assert prompt_suffix(contexts()["hidden"]) == (BOT,)
  assert prompt_suffix(contexts()["token"]) == ()
  assert RULES.get("hidden").extra_positions(3) == 4
  monkeypatch.setitem(RULES._items, "test_declared", ThoughtRule(
      step=None, replay_inputs=None, prompt_suffix=lambda ctx: (ctx.eot_id, 5),
      special_tokens=("<bot>",), config_section="hrpo",
      extra_positions=lambda n: 2 * n))
  run = Run(config=c, workdir="", mesh=None, task=None, tokenizer=None, model_cfg=CFG,
            special={"eos_id": 1, "pad_id": 0, "eot_id": EOT}, metrics=None)
  ctx = run.rule_context("test_declared", 10, num_latent=2)
  assert ctx.rule_cfg == (("gate_c", 4.0), ("r_min", 0.9), ("top_k", 7))
  assert prompt_suffix(ctx) == (EOT, 5)
  c.rule.name = "token"
  assert not needs_latent_tokens(c)
  c.rule.name = "test_declared"
  assert needs_latent_tokens(c)


def _bf16_vs_f32_update(lr):
  """One learner update (token rule, ppo_clip / token_mean, AdamW of `make_rl_optimizer`)
  in bfloat16 compute with float32 master weights, and in float32, from the same
  (bf16-rounded) start. -> (loss32, loss16, {path: (delta32, delta16)} float64)."""
  rl = _rl(param_groups=((".*", lr),))
  spec = L.LossSpec.from_config(rl)
  p32 = {"model": jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                               random_params(seed=4))}
  ctx32 = contexts()["token"]
  traj = sampler_logp(ctx32, p32, make_traj("token", seed=6))
  out = {}
  for name, cfg in (("f32", CFG), ("bf16", CFG.replace(dtype="bfloat16", param_dtype="float32"))):
    opt = L.make_rl_optimizer(rl, 10)
    upd = L.make_update(ctx32.replace(model_cfg=cfg), spec, opt)
    step = fast_jit(lambda q, st, t, a, upd=upd: upd(q, st, None, t, a, None))
    new, _, m = step(_copy(p32), opt.init(p32), traj, _adv())
    assert bool(m["ok"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new))  # the masters
    out[name] = float(m["loss"]), {
        jax.tree_util.keystr(k): np.asarray(b, np.float64) - np.asarray(a, np.float64)
        for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(p32)[0], jax.tree.leaves(new))}
  return out["f32"][0], out["bf16"][0], {k: (d, out["bf16"][1][k]) for k, d in out["f32"][1].items()}


def test_bfloat16_rl_update_matches_float32():
  """One RL update in bfloat16 compute (float32 master weights) against float32 from the
  same start, at the configs' lr 3e-5: the loss within 1e-2 relative and each tensor's
  parameter change within a relative L2 of 0.2 (measured 2e-6 to 0.18; norm scales
  included: the masters keep their step, which bfloat16 storage rounds away at 1.0).

  AdamW's first step is ±lr·sign(g) per element, so the error is the share of elements
  whose gradient sign bfloat16 compute flips (rel. L2 ≈ 2√share). attn/k/bias is left
  out: its gradient is near zero (sign noise)."""
  l32, l16, deltas = _bf16_vs_f32_update(3e-5)
  assert l16 == pytest.approx(l32, rel=1e-2)
  for k, (d32, d16) in deltas.items():
    if k.endswith("['k']['bias']"):
      continue
    err = np.linalg.norm(d16 - d32) / np.linalg.norm(d32)
    assert err < 0.2, (k, err)


# ----------------------------------------------------------------------------- loss options


def test_loss_options_reach_the_loss_from_config(params, monkeypatch):
  rl = _rl(clip_eps=0.1, clip_eps_high=0.28, dual_clip=3.0, kl_estimator="k2", kl_clamp=0.5,
           aggregation="seq_mean", beta=0.02, loss="spy")
  spec = L.LossSpec.from_config(rl)
  seen = {}

  def spy(new, old, adv, mask, **kw):
    seen.update(kw)
    return ppo_clip(new, old, adv, mask, **kw)
  monkeypatch.setitem(POLICY_LOSSES._items, "spy", PolicyLoss(spy))
  ctx, traj = contexts()["token"], make_traj("token")
  jax.eval_shape(lambda p: L.policy_loss(ctx, spec, p, p, traj, _adv(), None), params)
  assert {k: seen[k] for k in ("clip_eps", "clip_eps_high", "dual_clip", "kl_estimator",
                               "kl_clamp", "aggregation", "beta")} == {
      "clip_eps": 0.1, "clip_eps_high": 0.28, "dual_clip": 3.0, "kl_estimator": "k2",
      "kl_clamp": 0.5, "aggregation": "seq_mean", "beta": 0.02}
  off = L.LossSpec.from_config(_rl(clip_eps_high=0.0, dual_clip=0.0))
  assert off.clip_eps_high is None and off.dual_clip is None and off.kl_clamp == 0.0


def _np_kl(new, ref, estimator, clamp):
  d = ref - new
  k = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[estimator]
  g = {"k1": 1.0, "k2": -d, "k3": 1 - math.exp(d)}[estimator]
  if clamp and abs(k) > clamp:
    return math.copysign(clamp, k), 0.0
  return k, g


@pytest.mark.parametrize("estimator, clamp", [("k3", 0.0), ("k3", 0.05), ("k2", 0.02),
                                              ("k1", 0.1)])
def test_kl_estimator_and_clamp_match_numpy(estimator, clamp):
  from tests.test_losses import make_batch, np_agg_weight, np_aggregate, np_ppo_token
  new, old, ref, adv, mask = make_batch(3)
  beta = 0.5

  def f(x):
    return ppo_clip(x, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), beta=beta,
                    ref_logp=jnp.asarray(ref), kl_estimator=estimator, kl_clamp=clamp,
                    clip_eps_high=0.3, dual_clip=2.0)
  (loss, m), grad = fast_jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(new))
  per, dper = np.zeros(mask.shape), np.zeros(mask.shape)
  kls, clamped = [], 0
  for i, j in zip(*np.nonzero(mask)):
    lp, gp, _, _ = np_ppo_token(float(new[i, j]), float(old[i, j]), float(adv[i]), 0.0, 0.2,
                                0.3, 2.0, 0.0)
    k, gk = _np_kl(float(new[i, j]), float(ref[i, j]), estimator, clamp)
    clamped += gk == 0.0 and clamp > 0
    per[i, j], dper[i, j] = lp + beta * k, gp + beta * gk
    kls.append(k)
  assert clamp == 0 or clamped > 0  # the clamp binds somewhere
  np.testing.assert_allclose(float(loss), np_aggregate(per, mask, "token_mean"), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), dper * np_agg_weight(mask, "token_mean"),
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(m["kl_mean"]), np.mean(kls), rtol=1e-5, atol=1e-7)


def test_direct_terms_are_weighted_by_the_advantage_without_ratio():
  """LEPO-style terms: −A·d at their positions, aggregated with the ratio terms over the
  union of the masks (per-sequence mean)."""
  from tests.test_losses import make_batch, np_aggregate, np_agg_weight, np_ppo_token
  new, old, ref, adv, mask = make_batch(5)
  rng = np.random.default_rng(0)
  d = rng.normal(size=mask.shape).astype(np.float32)
  dmask = ~mask & (rng.random(mask.shape) < 0.6)
  dmask[0, -1] = mask[0, -1] = True  # a position in both

  def f(x, y):
    return ppo_clip(x, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), direct=y,
                    direct_mask=jnp.asarray(dmask), aggregation="seq_mean")
  (loss, _), (g_new, g_d) = fast_jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
      jnp.asarray(new), jnp.asarray(d))
  union = mask | dmask
  per = np.zeros(mask.shape)
  for i, j in zip(*np.nonzero(union)):
    if mask[i, j]:
      per[i, j] += np_ppo_token(float(new[i, j]), float(old[i, j]), float(adv[i]), 0.0, 0.2, 0.2,
                                None, 0.0)[0]
    if dmask[i, j]:
      per[i, j] += -adv[i] * d[i, j]
  np.testing.assert_allclose(float(loss), np_aggregate(per, union, "seq_mean"), rtol=1e-5)
  w = np_agg_weight(union, "seq_mean")
  np.testing.assert_allclose(np.asarray(g_d), np.where(dmask, -adv[:, None] * w, 0.0),
                             rtol=1e-5, atol=1e-8)


def test_aux_loss_weight_reaches_the_total_loss_and_its_gradient(params):
  ctx, traj = contexts()["token"], make_traj("token")
  spec = L.LossSpec.from_config(_rl(aux_losses=(("heads_l2", 0.3),), aggregation="seq_mean"))
  assert spec.aux_losses == (("heads_l2", 0.3),) and spec.loss == PLAIN.loss
  plain, _ = loss_fn(ctx, PLAIN, params, None, traj, _adv(), None)
  (total, m), g = loss_and_grad(ctx, spec, params, None, traj, _adv(), None)
  w = HEADS
  np.testing.assert_allclose(float(total) - float(plain), 0.3 * 0.5 * float((w * w).sum()),
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["aux_heads_l2"]), 0.5 * float((w * w).sum()), rtol=1e-6)
  # the policy part does not read the heads: their gradient is the weighted aux gradient
  np.testing.assert_allclose(np.asarray(g["heads"]["probe"]), 0.3 * w, rtol=1e-6)
  assert float(jnp.abs(g["model"]["embed"]["embedding"]).max()) > 0  # the policy part


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("in_stats", [True, False])
def test_invalid_sample_masking_through_the_config(in_stats):
  traj = make_traj("token", seed=4)
  r = np.asarray([1, 0, 1, 1, 0, 1, 1, 0], np.float32)
  truncated = np.asarray(traj.truncated)
  assert truncated.any() and not truncated.all()
  spec = AdvantageSpec.from_config(_rl(group_size=G, mask_truncated=True,
                                       truncated_in_stats=in_stats))
  got = compute_advantages(spec, jnp.asarray(r), traj)
  # groups of 4 make the "excluded from the statistics" case differ: use G = 4 as well
  np.testing.assert_allclose(np.asarray(got), np_group_adv(r, G, 1e-4, ~truncated, not in_stats),
                             rtol=1e-6, atol=1e-7)
  spec4 = AdvantageSpec.from_config(_rl(group_size=4, mask_truncated=True,
                                        truncated_in_stats=in_stats))
  got4 = np.asarray(compute_advantages(spec4, jnp.asarray(r), traj))
  np.testing.assert_allclose(got4, np_group_adv(r, 4, 1e-4, ~truncated, not in_stats),
                             rtol=1e-6, atol=1e-7)
  off = np.asarray(compute_advantages(AdvantageSpec.from_config(_rl(group_size=4)),
                                      jnp.asarray(r), traj))
  assert not np.allclose(off, got4)


def test_first_token_selection_through_the_config():
  traj = make_traj("token", seed=6)
  r = np.asarray([1, 1, 0, 1, 0, 0, 1, 0], np.float32)  # groups of 4
  old = np.asarray(traj.logp)
  mask = np.asarray(traj.sampled)
  spec = AdvantageSpec.from_config(_rl(group_size=4, first_token_selection=True))
  got = np.asarray(compute_advantages(spec, jnp.asarray(r), traj, jnp.asarray(old),
                                      jnp.asarray(mask)))
  adv = np_group_adv(r, 4)
  lp = np.where(mask, old, 0).sum(-1) / mask.sum(-1)
  want = np_first_token_advantages(adv, np_first_token_selection(adv, lp, 4), mask)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert got.shape == (B, N) and (got[:, 0] == 0).sum() > (adv == 0).sum()  # it selected


# ----------------------------------------------------------------------------- mini-batches


def test_minibatch_rows_are_shuffled_whole_groups():
  rows = L.minibatch_rows(16, 2, 4, seed=0, step=3)
  assert len(rows) == 4 and all(len(r) == 4 for r in rows)
  flat = np.concatenate(rows)
  np.testing.assert_array_equal(np.sort(flat), np.arange(16))
  for r in rows:
    np.testing.assert_array_equal(r.reshape(-1, 2) % 2, [[0, 1]] * 2)  # whole groups
    np.testing.assert_array_equal(np.diff(r.reshape(-1, 2), axis=1), 1)
  again = L.minibatch_rows(16, 2, 4, seed=0, step=3)
  assert all((a == b).all() for a, b in zip(rows, again))  # keyed by (seed, step)
  others = [L.minibatch_rows(16, 2, 4, seed=s, step=t) for s, t in ((0, 4), (1, 3))]
  assert all(any((a != b).any() for a, b in zip(rows, o)) for o in others)
  np.testing.assert_array_equal(L.minibatch_rows(16, 2, 1, 0, 3)[0], np.arange(16))


def test_minibatch_updates_equal_the_same_updates_by_hand(params):
  """rl.updates_per_batch = 2 with SGD on the `hidden` rule: two updates on the shuffled
  halves, the <eot> old terms recomputed once, before the first update."""
  ctx = contexts()["hidden"]
  p0 = params
  traj = sampler_logp(ctx, p0, make_traj("hidden"))
  adv = _adv(4)
  spec = L.LossSpec(loss="ppo_clip", beta=0.05, kl_reference="policy_inputs")
  lr = 0.02
  sgd = optax.sgd(lr)
  ref = _copy(p0)
  old = L.behaviour_logp(ctx, p0, traj)
  rows = L.minibatch_rows(B, G, 2, seed=0, step=5)
  update = L.make_update(ctx, spec, sgd)
  got, _, m = L.learn_batch(update, _copy(p0), sgd.init(p0), ref, traj, adv, None, old, rows)

  grad = fast_jit(jax.grad(lambda p, t, a, o: L.policy_loss(ctx, spec, p, ref, t, a, None, o)[0]))
  want = p0
  for r in rows:
    g = grad(want, L.take_rows(traj, r), adv[r], old[r])
    want = jax.tree.map(lambda x, y: x - lr * y, want, g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got),
                                                          jax.tree.leaves(p0)))
  assert moved > 1e-3
  # with old terms recomputed after the first update instead, the result differs
  p1 = jax.tree.map(lambda x, y: x - lr * y, p0, grad(p0, L.take_rows(traj, rows[0]),
                                                       adv[rows[0]], old[rows[0]]))
  stale = L.behaviour_logp(ctx, p1, traj)
  g = grad(p1, L.take_rows(traj, rows[1]), adv[rows[1]], stale[rows[1]])
  other = jax.tree.map(lambda x, y: x - lr * y, p1, g)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(other),
                                                         jax.tree.leaves(want))) > 1e-6


def test_a_non_finite_rl_update_changes_nothing(params):
  """The RL update's non-finite guard (as SFT's, tests/test_sft_step.py): a poisoned
  update (`train.inject_nan_step`) and one whose advantages hold a NaN leave the
  parameters and the AdamW state bit-identical with metrics["ok"] False; a clean
  one updates."""
  ctx, traj = contexts()["hidden"], make_traj("hidden")
  spec = L.LossSpec(loss="ppo_clip", beta=0.05, kl_reference="policy_inputs")
  opt = optax.adamw(1e-2)
  update = L.make_update(ctx, spec, opt)
  before = jax.tree.map(np.asarray, (params, opt.init(params)))
  nan_adv = _adv(4).at[1].set(jnp.nan)
  for adv, poison in ((_adv(4), True), (nan_adv, False)):
    p, o, m = update(*jax.tree.map(jnp.asarray, before), _copy(params), traj, adv, None,
                     poison=jnp.asarray(poison))
    assert not bool(m["ok"]), poison
    jax.tree.map(np.testing.assert_array_equal, (p, o), before)
  p, o, m = update(*jax.tree.map(jnp.asarray, before), _copy(params), traj, _adv(4), None,
                   poison=jnp.asarray(False))
  assert bool(m["ok"]) and np.isfinite(float(m["grad_norm"]))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p),
                                                     jax.tree.leaves(before[0])))


def test_schedule_counts_optimizer_updates():
  rl = _rl(schedule="cosine", warmup_steps=1, steps=3, updates_per_batch=2,
           param_groups=((".*", 1.0),), clip_norm=0.0)
  assert L.optimizer_updates(rl, 3) == 6
  opt = L.make_rl_optimizer(rl, rl.steps)
  p = {"model": {"w": jnp.zeros(())}, "rule": {}, "heads": {}}
  state, moves = opt.init(p), []
  for _ in range(6):
    u, state = opt.update({"model": {"w": jnp.ones(())}, "rule": {}, "heads": {}}, state, p)
    moves.append(abs(float(u["model"]["w"])))
  want = [float(optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6, 0.0)(i)) for i in range(6)]
  assert moves[0] == 0.0 and moves[2] > 0.0 and want[-1] < want[2]  # warm-up of 2 updates
  # a constant unit gradient makes Adam's step m̂/(√v̂ + ε) = 1: |update| = lr(t), up to
  # float32 rounding of the bias corrections 1 − β^t (~1e-6 relative)
  np.testing.assert_allclose(moves, want, rtol=1e-5, atol=1e-12)


# ----------------------------------------------------------------------------- dynamic sampling


def _fake_round(cursor: int, flat: set, width: int = 4) -> dynamic.Round:
  """A round of P = 4 prompts (global indices cursor..cursor+3), G = 2 rows each: prompt
  ids hold the global prompt index; a prompt in `flat` has equal rewards."""
  pidx = np.repeat(np.arange(cursor, cursor + 4), 2)  # B
  r = np.where(np.isin(pidx, list(flat)), 1.0, np.tile([1.0, 0.0], 4)).astype(np.float32)
  traj = Trajectory(
      prompt_ids=jnp.asarray(np.tile(pidx[:, None], (1, width)).astype(np.int32)),
      prompt_mask=jnp.ones((8, width), jnp.int32), ids=jnp.asarray(np.tile(pidx[:, None], (1, 3))),
      span=jnp.full((8, 3), ANSWER, jnp.int8), sampled=jnp.ones((8, 3), bool),
      logp=jnp.zeros((8, 3)), records={}, lengths=jnp.full((8,), 3, jnp.int32),
      truncated=jnp.zeros((8,), bool))
  return dynamic.Round(traj, r)


def test_dynamic_sampling_refills_the_batch():
  flat = {1, 3, 4, 9}
  calls = []

  def draw(cursor, attempt):
    calls.append((cursor, attempt))
    return _fake_round(cursor, flat, width=4 if attempt == 0 else 8)
  got = dynamic.fill_batch(draw, cursor=0, num_prompts=4, group_size=2, max_tries=5)
  assert calls == [(0, 0), (4, 1)] and got.tries == 2 and got.cursor == 8
  prompts = np.asarray(got.traj.ids)[::2, 0]
  np.testing.assert_array_equal(prompts, [0, 2, 5, 6])  # kept groups, in the order drawn
  assert got.keep.all()
  chex.assert_trees_all_equal_shapes(got.traj.ids, _fake_round(0, set()).traj.ids)
  assert got.traj.prompt_ids.shape == (8, 8)  # the wider round's prompts; round 0 left-padded
  np.testing.assert_array_equal(np.asarray(got.traj.prompt_mask).sum(-1), [4] * 4 + [8] * 4)
  np.testing.assert_array_equal(got.rewards, np.tile([1.0, 0.0], 4))

  # tries run out: the batch is completed with dropped groups, whose advantages are 0
  short = dynamic.fill_batch(lambda c, a: _fake_round(c, {0, 1, 2, 4, 5, 6, 7}), 0, 4, 2, 2)
  assert short.tries == 2 and short.cursor == 8
  np.testing.assert_array_equal(np.asarray(short.traj.ids)[::2, 0], [3, 0, 1, 2])
  np.testing.assert_array_equal(short.keep, [True, False, False, False])
  adv = dynamic.zero_dropped(jnp.ones((8, 3)), short.keep, 2)
  np.testing.assert_array_equal(np.asarray(adv)[:, 0], [1, 1, 0, 0, 0, 0, 0, 0])

  # off: one round, the data cursor advances by P
  off = dynamic.fill_batch(lambda c, a: _fake_round(c, flat), 12, 4, 2, 0)
  assert off.tries == 1 and off.cursor == 16 and off.keep.all()


def test_dynamic_sampling_reuses_the_compiled_shapes_and_resumes_identically():
  flat = {1, 2, 3, 5, 8, 13, 14}
  traces = []

  @jax.jit
  @chex.assert_max_traces(n=1)
  def consume(traj):
    traces.append(1)
    return traj.ids.sum()

  def run(steps, meta):
    """The trainer's bookkeeping: the cursor and tries from the checkpoint meta."""
    cursor, tries = dynamic.resume_position(meta, steps.start, 4)
    out = []
    for step in steps:
      got = dynamic.fill_batch(lambda c, a: _fake_round(c, flat), cursor, 4, 2, 3)
      cursor, tries = got.cursor, tries + got.tries
      consume(got.traj)
      out.append((np.asarray(got.traj.ids)[::2, 0].tolist(), got.tries))
      meta = dynamic.checkpoint_meta(step + 1, cursor, tries)
    return out, meta
  full, end = run(range(0, 4), {})
  first, meta = run(range(0, 2), {})
  rest, end2 = run(range(2, 4), meta)
  assert first + rest == full and end == end2
  assert [t for _, t in full] != [1, 1, 1, 1]  # some steps refilled
  assert len(traces) == 1
  assert dynamic.resume_position({}, 3, 4) == (12, 3)  # checkpoints without a cursor


@pytest.mark.parametrize("declared, loss, match", [
    (True, "gspo_clip", "rl.loss='gspo_clip' takes no direct terms"),
    (False, "ppo_clip", "has_direct=False does not match its terms"),
])
def test_direct_terms_need_a_loss_that_adds_them_and_a_declaration(params, monkeypatch,
                                                                   declared, loss, match):
  """The learner refuses, when it traces the loss, a loss that would drop the objective's
  direct terms and an objective whose terms disagree with its `has_direct`."""
  from lrjax.latent import OBJECTIVES, Masks, Objective, Terms

  def masks(ctx, traj):
    none = jnp.zeros(traj.ids.shape, bool)
    return Masks(ratio=none, stored_old=none, direct=jnp.asarray(traj.sampled))

  def terms(ctx, p, traj, out, aux=None):
    return Terms(ratio=jnp.zeros(traj.ids.shape), direct=out.hidden.sum(-1))
  monkeypatch.setitem(OBJECTIVES._items, "test_direct",
                      Objective(masks=masks, terms=terms, has_direct=declared))
  ctx, traj = contexts()["token"].replace(objective="test_direct"), make_traj("token")
  spec = L.LossSpec.from_config(_rl(loss=loss))
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda p: L.policy_loss(ctx, spec, p, p, traj, _adv(), None), params)
