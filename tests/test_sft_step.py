"""SFT loss, optimizer, curriculum and the jitted train step (one compile per bucket)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax.config_utils import ConfigError
from lrjax.data.tasks import Problem
from lrjax.model import init, preset
from lrjax.optim import make_optimizer, make_schedule
from lrjax.sft import (build_batch, curriculum_stage, make_train_step, masked_cross_entropy,
                       reset_on_stage_switch, sft_loss, stage_switched)
from tests.test_sft_sequences import LAT, P3, TOK

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")

CFG = preset("tiny")
PROBLEMS = [P3, Problem("qqqq", ("a b", "c", "d"), "dd"), Problem("qq", ("a",), "b"),
            Problem("q q", ("b", "a c"), "c")]
OPT = make_optimizer(lr=3e-3, weight_decay=0.01, clip_norm=1.0)
STEP = make_train_step(CFG, OPT, "cot", max_traces=1)  # one bucket: (B, T, n) = (4, 24, 0)


def test_masked_cross_entropy_by_hand():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))  # B T V
  labels = jnp.array([[1, 4, 0], [2, 2, 3]])
  mask = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
  loss, aux = jax.jit(masked_cross_entropy)(logits, labels, mask)
  lp = np.asarray(jax.nn.log_softmax(logits))
  nll = [-lp[0, 0, 1], -lp[0, 2, 0], -lp[1, 1, 2], -lp[1, 2, 3]]
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-6)
  hits = [np.argmax(lp[b, t]) == labels[b, t] for b, t in [(0, 0), (0, 2), (1, 1), (1, 2)]]
  np.testing.assert_allclose(aux["accuracy"], np.mean(hits))
  assert aux["num_tokens"] == 4
  zero, _ = jax.jit(masked_cross_entropy)(logits, labels, jnp.zeros_like(mask))
  assert zero == 0.0  # no loss tokens: 0, not NaN


def test_train_step_reduces_loss_and_compiles_once_per_bucket():
  params = init(CFG, jax.random.PRNGKey(0))
  opt_state = OPT.init(params)
  batch = build_batch(PROBLEMS, TOK, "cot", max_len=64, pad_to_multiple=8)  # T = 24
  chex.assert_shape(batch.ids, (4, 24))
  losses = []
  for _ in range(20):
    params, opt_state, metrics = STEP(params, opt_state, batch)
    losses.append(float(metrics["loss"]))
  assert set(metrics) == {"loss", "accuracy", "num_tokens", "grad_norm", "ok"}
  assert bool(metrics["ok"])
  assert metrics["num_tokens"] == batch.loss_mask.sum()
  assert losses[-1] < 0.5 * losses[0], losses
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0
  chex.assert_tree_all_finite(params)
  # The same bucket with other contents (nocot rows, padded to T = 24) never
  # retraces; another bucket shape is a new trace, which max_traces=1 rejects.
  same = build_batch(PROBLEMS[:1] * 4, TOK, "nocot", max_len=24)
  for b in (same, batch):
    params, opt_state, _ = STEP(params, opt_state, b)
  other = build_batch(PROBLEMS, TOK, "cot", max_len=32)
  with pytest.raises(AssertionError, match="max_traces"):
    STEP(params, opt_state, other)


def test_a_non_finite_step_changes_nothing():
  """A poisoned step (NaN loss and gradients) leaves the parameters and the optimizer
  state bit-identical; a clean one updates (guarded_update itself: tests/test_faults.py)."""
  step = make_train_step(CFG, OPT, "cot")
  params = init(CFG, jax.random.PRNGKey(1))
  batch = build_batch(PROBLEMS, TOK, "cot", max_len=64, pad_to_multiple=8)
  before = jax.tree.map(np.asarray, (params, OPT.init(params)))
  p, o, m = step(*jax.tree.map(jnp.asarray, before), batch, jnp.asarray(True))
  assert not bool(m["ok"]) and not np.isfinite(float(m["grad_norm"]))
  jax.tree.map(np.testing.assert_array_equal, (p, o), before)
  p, o, m = step(*jax.tree.map(jnp.asarray, before), batch, jnp.asarray(False))
  assert bool(m["ok"]) and np.isfinite(float(m["loss"]))
  assert not np.array_equal(np.asarray(p["embed"]["embedding"]), before[0]["embed"]["embedding"])


def test_sft_loss_mode_checks():
  params = None  # the mode is checked first
  coconut = build_batch([P3], TOK, "coconut", stage=1, max_len=24, latent_ids=LAT)
  with pytest.raises(ValueError, match="latent slots"):
    sft_loss(CFG, params, coconut, "cot")
  with pytest.raises(ValueError, match="unknown SFT mode"):
    make_train_step(CFG, OPT, "rl")


def test_optimizer_and_schedules():
  sched = make_schedule("constant", 1e-3, warmup_steps=10)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(1000)], [0, 5e-4, 1e-3, 1e-3])
  cos = make_schedule("cosine", 1e-3, warmup_steps=10, total_steps=110)
  np.testing.assert_allclose([cos(10), cos(60), cos(110)], [1e-3, 5e-4, 0.0], atol=1e-9)
  assert make_schedule("constant", 1e-4)(123) == pytest.approx(1e-4)
  with pytest.raises(ValueError, match="total_steps"):
    make_schedule("cosine", 1e-3)
  with pytest.raises(ValueError, match="unknown schedule"):
    make_schedule("linear", 1e-3)
  # from a config path the error names the field
  with pytest.raises(ConfigError, match=r"^config\.sft\.schedule='linear' is not one of: constant, cosine$"):
    make_optimizer(lr=1e-3, schedule="linear", field="sft.schedule")
  # AdamW with decoupled decay: a zero gradient still shrinks the weights by lr * wd.
  opt = make_optimizer(lr=0.1, weight_decay=0.5, clip_norm=1.0)
  params = {"w": jnp.ones(3)}
  updates, _ = opt.update({"w": jnp.zeros(3)}, opt.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones(3), rtol=1e-6)


def test_curriculum_stage_and_reset():
  # Every stage lasts 100 steps; 3 latent stages + the final one (num_stages = 4).
  assert [curriculum_stage(s, 100, 4) for s in (0, 99, 100, 250, 399, 400, 10_000)] == \
      [0, 0, 1, 2, 3, 4, 4]
  # Per-stage durations.
  assert [curriculum_stage(s, [10, 20, 5], 3) for s in (0, 9, 10, 29, 30, 34, 35, 99)] == \
      [0, 0, 1, 1, 2, 2, 3, 3]
  assert [s for s in range(1, 500) if stage_switched(s, 100, 4)] == [100, 200, 300, 400]
  assert not stage_switched(0, 100, 4)
  with pytest.raises(ValueError):
    curriculum_stage(-1, 100, 4)
  # The optimizer state is reset (fresh init, step count 0) only at a switch.
  opt = make_optimizer(lr=1e-3)
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  for _ in range(3):
    _, state = opt.update({"w": jnp.ones(2)}, state, params)
  count = lambda s: max(int(c) for _, c in optax.tree_utils.tree_get_all_with_path(s, "count"))
  assert count(state) == 3
  assert count(reset_on_stage_switch(opt, params, state, 150, 100, 4)) == 3
  assert count(reset_on_stage_switch(opt, params, state, 200, 100, 4)) == 0


def test_a_stage_switch_keeps_the_state_on_the_mesh_and_the_step_compiled():
  """Coconut's fresh optimizer at a switch lands where the state it replaces was: an
  unplaced state would compile the step again at every stage."""
  from lrjax import parallel
  mesh = parallel.make_mesh(None, jax.devices()[:2])
  params = init(CFG, jax.random.PRNGKey(0))
  tree = {"params": params, "opt_state": OPT.init(params)}
  state = jax.device_put(tree, parallel.param_shardings(tree, mesh))  # as the SFT phase does
  step = make_train_step(CFG, OPT, "cot", max_traces=1, mesh=mesh)
  batch = parallel.feed(build_batch(PROBLEMS, TOK, "cot", max_len=64, pad_to_multiple=8), mesh)
  params, opt_state, _ = step(state["params"], state["opt_state"], batch)
  fresh = reset_on_stage_switch(OPT, params, opt_state, 100, 100, 4)
  assert parallel.shardings_of(fresh) == parallel.shardings_of(opt_state)
  count = lambda s: max(int(c) for _, c in optax.tree_utils.tree_get_all_with_path(s, "count"))
  assert count(opt_state) == 1 and count(fresh) == 0
  step(params, fresh, batch)  # max_traces=1: a second trace raises


def test_bfloat16_gradient_matches_float32():
  """The same SFT loss and gradient in bfloat16 (parameters and activations) as in
  float32, from the float32 parameters rounded to bfloat16. Tolerance: bfloat16 keeps
  8 significant bits (relative rounding 2^-9 per operation); through the tiny model's
  layers the measured per-tensor error is ~1%, so 3e-2 relative (L2, per tensor) and
  1e-2 on the loss; a wrong cast or a float32-only path would be off by far more."""
  import dataclasses  # noqa: PLC0415
  from lrjax.sft.step import sft_loss  # noqa: PLC0415
  batch = build_batch(PROBLEMS, TOK, "cot", max_len=64, pad_to_multiple=8)
  p32 = init(CFG, jax.random.PRNGKey(1))
  cfg16 = dataclasses.replace(CFG, dtype="bfloat16")
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)

  def loss_and_grad(cfg, p):
    return jax.value_and_grad(lambda q: sft_loss(cfg, q, batch, "cot")[0].astype(jnp.float32))(p)
  l32, g32 = loss_and_grad(CFG, p32)
  l16, g16 = loss_and_grad(cfg16, p16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g16))
  assert float(l16) == pytest.approx(float(l32), rel=1e-2)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g32)[0], jax.tree.leaves(g16)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert err < 3e-2, (jax.tree_util.keystr(path), err)


def _one_adamw_step(cfg, params, batch, lr):
  """(gradient, parameters after one AdamW step at `lr`) of the SFT loss."""
  from lrjax.sft.step import sft_loss  # noqa: PLC0415
  grads = jax.grad(lambda q: sft_loss(cfg, q, batch, "cot")[0].astype(jnp.float32))(params)
  opt = make_optimizer(lr=lr, weight_decay=0.0)
  updates, _ = opt.update(grads, opt.init(params), params)
  return grads, optax.apply_updates(params, updates)


def test_float32_masters_keep_adamw_steps_below_bfloat16_resolution():
  """bfloat16 compute with float32 master weights (`param_dtype`): the loss and gradient are
  exactly those of the bfloat16-stored parameters (one cast, then the same bfloat16 math;
  the tied embedding's gradient to a bfloat16 rounding, its two uses summed in float32),
  and one AdamW step at lr 3e-5 changes every master element whose gradient is non-zero
  (AdamW's first step is ~lr·sign(g), far above a float32 ulp). The same step on
  bfloat16-stored parameters rounds away in most weight elements (half a bfloat16 ulp of a
  0.02 weight is ~6e-5 > lr: measured 69-70% of them) and in every norm scale (at 1.0:
  2^-8 > lr)."""
  from lrjax.sft.step import sft_loss  # noqa: PLC0415
  batch = build_batch(PROBLEMS, TOK, "cot", max_len=64, pad_to_multiple=8)
  master_cfg = CFG.replace(dtype="bfloat16", param_dtype="float32")
  bf16_cfg = CFG.replace(dtype="bfloat16")  # parameters stored in bfloat16 too
  masters = init(master_cfg, jax.random.PRNGKey(1))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(masters))
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), masters)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(init(bf16_cfg, jax.random.PRNGKey(1))))
  l32 = sft_loss(master_cfg, masters, batch, "cot")[0]
  assert float(l32) == float(sft_loss(bf16_cfg, p16, batch, "cot")[0])
  g32, new32 = _one_adamw_step(master_cfg, masters, batch, 3e-5)
  g16, new16 = _one_adamw_step(bf16_cfg, p16, batch, 3e-5)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g32)[0], jax.tree.leaves(g16)):
    name, a, b = jax.tree_util.keystr(path), np.asarray(a), np.asarray(b, np.float32)
    assert a.dtype == np.float32, name
    if "embed" in name:  # the tied table's two uses (inputs, head) summed in float32, not
      assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2 ** -8, name  # in bfloat16
    else:
      np.testing.assert_array_equal(a, b, err_msg=name)
  for (path, g), p, q, p_16, q_16 in zip(
      jax.tree_util.tree_flatten_with_path(g32)[0], jax.tree.leaves(masters),
      jax.tree.leaves(new32), jax.tree.leaves(p16), jax.tree.leaves(new16)):
    name, live = jax.tree_util.keystr(path), np.asarray(g) != 0
    assert q.dtype == jnp.float32 and live.mean() > 0.5, name
    assert np.all(np.asarray(q)[live] != np.asarray(p)[live]), name
    if "bias" not in name:  # biases start at 0, where bfloat16 resolves any step
      changed16 = np.mean(np.asarray(q_16)[live] != np.asarray(p_16)[live])
      assert changed16 < (0.01 if "scale" in name else 0.5), (name, changed16)
