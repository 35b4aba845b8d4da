"""rl.param_groups: first-match fullmatch semantics, frozen groups, the clip over trainable
gradients, checkpoint round trip, and bit-identity with the hard-coded HRPO optimizer."""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import hrpo
from lrjax.checkpoint import Checkpointer, abstract_state
from lrjax.config_utils import ConfigError
from lrjax.latent import RuleContext, init_rule_params
from lrjax.model import init, preset
from lrjax.optim import ParamGroups, make_grouped_optimizer, path_str
from lrjax.rl.learner import LossSpec, make_rl_optimizer, make_update, policy_loss
from lrjax.rollout import Sampling, pad_prompts, rollout
from tests.e2e_runs import FUSION_EMITTERS

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")

SPEC = LossSpec(loss="reinforce_onpolicy", aggregation="seq_mean", beta=0.005,
                kl_reference="token_inputs")


def _tree():
  z = lambda *s: jnp.zeros(s)
  return {"model": {"a": {"kernel": z(2, 3)}, "ab": z(3), "layers": {"mlp": {"up": z(4)}}},
          "rule": {"lambda": z(5), "gate": {"kernel": z(2, 2)}}, "heads": {}}


def test_first_match_wins():
  groups = ParamGroups((("rule/lambda", 1.0), ("rule/.*", 2.0), ("model/layers/.*", None),
                        (".*", 3.0)))
  assert groups.assign(_tree()) == {
      "model/a/kernel": 3, "model/ab": 3, "model/layers/mlp/up": 2,
      "rule/gate/kernel": 1, "rule/lambda": 0}
  # the same patterns in another order: '.*' first takes everything
  everything = ParamGroups(((".*", 3.0), ("rule/lambda", 1.0)))
  assert set(everything.assign(_tree()).values()) == {0}
  # 'rule/.*' before 'rule/lambda' shadows it
  shadowed = ParamGroups((("rule/.*", 2.0), ("rule/lambda", 1.0), (".*", 3.0)))
  assert shadowed.assign(_tree())["rule/lambda"] == 0


def test_fullmatch_not_search_or_prefix():
  groups = ParamGroups((("model/a", 1.0), ("kernel", 2.0), ("model/a.*", 3.0), (".*", 4.0)))
  got = groups.assign(_tree())
  # 'model/a' and 'kernel' would match 'model/a/kernel' with re.match / re.search
  assert got["model/a/kernel"] == 2
  assert got["model/ab"] == 2
  assert got["rule/gate/kernel"] == 3
  assert ParamGroups((("model/ab", 1.0), (".*", 2.0))).assign(_tree())["model/ab"] == 0


def test_unmatched_parameter_is_refused_with_its_path():
  groups = ParamGroups((("model/.*", 1.0), ("rule/gate/.*", 2.0)))
  with pytest.raises(ConfigError) as e:
    groups.assign(_tree())
  msg = str(e.value)
  assert "rule/lambda" in msg and "rl.param_groups" in msg
  assert "'model/.*'" in msg and "'rule/gate/.*'" in msg
  assert "\n" not in msg
  # through the RL optimizer too (the tree's paths are only known at init)
  rl = types.SimpleNamespace(param_groups=(("model/.*", 1e-4),), schedule="constant",
                             warmup_steps=0, clip_norm=1.0, weight_decay=0.0, b1=0.9, b2=0.99)
  with pytest.raises(ConfigError, match="'rule/lambda'"):
    make_rl_optimizer(rl, 10).init(_tree())


def test_split_and_merge_round_trip():
  groups = ParamGroups((("rule/lambda", None), ("model/layers/.*", None), (".*", 1.0)))
  tree = _tree()
  trainable, frozen = groups.split(tree)
  assert {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]} == {
      "model/a/kernel", "model/ab", "rule/gate/kernel"}
  assert {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(frozen)[0]} == {
      "model/layers/mlp/up", "rule/lambda"}
  chex.assert_trees_all_equal_structs(groups.merge(trainable, frozen), tree)
  # nothing frozen: the trainable part is the tree itself (same structure, same leaves)
  t, _ = ParamGroups(((".*", 1.0),)).split(tree)
  assert jax.tree.structure(t) == jax.tree.structure(tree)


# --------------------------------------------------------------------------- the RL update


