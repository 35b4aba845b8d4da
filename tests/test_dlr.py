"""DLR (arXiv 2601.17275): the Gaussian chain density and its KL against jax.scipy.stats and
Monte Carlo, the contrastive term (log G for identical chains, a NumPy reference, its gradient
into μ and σ by finite differences), replay = rollout for the assistant's chain and the main
model's logits, a frozen main model (no gradient, no optimizer state, never donated, exported
bit for bit after a short run, and the pair evaluated from the export), and one compile of the
rollout per prompt bucket.

Tolerances: float32 densities 1e-5 relative; KL vs Monte Carlo within 5 standard errors;
finite differences in float64 to 1e-6; replayed chains 1e-5, replayed logits 1e-4.
"""
import hashlib
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

from configs import dlr as dlr_config
from lrjax import rewards
from lrjax.latent import OBJECTIVES, RuleContext
from lrjax.methods.dlr import rule as dlr_rule
from lrjax.methods.dlr.gaussian import contrastive, kl, logpdf, mean_logpdf
from lrjax.rl import advantages as adv_lib
from lrjax.methods.dlr.losses import gspo_clip
from lrjax.rl.learner import LossSpec, behaviour_logp, make_rl_optimizer, make_update, policy_loss
from lrjax.rollout import Sampling, pad_prompts, replay, sample_trajectory
from tests.test_replay import BOT, CFG, EOS, EOT, FAST, LAT, model_params

G, T = 4, 3
PROMPTS = [[20, 21, 22, BOT], [5, 9, 13, 17, 21, BOT]]


def _ctx(assistant="mlp", greedy=False, max_new=8):
  return RuleContext(
      model_cfg=CFG, rule="dlr", eos_id=EOS, pad_id=0, bot_id=BOT, latent_id=LAT, eot_id=EOT,
      num_latent=T, max_new=max_new, sampling=Sampling(temperature=1.0, greedy=greedy),
      rule_cfg={"assistant": assistant, "sigma_init": 0.3, "log_sigma_min": -4.0,
                "log_sigma_max": 0.0},
      objective="dlr", objective_cfg={"group_size": G, "beta": 0.01, "gamma": 0.1,
                                      "similarity": "dot", "temperature": 0.1})


def _params(ctx, seed=0):
  return {"model": model_params(), "rule": {},
          "heads": dlr_rule.init_heads(ctx, jax.random.key(seed))}


def _batch(bucket=8):
  rows = [p for p in PROMPTS for _ in range(G)]
  return tuple(map(jnp.asarray, pad_prompts(rows, bucket)))


def _roll(ctx, params, key=0, bucket=8):
  ids, mask = _batch(bucket)
  return jax.jit(sample_trajectory, static_argnums=0, compiler_options=FAST)(
      ctx, params, ids, mask, jax.random.key(key))


# ----------------------------------------------------------------------- density, KL, L_cl


def test_logpdf_matches_scipy():
  rng = np.random.default_rng(0)
  z, mu = rng.normal(size=(2, 5, 7)).astype(np.float32)
  log_sigma = rng.uniform(-2, 1, size=(5, 7)).astype(np.float32)
  want = stats.norm.logpdf(z, mu, np.exp(log_sigma))
  np.testing.assert_allclose(logpdf(z, mu, log_sigma), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mean_logpdf(z, mu, log_sigma), want.mean(-1), rtol=1e-5)


def test_kl_matches_scipy_monte_carlo():
  rng = np.random.default_rng(1)
  mu, mu_r = rng.normal(size=(2, 6))
  ls, ls_r = rng.uniform(-1, 0.5, size=(2, 6))
  n = 200_000
  x = mu + np.exp(ls) * jax.random.normal(jax.random.key(0), (n, 6))
  est = stats.norm.logpdf(x, mu, np.exp(ls)) - stats.norm.logpdf(x, mu_r, np.exp(ls_r))  # n 6
  mc, se = np.asarray(est.mean(0)), np.asarray(est.std(0)) / np.sqrt(n)
  got = np.asarray(kl(*(jnp.asarray(v, jnp.float32) for v in (mu, ls, mu_r, ls_r))))
  assert np.all(np.abs(got - mc) < 5 * se + 1e-4), (got, mc, se)
  np.testing.assert_allclose(kl(jnp.asarray(mu), jnp.asarray(ls), jnp.asarray(mu),
                                jnp.asarray(ls)), 0.0, atol=1e-6)


