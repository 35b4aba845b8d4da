"""Replay = rollout: one teacher-forced forward over the stored inputs reproduces the
logits the jitted while-loop sampled from, for every rule.

Tolerance: float32, max |Δlogit| <= 1e-4 on every non-DONE response position
(measured ~1e-6: the cached one-token steps and the full forward differ only in
matmul shapes / summation order).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
from lrjax.latent import (ANSWER, DONE, LATENT, RULES, RuleContext, StepOut, ThoughtRule,
                          embedding_table)
from lrjax.methods import hrpo as hybrid
from lrjax.model import abstract_params, preset
from lrjax.rollout import Sampling, pad_prompts, replay, sample_trajectory, token_logp
from tests.e2e_runs import FAST_COMPILER_OPTIONS as FAST

TOL = 1e-4
CFG = preset("tiny")
B, N, BUCKET = 4, 12, 8
EOS, BOT, LAT, EOT = 1, 60, 61, 62
PROMPTS = [[20, 21, 22], [5, 9, 13, 17, 21, 25, 29, BOT], [BOT], [40, 41, 42, 43, BOT]]
K = 4  # the test double's top-K


def random_params(cfg, seed: int, std: float = 0.05) -> dict:
  """Backbone with N(0, std) weights, unit norms, zero biases (no init compile)."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.ones(s.shape, s.dtype)
    if "bias" in name:
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract_params(cfg))


def model_params() -> dict:
  """The random backbone of these tests; E[eos] x -8 so that some rows end early."""
  m = random_params(CFG, 0)
  m["embed"]["embedding"] = m["embed"]["embedding"].at[EOS].multiply(-8.0)
  return m


# --- a test double for LEPO / Latent-GRPO shaped rules: [B, K] ids + weights per step ---

def _double_step(ctx, params, logits, hidden, key, state, aux=None):
  emb = embedding_table(params)  # V H
  tau = ctx.sampling.temperature
  scores = logits / tau + jax.random.gumbel(key, logits.shape)  # B V
  top_s, top_i = jax.lax.top_k(scores, K)  # B K
  w = jax.nn.softmax(top_s, axis=-1)  # B K
  latent = state["t"] < ctx.opt("latent_steps", 3)  # B
  y = top_i[:, 0].astype(jnp.int32)  # B
  soft = jnp.einsum("bk,bkh->bh", w, emb[top_i])  # B H
  return StepOut(
      token=y, logp=token_logp(logits, y, tau), sampled=jnp.ones_like(latent),
      span=jnp.where(latent, LATENT, ANSWER).astype(jnp.int8),
      next_embed=jnp.where(latent[:, None], soft, emb[y]),
      record={"topk_ids": jnp.where(latent[:, None], top_i, 0).astype(jnp.int32),
              "topk_w": jnp.where(latent[:, None], w, 0.0)},
      state={"t": state["t"] + 1})


def _double_replay(ctx, params, traj, aux=None):
  emb = embedding_table(params)  # V H
  w = jax.lax.stop_gradient(traj.records["topk_w"])  # B N K
  soft = jnp.einsum("bnk,bnkh->bnh", w, emb[traj.records["topk_ids"]])  # B N H
  return jnp.where((traj.span == LATENT)[..., None], soft, emb[traj.ids])


def _double_spec(ctx, batch, max_new):
  return {"topk_ids": jax.ShapeDtypeStruct((batch, max_new, K), jnp.int32),
          "topk_w": jax.ShapeDtypeStruct((batch, max_new, K), jnp.float32)}


@pytest.fixture(scope="module", autouse=True)
def topk_mix_rule():
  """The test rule is in the global RULES registry for this module's tests only."""
  RULES.register("test_topk_mix")(ThoughtRule(
      step=_double_step, replay_inputs=_double_replay,
      init_state=lambda ctx, b: {"t": jnp.zeros((b,), jnp.int32)}, record_spec=_double_spec))
  try:
    yield
  finally:
    RULES.unregister("test_topk_mix")


# --- shared contexts (tests/test_rollout.py uses identical ones: one compile each) ---

def contexts() -> dict:
  base = dict(eos_id=EOS, max_new=N, return_logits=True)
  return {
      "token": RuleContext(CFG, "token", **base),
      "hidden": RuleContext(CFG, "hidden", sampling=Sampling(greedy=True), bot_id=BOT,
                            latent_id=LAT, eot_id=EOT, num_latent=3, **base),
      "hybrid": RuleContext(CFG, "hybrid", {"r_min": 0.5}, sampling=Sampling(temperature=0.7),
                            **base),
      "test_topk_mix": RuleContext(CFG, "test_topk_mix", {"latent_steps": 4}, **base),
  }


def hybrid_aux() -> dict:
  return hybrid.delimiter_aux(build_char_tokenizer(DEFAULT_ALPHABET), "####", CFG.vocab_size)


# The gate's initial values, compiled at XLA's default optimisation level whatever the
# suite's XLA_FLAGS: the inputs of the numerical tests are then the same bits under
# every setting (eager ops would round differently under the fast-compile options).
_rule_init = jax.jit(hybrid.init_params, static_argnums=(0, 1),
                     compiler_options={"xla_backend_optimization_level": 3})