@pytest.fixture(scope="module")
def setup():
  from lrjax.data.tokenizer import build_char_tokenizer
  from lrjax.methods.hrpo import delimiter_aux
  cfg = preset("tiny")
  aux = delimiter_aux(build_char_tokenizer("0123456789+-*=<># ab,?\n"))
  ctx = RuleContext(model_cfg=cfg, rule="hybrid", rule_cfg={"c": 8.0, "r_min": 0.95, "top_k": 50},
                    sampling=Sampling(1.0), eos_id=1, pad_id=0, max_new=10)
  params = {"model": init(cfg, jax.random.key(0)), "rule": init_rule_params(ctx, jax.random.key(1)),
            "heads": {}}
  prompts = [list(np.random.default_rng(i).integers(3, 40, size=4 + i % 5)) for i in range(8)]
  ids, mask = pad_prompts(prompts, 16, 0)
  traj = rollout(ctx, params, ids, mask, jax.random.key(2), aux)
  adv = jnp.asarray(np.random.default_rng(0).normal(size=8), jnp.float32)
  return types.SimpleNamespace(ctx=ctx, params=params, traj=traj, adv=adv, aux=aux,
                               ref={"model": params["model"], "rule": params["rule"], "heads": {}})


def _copy(t):
  return jax.tree.map(jnp.array, t)


def _old_rl_optimizer(rl, lr, lr_gate, lr_lambda, total_steps):
  """The optimizer before rl.param_groups (fields rl.lr, rl.lr_gate, rl.lr_lambda), verbatim."""
  def param_group(path):
    if path[0] == "rule":
      return "lambda" if path[-1] == "lambda" else "gate"
    return "heads" if path[0] == "heads" else "backbone"

  def adamw(lr):
    if rl.schedule == "cosine":
      sched = optax.warmup_cosine_decay_schedule(0.0, lr, rl.warmup_steps, total_steps)
    elif rl.warmup_steps:
      sched = optax.warmup_constant_schedule(0.0, lr, rl.warmup_steps)
    else:
      sched = lr
    return optax.adamw(sched, b1=rl.b1, b2=rl.b2, weight_decay=rl.weight_decay)

  groups = {"backbone": adamw(lr), "gate": adamw(lr_gate), "lambda": adamw(lr_lambda),
            "heads": adamw(lr)}

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_group(tuple(str(getattr(k, "key", k)) for k in path)), params)

  tx = optax.multi_transform(groups, labels)
  return optax.chain(optax.clip_by_global_norm(rl.clip_norm), tx) if rl.clip_norm else tx


def _old_update(ctx, spec, optimizer):
  """The RL update before parameter groups (every parameter differentiated), verbatim."""
  def update(params, opt_state, ref_model, traj, advantages, aux):
    grad_fn = jax.value_and_grad(
        lambda p: policy_loss(ctx, spec, p, ref_model, traj, advantages, aux), has_aux=True)
    (_, metrics), grads = grad_fn(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(metrics, grad_norm=optax.tree.norm(grads))
  return jax.jit(update, donate_argnums=(0, 1))


@pytest.mark.parametrize("preset_arg, lrs", [
    (None, (3e-5, 1e-3, 1e-2)),  # configs/hrpo.py: constant schedule, clip 1.0
    ("qwen2.5-1.5b", (5e-6, 1e-4, 1e-3)),  # cosine, clip 0.1, weight decay 0.1
])
def test_hrpo_groups_are_bit_identical_to_the_old_optimizer(setup, preset_arg, lrs):
  rl = hrpo.get_config(preset_arg).rl
  if preset_arg:  # the preset trains LoRA adapters (tests/test_lora.py); here its optimizer
    rl.param_groups = hrpo.hrpo_groups(*lrs)  # settings on the full tree
  total = 5
  old_tx = _old_rl_optimizer(rl, *lrs, total_steps=total)
  new_tx = make_rl_optimizer(rl, total)
  p_old, s_old = _copy(setup.params), old_tx.init(setup.params)
  p_new, s_new = _copy(setup.params), new_tx.init(setup.params)
  batch = (setup.ref, setup.traj, setup.adv, setup.aux)
  # two different programs compared bit for bit: both with XLA's fusion emitters
  old = _old_update(setup.ctx, SPEC, old_tx).lower(p_old, s_old, *batch).compile(
      compiler_options=FUSION_EMITTERS)
  new = make_update(setup.ctx, SPEC, new_tx).lower(p_new, s_new, *batch).compile(
      compiler_options=FUSION_EMITTERS)
  for _ in range(3):
    p_old, s_old, m_old = old(p_old, s_old, *batch)
    p_new, s_new, m_new = new(p_new, s_new, *batch)
    assert float(m_old["grad_norm"]) == float(m_new["grad_norm"])
    assert float(m_old["loss"]) == float(m_new["loss"])
  chex.assert_trees_all_equal_structs(p_old, p_new)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(p_old)[0], jax.tree.leaves(p_new)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path_str(path))
  # the comparison is not vacuous: every group moved, the gate and Lambda at their own rates
  moved = {path_str(p): float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(setup.params)[0],
                                jax.tree.leaves(p_new))}
  assert moved["rule/lambda"] > 0 and moved["rule/gate_i/kernel"] > 0
  assert moved["model/embed/embedding"] > 0