def _np_contrastive(chains, g, mode, temp):
  c = np.asarray(chains, np.float64).reshape(chains.shape[0] // g, g, -1)
  if mode == "dot":
    s = np.einsum("pkf,pjf->pkj", c, c) / np.sqrt(c.shape[-1])
  else:
    u = c / np.linalg.norm(c, axis=-1, keepdims=True)
    s = np.einsum("pkf,pjf->pkj", u, u) / temp
  m = s.max(-1, keepdims=True)
  logsm = s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))
  return -np.mean([logsm[p, k, k] for p in range(c.shape[0]) for k in range(g)])


@pytest.mark.parametrize("mode", ["dot", "cosine"])
def test_contrastive_is_log_g_for_identical_chains_and_matches_numpy(mode):
  rng = np.random.default_rng(2)
  same = np.repeat(rng.normal(size=(2, 1, T, 5)), G, axis=1).reshape(2 * G, T, 5)
  np.testing.assert_allclose(contrastive(jnp.asarray(same, jnp.float32), G, mode), np.log(G),
                             rtol=1e-6)
  chains = rng.normal(size=(3 * G, T, 5)).astype(np.float32)
  np.testing.assert_allclose(contrastive(jnp.asarray(chains), G, mode, 0.5),
                             _np_contrastive(chains, G, mode, 0.5), rtol=1e-5)
  assert float(contrastive(jnp.asarray(chains), G, mode, 0.5)) < np.log(G)  # spread: below log G


def test_contrastive_gradient_into_mu_and_sigma_matches_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    mu = jnp.asarray(rng.normal(size=(G, T, 5)))
    ls = jnp.asarray(rng.uniform(-1, 0, size=(G, T, 5)))
    eps = jnp.asarray(rng.normal(size=(G, T, 5)))
    f = lambda m, s: contrastive(m + jnp.exp(s) * eps, G, "dot")  # noqa: E731
    g_mu, g_ls = jax.grad(f, argnums=(0, 1))(mu, ls)
    assert float(jnp.abs(g_mu).max()) > 1e-3 and float(jnp.abs(g_ls).max()) > 1e-3
    h = 1e-6
    for idx in [(0, 0, 0), (1, 2, 3), (3, 1, 4)]:
      e = jnp.zeros_like(mu).at[idx].set(h)
      np.testing.assert_allclose((f(mu + e, ls) - f(mu - e, ls)) / (2 * h), g_mu[idx], atol=1e-6)
      np.testing.assert_allclose((f(mu, ls + e) - f(mu, ls - e)) / (2 * h), g_ls[idx], atol=1e-6)


def test_gspo_clip_matches_numpy_loss_and_gradient():
  rng = np.random.default_rng(4)
  b, t, eps = 6, 5, 0.02
  old = rng.normal(size=(b, t)).astype(np.float32)
  new = (old + rng.normal(size=(b, t)) * 0.3).astype(np.float32)
  mask = rng.random((b, t)) < 0.8
  mask[0], mask[1] = True, False
  adv = rng.normal(size=b).astype(np.float32)
  n = np.maximum(mask.sum(-1), 1)
  rho = np.exp(np.where(mask, new - old, 0.0).sum(-1) / n)
  clipped = -adv * np.clip(rho, 1 - eps, 1 + eps) > -adv * rho
  want = np.maximum(-adv * rho, -adv * np.clip(rho, 1 - eps, 1 + eps)).mean()
  assert 0 < clipped.sum() < b  # both branches occur
  f = lambda x: gspo_clip(x, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),  # noqa: E731
                          clip_eps=eps)
  (loss, m), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(new))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  want_grad = np.where(mask & ~clipped[:, None], (-adv * rho / n)[:, None] / b, 0.0)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
  assert float(m["clip_frac"]) == pytest.approx(clipped.mean())