def full_params() -> dict:
  """One tree for every rule (same structure: the rollout compiles are shared)."""
  return {"model": model_params(), "heads": {},
          "rule": _rule_init(CFG, contexts()["hybrid"].rule_cfg, jax.random.key(3))}


@pytest.fixture(scope="module")
def setup():
  ids, mask = pad_prompts(PROMPTS, BUCKET)
  return contexts(), full_params(), jnp.asarray(ids), jnp.asarray(mask), hybrid_aux()


def fast_jit(fn, **kw):
  """`fn` jitted with the suite's fast-compile options (semantics unchanged); every jit of
  `sample_trajectory` made here shares one cache, so tests/test_rollout.py reuses these
  compiles (`rollout` itself is tested there)."""
  return jax.jit(fn, static_argnums=0, compiler_options=FAST, **kw)


rollout_fast = fast_jit(sample_trajectory)
replay_fast = fast_jit(replay)


@jax.jit
def _mixing(params, traj, aux):
  ctx = contexts()["hybrid"]
  return (hybrid.replay_inputs(ctx, params, traj, aux), embedding_table(params)[traj.ids],
          hybrid.hybrid_ratio(ctx, params, traj, aux))


@pytest.mark.parametrize("rule", ["token", "hidden", "hybrid", "test_topk_mix"])
def test_replay_matches_rollout_logits(setup, rule):
  ctxs, params, ids, mask, aux = setup
  ctx = ctxs[rule]
  aux = aux if rule == "hybrid" else None  # as test_rollout.py calls them: shared compiles
  traj = rollout_fast(ctx, params, ids, mask, jax.random.key(7), aux)
  hidden, logits = replay_fast(ctx, params, traj, aux)
  chex.assert_shape(logits, (B, N, CFG.vocab_size))
  chex.assert_shape(hidden, (B, N, CFG.hidden_size))
  chex.assert_type(logits, jnp.float32)
  live = np.asarray(traj.span) != DONE
  assert live.sum() > B  # several steps per row were generated
  assert 0 < (~live).sum() and live.all(-1).any()  # finished (padded) and truncated rows
  diff = np.abs(np.asarray(logits) - np.asarray(traj.logits))[live]
  print(f"{rule}: max |replay - rollout| logit diff = {diff.max():.2e} over {live.sum()} positions")
  assert diff.max() <= TOL
  # the behaviour log-probs are recomputable from the replayed logits
  lp = np.asarray(token_logp(logits, traj.ids, ctx.sampling.temperature))
  sampled = np.asarray(traj.sampled)
  np.testing.assert_allclose(lp[sampled], np.asarray(traj.logp)[sampled], atol=TOL)
  if rule == "test_topk_mix":  # [B, N, K] records travel through engine and replay
    chex.assert_shape([traj.records["topk_ids"], traj.records["topk_w"]], (B, N, K))
    np.testing.assert_allclose(np.asarray(traj.records["topk_w"]).sum(-1)[:, :4], 1.0, atol=1e-5)


def test_hybrid_mixing_matters(setup):
  """r_min 0.5: the think-span inputs differ clearly from the plain token embeddings."""
  ctxs, params, ids, mask, aux = setup
  ctx = ctxs["hybrid"]
  traj = rollout_fast(ctx, params, ids, mask, jax.random.key(7), aux)
  think = np.asarray(traj.records["think"])
  assert think.any()
  xs, plain, ratio = _mixing(params, traj, aux)
  gap = np.abs(np.asarray(xs) - np.asarray(plain)).max(-1)  # B N
  assert gap[think].min() > 1e-3
  np.testing.assert_array_equal(gap[~think], 0.0)
  ratio = float(ratio)
  assert 0.05 < ratio < 1.0


def test_hybrid_replay_gradients(setup):
  """Gradient flows into params['rule'] and the embedding table, not into the stored ĥ."""
  ctxs, params, ids, mask, aux = setup
  ctx = ctxs["hybrid"]
  traj = rollout_fast(ctx, params, ids, mask, jax.random.key(7), aux)
  weights = jax.random.normal(jax.random.key(1), (B, N, CFG.vocab_size))
  live = (traj.span != DONE)[..., None]

  def loss(p, soft):
    t = traj.replace(records={**traj.records, "soft": soft})
    _, logits = replay(ctx, p, t, aux)
    return jnp.sum(jnp.where(live, logits * weights, 0.0))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=FAST)
  g_params, g_soft = grad(params, traj.records["soft"])
  for name, g in [("gate_r", g_params["rule"]["gate_r"]["kernel"]),
                  ("gate_i", g_params["rule"]["gate_i"]["kernel"]),
                  ("lambda", g_params["rule"]["lambda"]),
                  ("embedding", g_params["model"]["embed"]["embedding"])]:
    assert float(jnp.abs(g).max()) > 0.0, name
  np.testing.assert_array_equal(np.asarray(g_soft), 0.0)