FROZEN = (("rule/lambda", None), ("rule/.*", 3e-3), ("model/layers/mlp/.*", None),
          ("heads/.*", None), (".*", 1e-4))
FROZEN_PATHS = {"rule/lambda", "model/layers/mlp/down/kernel", "model/layers/mlp/gate/kernel",
                "model/layers/mlp/up/kernel", "heads/probe"}


def _with_probe(params):
  # an integer leaf: jax.grad refuses it, so it can only pass when it is not differentiated
  return dict(params, heads={"probe": jnp.arange(6, dtype=jnp.int32)})


CLIP = 1e-3  # small enough to clip with or without the frozen gradients


@pytest.fixture(scope="module")
def frozen(setup):
  """(optimizer, jitted update) with FROZEN groups: compiled once for the tests below."""
  opt = make_grouped_optimizer(ParamGroups(FROZEN), schedule="constant", clip_norm=CLIP,
                               weight_decay=0.1, b1=0.9, b2=0.99)
  return opt, make_update(setup.ctx, SPEC, opt)


def _moments_by_path(opt_state, name):
  """{parameter path: leaf} of the Adam moment `name` ('mu' or 'nu') in an opt_state."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    names = [getattr(k, "name", None) for k in path]
    if name in names:
      out[path_str(path[names.index(name) + 1:])] = x
  return out


def test_frozen_groups_never_change_and_have_no_optimizer_state(setup, frozen):
  params = _with_probe(setup.params)
  opt, update = frozen
  state = opt.init(params)
  p = _copy(params)
  for _ in range(4):
    p, state, _ = update(p, state, setup.ref, setup.traj, setup.adv, setup.aux)
  before = dict((path_str(k), v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0])
  after = dict((path_str(k), v) for k, v in jax.tree_util.tree_flatten_with_path(p)[0])
  assert before.keys() == after.keys() and FROZEN_PATHS <= after.keys()
  for path in before:
    a, b = np.asarray(before[path]), np.asarray(after[path])
    if path in FROZEN_PATHS:
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b, err_msg=path)
    else:
      assert np.abs(a - b).max() > 0, f"trainable {path} did not move"
  # no optimizer state for a frozen parameter: not in the moments, no leaf of its
  # shape, and the state holds exactly 2 moments of every trainable parameter
  trainable = before.keys() - FROZEN_PATHS
  assert set(_moments_by_path(state, "mu")) == trainable
  assert set(_moments_by_path(state, "nu")) == trainable
  frozen_shapes = {before[k].shape for k in FROZEN_PATHS if k != "rule/lambda"}
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  assert not [path_str(k) for k, x in leaves if x.shape in frozen_shapes]
  assert not [jax.tree_util.keystr(k) for k, _ in leaves
              if "lambda" in jax.tree_util.keystr(k) or "mlp" in jax.tree_util.keystr(k)]
  n_state = sum(x.size for _, x in leaves if x.ndim > 0)
  assert n_state == 2 * sum(before[k].size for k in trainable)


def test_a_trainable_integer_leaf_is_differentiated(setup):
  """The control of the test above: with heads/probe trainable the update does
  take its gradient, which jax refuses for an int32 leaf."""
  opt = make_grouped_optimizer(ParamGroups(((".*", 1e-4),)), clip_norm=1.0)
  params = _with_probe(setup.params)
  with pytest.raises(TypeError, match="int32"):
    make_update(setup.ctx, SPEC, opt)(_copy(params), opt.init(params), setup.ref, setup.traj,
                                      setup.adv, setup.aux)


def test_clip_norm_is_over_trainable_gradients_only(setup, frozen):
  clip = CLIP
  opt, update = frozen
  params = _with_probe(setup.params)
  _, state, m = update(_copy(params), opt.init(params), setup.ref, setup.traj, setup.adv,
                       setup.aux)
  # NumPy reference from the gradient of every parameter
  grads = jax.jit(jax.grad(lambda p: policy_loss(setup.ctx, SPEC, p, setup.ref, setup.traj,
                                                 setup.adv, setup.aux)[0]))(setup.params)
  g = {path_str(k): np.asarray(v, np.float64)
       for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
  trainable = [k for k in g if k not in FROZEN_PATHS]
  norm_t = np.sqrt(sum((g[k] ** 2).sum() for k in trainable))
  norm_all = np.sqrt(sum((v ** 2).sum() for v in g.values()))
  # the frozen gradients would change the clip scale by far more than the tolerance
  assert norm_all > 1.01 * norm_t and norm_t > clip
  np.testing.assert_allclose(float(m["grad_norm"]), norm_t, rtol=1e-5)
  mu = _moments_by_path(state, "mu")  # after one step: mu = (1 - b1) * clipped gradient
  for k in trainable:
    np.testing.assert_allclose(np.asarray(mu[k]), 0.1 * g[k] * clip / norm_t, rtol=2e-4,
                               atol=1e-5 * np.abs(g[k]).max() * clip / norm_t, err_msg=k)


def test_checkpoint_round_trip_with_frozen_groups(setup, frozen, tmp_path):
  params = _with_probe(setup.params)
  opt, update = frozen
  fresh = {"params": _copy(params), "opt_state": opt.init(params)}
  target = abstract_state(fresh)
  p, s, _ = update(_copy(params), opt.init(params), setup.ref, setup.traj, setup.adv, setup.aux)
  state = {"params": p, "opt_state": s}
  with Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
    ck.save(1, state, {"phase": "rl"})
  with Checkpointer(str(tmp_path / "ck")) as ck:
    restored, meta = ck.restore(target)
  assert meta == {"phase": "rl"}
  chex.assert_trees_all_equal_structs(restored, state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # and training goes on from the restored state exactly as from the live one
  p1, _, _ = update(_copy(state["params"]), _copy(state["opt_state"]), setup.ref, setup.traj,
                    setup.adv, setup.aux)
  p2, _, _ = update(restored["params"], restored["opt_state"], setup.ref, setup.traj,
                    setup.adv, setup.aux)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sft_optimizer_is_the_old_construction():
  """lrjax.optim.make_optimizer (SFT) = the AdamW + clip + schedule it replaced."""
  from lrjax.optim import make_optimizer
  params = {"w": jax.random.normal(jax.random.key(0), (5, 3)), "b": jnp.ones(3)}
  for schedule, warmup in (("constant", 0), ("constant", 3), ("cosine", 2)):
    if schedule == "constant" and warmup <= 0:
      sched = optax.constant_schedule(1e-2)
    elif schedule == "constant":
      sched = optax.warmup_constant_schedule(0.0, 1e-2, warmup)
    else:
      sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup, 8, 1e-2 * 0.0)
    old = optax.chain(optax.clip_by_global_norm(0.5),
                      optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01))
    new = make_optimizer(1e-2, 0.01, warmup, 8, schedule, 0.5)
    pa, sa, pb, sb = params, old.init(params), params, new.init(params)
    for i in range(6):
      g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)) * 3.0, pa)
      ua, sa = old.update(g, sa, pa)
      ub, sb = new.update(g, sb, pb)
      pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rl_precheck_refuses_an_unmatched_parameter_before_any_phase():
  """lrjax.main runs this (PRECHECKS['rl']) right after building the model."""
  from lrjax.phases import PRECHECKS
  from lrjax.phases.run import Run
  cfg = preset("tiny")
  run = Run(config=hrpo.get_config(), workdir="", mesh=None, task=None, tokenizer=None,
            model_cfg=cfg, special={"eos_id": 1, "pad_id": 0}, metrics=None,
            params=init(cfg, jax.random.key(0)))
  PRECHECKS.get("rl")(run)  # HRPO's groups cover the hybrid rule
  run.config.rl.param_groups = (("model/.*", 1e-4), ("rule/gate.*", 1e-3))
  with pytest.raises(ConfigError, match="parameter 'rule/lambda' matches none of the patterns"):
    PRECHECKS.get("rl")(run)
  run.config.rule.name = "token"  # no rule parameters: the same groups now cover everything
  PRECHECKS.get("rl")(run)