# ----------------------------------------------------------------------- rollout and replay

_jit = lambda f: jax.jit(f, static_argnums=0, compiler_options=FAST)  # noqa: E731
_stats, _terms, _replay = (_jit(dlr_rule.chain_stats), _jit(dlr_rule.objective_terms),
                           _jit(replay))


@pytest.fixture(scope="module")
def mlp_roll():
  ctx = _ctx("mlp").replace(return_logits=True)
  params = _params(ctx)
  return ctx, params, _roll(ctx, params)


@pytest.mark.parametrize("assistant", ["mlp", "tiny-assistant"])
def test_replay_reproduces_the_rollouts_chain_and_logits(assistant, mlp_roll):
  if assistant == "mlp":
    ctx, params, traj = mlp_roll
  else:
    ctx = _ctx(assistant).replace(return_logits=True)
    params = _params(ctx)
    traj = _roll(ctx, params)
  z, eps, mu, ls = _stats(ctx, params, traj)
  np.testing.assert_allclose(z, mu + jnp.exp(ls) * eps, atol=1e-5)  # the chain replays
  assert float(jnp.abs(eps).max()) > 0.1
  terms = _terms(ctx, params, traj, None).ratio  # B N
  np.testing.assert_allclose(terms[:, :T], traj.logp[:, :T], rtol=1e-5, atol=1e-5)
  ids = np.asarray(traj.ids)
  assert (ids[:, :T] == LAT).all() and (ids[:, T] == EOT).all()
  out = _replay(ctx, params, traj)  # the main model on [prompt, z, <eot>, answer]
  live = np.asarray(traj.response_mask)
  np.testing.assert_allclose(np.asarray(out.logits)[live], np.asarray(traj.logits)[live],
                             atol=1e-4)


def test_rollout_compiles_once_per_prompt_bucket_and_greedy_uses_the_means():
  ctx = _ctx(greedy=True)
  params = _params(ctx)

  @chex.assert_max_traces(n=2)
  def roll(ctx, params, ids, mask, key):
    return sample_trajectory(ctx, params, ids, mask, key)
  fn = jax.jit(roll, static_argnums=0, compiler_options=FAST)
  for bucket, key in [(8, 0), (8, 1), (16, 2), (16, 3), (8, 4)]:
    traj = fn(ctx, params, *_batch(bucket), jax.random.key(key))
  with pytest.raises(AssertionError):
    fn(ctx, params, *_batch(32), jax.random.key(5))  # a third bucket: a third trace
  _, eps, mu, _ = _stats(ctx, params, traj)
  assert float(jnp.abs(eps).max()) == 0.0
  np.testing.assert_allclose(traj.records["z"][:, :T], mu, atol=1e-5)  # greedy: z = μ


# ----------------------------------------------------------------------- the frozen main model


def _rl_cfg():
  rl = dlr_config.get_config().rl
  rl.unlock()
  rl.group_size, rl.param_groups = G, dlr_config.dlr_groups(assistant=1e-2, projection=1e-2)
  return rl


