"""Greedy and sampled evaluation run one compiled rollout: temperature and greedy are
traced (`lrjax.sampling.knobs`). Reference: each rule's step and DLR's chain under the
static settings (the programs evaluation compiled before). The traced settings must give
the same ids, spans and masks; floats equal bit for bit at temperature 1 and within
float32 rounding (rtol 1e-5, measured 2e-6) at 0.7, where XLA folds a constant 1/T
into the softmax differently from a traced one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
from lrjax.data.tasks import Problem
from lrjax.latent import RULES, RuleContext
from lrjax.methods.dlr import assistant as asst
from lrjax.phases import held_out
from lrjax.rollout import Sampling, rollout
from lrjax.sampling import knobs, with_knobs
from tests.e2e_runs import FUSION_EMITTERS
from tests.test_replay import CFG, EOS, FAST, N, contexts, fast_jit, full_params, hybrid_aux

B = 4
CASES = {  # rule -> (its context, its aux)
    "token": (contexts()["token"], None),
    "hybrid": (contexts()["hybrid"], "hybrid"),
    "gumbel_soft": (RuleContext(CFG, "gumbel_soft", {"tau": 0.3, "latent_len": 2, "top_k": 8,
                                                     "top_p": 0.95}, eos_id=EOS, max_new=N),
                    None),
    "topk_gumbel": (RuleContext(CFG, "topk_gumbel", {"tau": 0.5, "top_k": 8, "top_p": 0.95,
                                                     "noise_scale": 1.0}, eos_id=EOS,
                                max_new=N), "topk_gumbel"),
}
SETTINGS = [Sampling(temperature=0.7, greedy=True), Sampling(temperature=1.0)]


def _aux(kind):
  return {"hybrid": hybrid_aux, "topk_gumbel": lambda: {"end_id": jnp.asarray(5, jnp.int32)},
          None: lambda: None}[kind]()


def _same(exact: bool):
  def check(got, want):
    if exact or not jnp.issubdtype(want.dtype, jnp.floating):
      np.testing.assert_array_equal(got, want)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  return check


def _static_step(ctx, *args):
  return RULES.get(ctx.rule).step(ctx, *args)


def _traced_step(ctx, values, *args):
  return RULES.get(ctx.rule).step(ctx.replace(sampling=with_knobs(ctx.sampling, values)), *args)


static_step, traced_step = fast_jit(_static_step), fast_jit(_traced_step)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_step_with_traced_settings_equals_the_static_step(rule):
  ctx, aux_kind = CASES[rule]
  aux, params = _aux(aux_kind), full_params()
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (B, CFG.vocab_size)), jnp.float32)
  hidden = jnp.asarray(rng.normal(0, 1, (B, CFG.hidden_size)), jnp.float32)
  state = RULES.get(rule).init_state(ctx, B)
  shared = ctx.replace(sampling=Sampling())
  outs = []
  for s in SETTINGS:
    want = static_step(ctx.replace(sampling=s), params, logits, hidden, jax.random.key(1), state,
                       aux)
    got = traced_step(shared, knobs(s), params, logits, hidden, jax.random.key(1), state, aux)
    jax.tree.map(_same(s.temperature == 1.0), got, want)
    outs.append([np.asarray(x) for x in jax.tree.leaves(got)])
  assert not all(np.array_equal(a, b) for a, b in zip(outs[0], outs[1])), \
      "the greedy and the sampled step agree: the check cannot tell them apart"


def test_dlr_chain_with_traced_greedy_equals_the_static_chain():
  cfg, params = CFG, full_params()["model"]
  head = asst.init_assistant("mlp", cfg, 3, jax.random.key(0), 0.3)
  ids = jnp.asarray([[3, 4, 5, 6], [0, 7, 8, 9]], jnp.int32)
  mask = (ids > 0).astype(jnp.int32)

  def chain(greedy):
    return asst.chain("mlp", cfg, head, params, ids, mask, 3, jax.random.key(2), greedy, -4.0, 0.0)
  opts = dict(FAST, **FUSION_EMITTERS)  # two programs compared bit for bit
  static = jax.jit(chain, static_argnums=0, compiler_options=opts)
  traced = jax.jit(chain, compiler_options=opts)
  for greedy in (True, False):
    got = traced(jnp.asarray(greedy))
    jax.tree.map(np.testing.assert_array_equal, got, static(greedy))
    assert np.all(np.asarray(got.eps) == 0) == greedy


def test_greedy_and_sampled_evaluation_compile_one_rollout():
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  ctx = RuleContext(CFG, "token", sampling=Sampling(temperature=0.5), eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id, max_new=6)
  problems = [Problem(f"{a}+{a}=", (), str(2 * a)) for a in range(1, 6)]
  params = {"model": full_params()["model"], "rule": {}, "heads": {}}
  before = rollout._cache_size()
  m = held_out.evaluate(ctx, params, tok, problems, "hash_exact", jax.random.key(0),
                        batch_size=4, num_samples=2, pass_k=(1, 2), temperature=1.0)
  assert rollout._cache_size() - before == 1, "greedy and sampled evaluation compiled apart"
  assert {"eval/accuracy", "eval/pass@1", "eval/pass@2"} <= set(m)