def test_main_model_gets_no_gradient_no_state_and_is_never_donated(mlp_roll):
  ctx, params, traj = mlp_roll
  rewards = jnp.asarray([1.5, -0.5, 0.5, -1.5] * 2, jnp.float32)
  spec = LossSpec.from_config(_rl_cfg())
  old = behaviour_logp(ctx, params, traj)
  adv = adv_lib.grpo(rewards, G)
  grads = jax.jit(jax.grad(lambda p: policy_loss(ctx, spec, p, None, traj, adv, None, old,
                                                 rewards)[0]), compiler_options=FAST)(params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(grads["model"]))
  assert float(jnp.abs(grads["heads"]["assistant"]["up"]["kernel"]).max()) > 0
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(
      grads["heads"]["assistant_start"]))
  opt = make_rl_optimizer(_rl_cfg(), 10)
  state = opt.init(params)
  n_state = sum(x.size for x in jax.tree.leaves(state))
  n_trainable = sum(x.size for x in jax.tree.leaves(params["heads"]["assistant"]))
  assert n_state <= 2 * n_trainable + 8  # Adam's two moments of the assistant, and counts
  model = params["model"]
  before = jax.tree.map(np.array, model)
  start = jax.tree.map(np.array, params["heads"]["assistant_start"])
  update = make_update(ctx, spec, opt)
  # the update donates the trainable heads: a copy, so the module's fixture stays whole
  p = {**params, "heads": jax.tree.map(lambda x: jnp.array(x, copy=True), params["heads"])}
  s = state
  for _ in range(2):
    p, s, m = update(p, s, None, traj, adv, None, old, rewards)
    assert bool(m["ok"]) and float(m["grad_norm"]) > 0
  assert not any(x.is_deleted() for x in jax.tree.leaves(model))  # never donated
  assert all(y is x for x, y in zip(jax.tree.leaves(model), jax.tree.leaves(p["model"])))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, p["model"]))
  jax.tree.map(np.testing.assert_array_equal, start,
               jax.tree.map(np.asarray, p["heads"]["assistant_start"]))
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(params["heads"]["assistant"]), jax.tree.leaves(p["heads"]["assistant"]))]
  assert all(moved), "every assistant tensor receives an update"


def test_total_loss_with_the_configs_beta_and_gamma_matches_numpy(mlp_roll):
  """L = L_pg + β·KL̄ + γ·L_cl (docs/dlr.md) with configs/dlr.py's ε, β, γ, similarity and
  temperature, re-derived in NumPy float64 from the replayed chain statistics (μ, log σ of
  the moved assistant and of `assistant_start`, the stored z and ε, the embedding RMS s):

      s_t  = mean_d log N(z_t; μ_t, σ_t),   ℓ_i = mean_t (s_t − s_t^old),   ρ_i = exp(ℓ_i)
      L_pg = (1/B) Σ_i max(−A_i ρ_i, −A_i clip(ρ_i, 1 − ε, 1 + ε))
      KL̄   = mean_{i,t,d} [log σ⁰/σ + (σ² + (μ − μ⁰)²) / (2σ⁰²) − ½]
      L_cl = −mean_{p,k} log softmax_j(cos(z̃_k, z̃_j) / τ)_k,  z̃ = (μ + σ ε) / s

  against the learner's total loss (the second update of a batch: old terms from the start)."""
  ctx0, params, traj = mlp_roll
  c = dlr_config.get_config()
  beta, gamma, tau, eps = c.dlr.beta, c.dlr.gamma, c.dlr.temperature, c.rl.clip_eps
  assert (c.dlr.similarity, beta, gamma, tau, eps) == ("cosine", 0.01, 0.1, 0.5, 3e-4)
  ctx = ctx0.replace(objective_cfg={"group_size": G, "beta": beta, "gamma": gamma,
                                    "similarity": c.dlr.similarity, "temperature": tau})
  rl = _rl_cfg()
  spec = LossSpec.from_config(rl)
  old = behaviour_logp(ctx, params, traj)  # fixed before the first update
  rng = np.random.default_rng(11)
  moved = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape), x.dtype),
                       params["heads"]["assistant"])
  policy = {**params, "heads": {**params["heads"], "assistant": moved}}
  rewards = np.asarray([1.5, -0.5, 0.5, -1.5, -0.5, 1.5, 1.5, -0.5], np.float32)
  adv = adv_lib.compute_advantages(adv_lib.AdvantageSpec.from_config(rl), jnp.asarray(rewards))
  loss, m = jax.jit(policy_loss, static_argnums=(0, 1), compiler_options=FAST)(
      ctx, spec, policy, None, traj, adv, None, old, jnp.asarray(rewards))

  def np_stats(assistant):
    p = {**params, "heads": {**params["heads"], "assistant": assistant}}
    return [np.asarray(x, np.float64) for x in _stats(ctx, p, traj)]  # z, ε, μ, log σ
  z, e, mu, ls = np_stats(moved)
  _, _, mu0, ls0 = np_stats(params["heads"]["assistant_start"])
  _, _, mu_old, ls_old = np_stats(params["heads"]["assistant"])
  assert (np.asarray(traj.ids)[:, :T] == LAT).all()  # every row's chain is scored
  logn = lambda mu_, ls_: (-0.5 * ((z - mu_) / np.exp(ls_)) ** 2 - ls_  # noqa: E731
                           - 0.5 * np.log(2 * np.pi)).mean(-1)  # B T
  s_new, s_old = logn(mu, ls), logn(mu_old, ls_old)
  np.testing.assert_allclose(np.asarray(old)[:, :T], s_old, rtol=1e-5)
  b = len(rewards)
  a = np.zeros(b)
  for g in range(b // G):
    r = rewards[g * G:(g + 1) * G].astype(np.float64)
    a[g * G:(g + 1) * G] = (r - r.mean()) / (r.std(ddof=1) + rl.adv_eps)
  pg, n_clipped = 0.0, 0
  for i in range(b):
    rho = np.exp(np.mean(s_new[i] - s_old[i]))
    unclipped, clipped = -a[i] * rho, -a[i] * np.clip(rho, 1 - eps, 1 + eps)
    n_clipped += clipped > unclipped
    pg += max(unclipped, clipped) / b
  assert 0 < n_clipped < b  # both branches of the clip occur
  kl = np.mean(ls0 - ls + (np.exp(2 * ls) + (mu - mu0) ** 2) / (2 * np.exp(2 * ls0)) - 0.5)
  emb = np.asarray(params["model"]["embed"]["embedding"], np.float64)
  chains = ((mu + np.exp(ls) * e) / np.sqrt(np.mean(emb ** 2))).reshape(b, -1)
  l_cl = 0.0
  for g in range(b // G):
    u = chains[g * G:(g + 1) * G]
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    sim = u @ u.T / tau
    for k in range(G):
      l_cl -= (sim[k, k] - np.log(np.exp(sim[k]).sum())) / b
  assert kl > 1e-3 and abs(l_cl - np.log(G)) > 1e-3
  want = pg + beta * kl + gamma * l_cl
  np.testing.assert_allclose(float(m["pg_loss"]), pg, rtol=1e-5)
  np.testing.assert_allclose(float(m["aux_dlr_chain_kl"]), beta * kl, rtol=1e-5)
  np.testing.assert_allclose(float(m["aux_dlr_contrastive"]), gamma * l_cl, rtol=1e-5)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def _tensor_hash(folder):
  from safetensors.numpy import load_file
  t = load_file(os.path.join(folder, "model.safetensors"))
  return hashlib.sha256(b"".join(k.encode() + t[k].tobytes() for k in sorted(t))).hexdigest()


def test_short_run_exports_the_main_model_bit_identical_and_evaluates_the_pair(tmp_path):
  from lrjax.metrics import read_metrics
  from lrjax.phases import PHASES, workdir
  from lrjax.phases.run import Run
  c = dlr_config.get_config()
  c.unlock()
  c.mode = "rl"  # from the random tiny model: its export before RL is the reference
  c.rule.num_latent, c.dlr.assistant = 2, "mlp"
  c.data.train_size, c.data.sft_size = 200, 100
  c.eval.num_problems, c.eval.batch_size, c.eval.sampled, c.eval.max_new = 4, 4, False, 4
  c.eval.show_samples = 0
  c.rl.steps, c.rl.num_prompts, c.rl.group_size, c.rl.max_new = 2, 2, 2, 6
  c.rl.eval_every, c.checkpoint.every = 2, 2
  work = str(tmp_path / "run")
  run = Run.create(c, work)
  start = workdir.export(run, "start", run.params)
  PHASES.get("rl")(run)
  assert _tensor_hash(f"{work}/rl/export") == _tensor_hash(start)
  assert os.path.exists(f"{work}/rl/export/lrjax_heads.safetensors")
  lines = [r for r in read_metrics(work) if r["phase"] == "rl" and "train/grad_norm" in r]
  assert [r["step"] for r in lines] == [1, 2]
  assert all(k in lines[0] for k in ("train/contrastive", "train/chain_kl", "train/sigma_mean"))
  for r in lines:  # the share correct, read off the dual rewards R in {+-1 +- lambda}
    assert r["train/correct"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert r["train/reward"] <= r["train/correct"] * 1.5 + (1 - r["train/correct"]) * -0.5 + 1e-6
  e = dlr_config.get_config()
  e.unlock()
  e.mode, e.init, e.dlr.assistant, e.rule.num_latent = "eval", work, "mlp", 0
  e.eval.num_problems, e.eval.batch_size, e.eval.sampled, e.eval.max_new = 4, 4, False, 4
  e.eval.show_samples, e.data.train_size, e.data.sft_size = 0, 200, 100
  pair = Run.create(e, str(tmp_path / "eval"))
  PHASES.get("eval")(pair)
  got = [r for r in read_metrics(str(tmp_path / "eval")) if r["phase"] == "eval"][-1]
  assert got["eval/latent_steps"] == 3.0  # 2 latents + <eot>: the assistant's chain was read
  PHASES.get("span_probe")(pair)  # the main model read with token spans of T = 2 (stored)
  [m] = [r for r in read_metrics(str(tmp_path / "eval")) if r["phase"] == "span_probe"]
  assert all(0.0 <= m[f"probe/accuracy_{f}"] <= 1.0 for f in ("none", "answer", "other"))
  assert m["probe/answer_gain"] == m["probe/accuracy_answer"] - m["probe/accuracy_other"]
  assert OBJECTIVES.get("dlr").heads == ("assistant", "assistant_start")


def test_dual_reward_is_positive_exactly_when_correct():
  ctx = RuleContext(model_cfg=CFG, rule="dlr", objective="dlr",
                    objective_cfg={"lambda_format": 0.5})
  fn = OBJECTIVES.get("dlr").reward(rewards.hash_exact, ctx)
  cut = OBJECTIVES.get("dlr").correct_above
  for text, correct in (("1+1=2 #### 2", True), ("#### 2 #### 2", False), ("1+1=3 #### 3", False),
                        ("no answer", False)):
    assert (fn(text, "2") > cut) == correct, text


def test_configs_validate_and_gamma_zero_is_a_flag():
  from lrjax.config_utils import ConfigError
  from lrjax.phases import PHASES
  from lrjax.validate import validate_config
  c = dlr_config.get_config()
  assert validate_config(c, PHASES) == ["sft", "rl"]
  assert c.rl.objective == "dlr" and c.rl.loss == "gspo_clip" and c.rl.beta == 0.0
  c.rl.group_size = 16
  assert c.dlr.group_size == 16  # the contrastive groups follow rl.group_size
  c.dlr.lambda_format = 1.0  # R > 0 would no longer mean a correct answer
  with pytest.raises(ConfigError, match=r"config.dlr.lambda_format=1.0 must be in \[0, 1\)"):
    validate_config(c, PHASES)
  p = dlr_config.get_config("paper")
  assert validate_config(p, PHASES) == ["rl"]
  assert (p.rule.num_latent, p.rl.group_size, p.dlr.beta, p.dlr.gamma) == (32, 64, 0.01, 0.1)
