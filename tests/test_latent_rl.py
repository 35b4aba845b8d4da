"""Latent RL (arXiv 2512.11816): the value head, its class-weighted BCE and ROC-AUC
against NumPy, the value objective and the online BCE on a real `hidden` rollout
(loss values from an independent NumPy forward of the head on the replayed
states, and which parameters each term moves), the split by problem, and the
config checks.

Tolerances: float32 head forward vs float64 NumPy 1e-5; losses 1e-5.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latent_rl as latent_rl_config
from lrjax.config_utils import ConfigError
from lrjax.latent import RuleContext
from lrjax.phases import PHASES
from lrjax.methods.latr.value_phase import make_head_step, split_by_problem, trainable
from lrjax.phases.workdir import load_tree, save_tree
from lrjax.rl.advantages import ADVANTAGES
from lrjax.rl.learner import LossSpec, policy_loss
from lrjax.latent import thought_positions
from lrjax.methods.latr.value_head import (auto_pos_weight, fit_input_norm, init_value_head,
                                           roc_auc, value_logits, weighted_bce)
from lrjax.rollout import Sampling, pad_prompts, replay, sample_trajectory
from lrjax.validate import validate_config
from tests.test_replay import BOT, CFG, EOS, EOT, FAST, LAT, model_params


def _np_head(head, h):
  norm = head["input_norm"]
  x = (np.asarray(h, np.float64) - np.asarray(norm["mean"], np.float64)) / np.asarray(
      norm["scale"], np.float64)
  n = len(head) - 1
  for i in range(n):
    x = x @ np.asarray(head[f"dense_{i}"]["kernel"], np.float64) + np.asarray(
        head[f"dense_{i}"]["bias"], np.float64)
    if i < n - 1:
      x = np.maximum(x, 0.0)
  return x[..., 0]


def _np_bce(v, y, w, mask=None):
  v, y = np.asarray(v, np.float64), np.asarray(y, np.float64)
  log_sig = -np.logaddexp(0.0, -v)
  log_one_minus = -np.logaddexp(0.0, v)
  per = -(w * y * log_sig + (1 - y) * log_one_minus)
  m = np.ones_like(per, bool) if mask is None else np.asarray(mask, bool)
  return per[m].sum() / max(m.sum(), 1)


def test_head_shapes_forward_and_dropout():
  head = init_value_head(16, jax.random.key(0))
  assert [head[f"dense_{i}"]["kernel"].shape for i in range(4)] == [(16, 128), (128, 32),
                                                                   (32, 8), (8, 1)]
  h = jax.random.normal(jax.random.key(1), (3, 5, 16))
  np.testing.assert_allclose(value_logits(head, h), _np_head(head, h), atol=1e-5)
  # dropout only with a key; different keys drop different units
  np.testing.assert_array_equal(value_logits(head, h, dropout=0.5), value_logits(head, h))
  a = value_logits(head, h, dropout=0.5, key=jax.random.key(2))
  b = value_logits(head, h, dropout=0.5, key=jax.random.key(3))
  assert not np.allclose(a, b) and not np.allclose(a, value_logits(head, h))


def test_weighted_bce_matches_numpy_and_torch_convention():
  rng = np.random.default_rng(0)
  v = rng.normal(0, 3, (6, 7)).astype(np.float32)
  y = rng.random((6, 7)) < 0.3
  mask = rng.random((6, 7)) < 0.7
  for w in (1.0, 20.0):
    np.testing.assert_allclose(weighted_bce(jnp.asarray(v), jnp.asarray(y), w),
                               _np_bce(v, y, w), rtol=1e-5)
    np.testing.assert_allclose(weighted_bce(jnp.asarray(v), jnp.asarray(y), w, jnp.asarray(mask)),
                               _np_bce(v, y, w, mask), rtol=1e-5)
  # stable at large logits (log σ(−60) is −60, not −inf)
  assert np.isfinite(float(weighted_bce(jnp.asarray([60.0, -60.0]), jnp.asarray([0, 1]), 5.0)))
  assert auto_pos_weight(np.array([1, 0, 0, 0, 1, 0])) == 2.0
  assert auto_pos_weight(np.array([0, 0])) == 1.0


def test_roc_auc_is_the_pairwise_probability_with_ties():
  rng = np.random.default_rng(1)
  s = rng.integers(0, 5, 200).astype(float)  # many ties
  y = rng.random(200) < 0.4
  pos, neg = s[y], s[~y]
  brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
      len(pos) * len(neg))
  assert roc_auc(s, y) == pytest.approx(brute, abs=1e-12)
  assert roc_auc(np.arange(4.0), np.array([0, 0, 1, 1])) == 1.0
  assert np.isnan(roc_auc(np.arange(3.0), np.ones(3)))


def test_split_is_by_problem():
  held = split_by_problem(50, 0.2, seed=3)
  assert held.sum() == 10
  problem = np.repeat(np.arange(50), 4)  # 4 responses per problem, as the value phase
  rows = held[problem]
  train_problems, held_problems = set(problem[~rows]), set(problem[rows])
  assert not train_problems & held_problems and len(train_problems | held_problems) == 50
  assert not np.array_equal(held, split_by_problem(50, 0.2, seed=4))  # seeded
  assert split_by_problem(3, 0.01, 0).sum() == 1 and split_by_problem(3, 0.99, 0).sum() == 2
  with pytest.raises(ConfigError, match="latent_rl.prompts"):
    split_by_problem(1, 0.2, 0)


def test_head_training_separates_a_learnable_signal():
  """make_head_step learns a linearly separable label (held-out AUC > 0.95)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1200, 16)).astype(np.float32)
  y = (x[:, 0] + 0.5 * x[:, 1] > 1.0)  # ~20% positives
  head = init_value_head(16, jax.random.key(0), (32, 8))
  import optax  # noqa: PLC0415
  opt = optax.adam(3e-3)
  state = opt.init(trainable(head))
  step = make_head_step(opt, auto_pos_weight(y[:1000]), 0.1)
  for epoch in range(15):
    for i, at in enumerate(range(0, 1000, 100)):
      head, state, _ = step(head, state, jnp.asarray(x[at:at + 100]), jnp.asarray(y[at:at + 100]),
                            jax.random.key(epoch * 10 + i))
  assert roc_auc(np.asarray(value_logits(head, jnp.asarray(x[1000:]))), y[1000:]) > 0.95
  # the fitted input standardisation is not trained
  np.testing.assert_array_equal(head["input_norm"]["scale"], np.ones(16))


# --- the objective and the online BCE on a real `hidden` rollout -----------------------

NUM_LATENT = 3


@pytest.fixture(scope="module")
def rollout():
  ctx = RuleContext(CFG, "hidden", sampling=Sampling(greedy=True), bot_id=BOT, latent_id=LAT,
                    eot_id=EOT, eos_id=EOS, num_latent=NUM_LATENT, max_new=8,
                    objective="latent_value",
                    objective_cfg={"pos_weight": 4.0, "dropout": 0.0})
  prompts = [[20, 21, 22, BOT], [5, 9, 13, BOT], [BOT], [40, 41, 42, 43, BOT]]
  ids, mask = pad_prompts(prompts, 8, 0)
  states = np.random.default_rng(0).normal(0.3, 2.0, (50, CFG.hidden_size))
  head = fit_input_norm(init_value_head(CFG.hidden_size, jax.random.key(7)), states)
  params = {"model": model_params(), "rule": {}, "heads": {"value": head, "value_start": head}}
  traj = jax.jit(sample_trajectory, static_argnums=0,
                 compiler_options=FAST)(ctx, params, ids, mask, jax.random.key(0))
  return ctx, params, traj


def test_objective_and_bce_values(rollout):
  ctx, params, traj = rollout
  rewards = jnp.asarray([1.0, 0.0, 0.0, 1.0])
  spec = LossSpec(aux_losses=(("value_bce", 1.0),))
  adv = ADVANTAGES.get("constant")(rewards, 1)
  loss, m = policy_loss(ctx, spec, params, None, traj, adv, None, rewards=rewards)
  out = replay(ctx, params, traj)
  mask = np.asarray(thought_positions(ctx, traj))
  assert mask.sum(-1).tolist() == [NUM_LATENT] * 4  # t < N on every live row
  # the thought states are the recorded latents (t < N): same positions in both terms
  np.testing.assert_allclose(np.asarray(out.hidden)[:, :NUM_LATENT],
                             np.asarray(traj.records["hidden"])[:, :NUM_LATENT], atol=1e-4)
  v = _np_head(params["heads"]["value"], np.asarray(out.hidden))  # B N
  sig = 1 / (1 + np.exp(-v))
  policy = -sig[mask].mean()
  labels = np.broadcast_to((np.asarray(rewards) > 0.5)[:, None], mask.shape)
  bce = _np_bce(v, labels, 4.0, mask)
  np.testing.assert_allclose(float(m["aux_value_bce"]), bce, rtol=1e-5)
  np.testing.assert_allclose(float(m["pg_loss"]), policy, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(loss), policy + bce, rtol=1e-5)
  np.testing.assert_allclose(float(m["aux_value_bce_value_mean"]), sig[mask].mean(), rtol=1e-5)
  # the objective's metrics read the recorded thoughts (= the replayed states)
  from lrjax.methods.latr.latent_rl import value_metrics  # noqa: PLC0415
  vm = value_metrics(ctx, params, traj)
  np.testing.assert_allclose(float(vm["value_mean"]), sig[mask].mean(), rtol=1e-4)
  # "value_start" is read from its own slot: a different frozen head gives its own mean
  start = fit_input_norm(init_value_head(CFG.hidden_size, jax.random.key(8)),
                         np.asarray(traj.records["hidden"]).reshape(-1, CFG.hidden_size))
  vm = value_metrics(ctx, {**params, "heads": {**params["heads"], "value_start": start}}, traj)
  sig_start = 1 / (1 + np.exp(-_np_head(start, np.asarray(traj.records["hidden"]))))
  np.testing.assert_allclose(float(vm["value_mean_start"]), sig_start[mask].mean(), rtol=1e-4)
  np.testing.assert_allclose(float(vm["value_mean"]), sig[mask].mean(), rtol=1e-4)
  assert abs(sig_start[mask].mean() - sig[mask].mean()) > 1e-3


def test_each_term_moves_only_its_own_parameters(rollout):
  ctx, params, traj = rollout
  rewards = jnp.asarray([1.0, 0.0, 0.0, 1.0])
  adv = jnp.ones(4)

  def grads(spec):
    return jax.grad(lambda p: policy_loss(ctx, spec, p, None, traj, adv, None,
                                          rewards=rewards)[0])(params)
  norm = lambda t: float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(t)))  # noqa: E731
  pol = grads(LossSpec())  # the value objective alone
  assert norm(pol["heads"]) == 0.0 and norm(pol["model"]) > 0.0
  both = grads(LossSpec(aux_losses=(("value_bce", 1.0),)))
  bce_model = jax.tree.map(lambda a, b: a - b, both["model"], pol["model"])
  assert norm(bce_model) < 1e-12 * max(norm(pol["model"]), 1.0)  # the BCE: head only
  assert norm(both["heads"]) > 0.0


def test_heads_round_trip(tmp_path):
  head = {"value": init_value_head(8, jax.random.key(0), (4,))}
  save_tree(str(tmp_path / "h.safetensors"), head)
  back = load_tree(str(tmp_path / "h.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, head, back)


def test_config_and_checks():
  c = latent_rl_config.get_config()
  assert validate_config(c, PHASES) == ["sft", "value", "rl"]
  assert c.rl.group_size == 1 and c.rl.greedy and c.rl.advantage == "constant"
  c.mode = "sft,rl"  # the objective reads a head no phase makes
  with pytest.raises(ConfigError, match="rl.objective.*value"):
    validate_config(c, PHASES)
  c.mode = "sft,value,rl"
  c.latent_rl.widths = (128, 0)
  with pytest.raises(ConfigError, match="latent_rl.widths"):
    validate_config(c, PHASES)
  c.latent_rl.widths = (128,)
  c.rl.objective = "latent_valu"
  with pytest.raises(ConfigError, match="rl.objective"):
    validate_config(c, PHASES)


def test_constant_advantage():
  a = ADVANTAGES.get("constant")(jnp.asarray([0.0, 1.0, 0.0]), 1,
                                 valid=jnp.asarray([True, False, True]))
  np.testing.assert_array_equal(a, [1.0, 0.0, 1.0])


# --- the value phase's head training (`phases.value.train_head`) ----------------------

class _Metrics:
  def __init__(self):
    self.lines = []

  def write(self, phase, step, values):
    self.lines.append((phase, step, values))


def _value_run(epochs=3):
  import types  # noqa: PLC0415
  c = latent_rl_config.get_config()
  c.latent_rl.widths, c.latent_rl.epochs, c.latent_rl.batch_size = (8,), epochs, 64
  c.latent_rl.lr, c.latent_rl.dropout = 3e-2, 0.0
  return types.SimpleNamespace(config=c, model_cfg=types.SimpleNamespace(hidden_size=6),
                               metrics=_Metrics())


def _value_data(labels, n_latent=2, seed=0):
  """States whose first coordinate is the label (+ noise): a learnable signal."""
  labels = np.asarray(labels, bool)
  rng = np.random.default_rng(seed)
  states = rng.normal(size=(len(labels), n_latent, 6)).astype(np.float32)
  states[..., 0] += 3.0 * labels[:, None]
  return {"states": states, "labels": labels, "problem": np.arange(len(labels))}


def test_train_head_keeps_the_best_epoch_as_a_host_copy():
  from lrjax.methods.latr.value_phase import train_head  # noqa: PLC0415
  run = _value_run(epochs=6)
  labels = np.random.default_rng(1).random(200) < 0.4
  head, summary = train_head(run, _value_data(labels), jax.random.key(0))
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(head))
  aucs = [m["value/roc_auc"] for _, _, m in run.metrics.lines]
  assert [s for _, s, _ in run.metrics.lines] == list(range(1, 7))
  assert summary["best_epoch"] == 1 + int(np.argmax(aucs)) and summary["best_roc_auc"] == max(aucs)
  assert summary["best_roc_auc"] > 0.9  # the first coordinate separates the classes
  held = split_by_problem(200, run.config.latent_rl.holdout, run.config.seed)
  assert (summary["train_problems"], summary["heldout_problems"]) == (160, 40)
  assert summary["pos_weight"] == auto_pos_weight(np.repeat(labels[~held], 2))
  # the returned head scores the held-out states with the AUC it was kept for
  d = _value_data(labels)
  x = d["states"][held].reshape(-1, 6)
  y = np.repeat(labels[held], 2)
  assert roc_auc(np.asarray(value_logits(head, jnp.asarray(x))), y) == pytest.approx(
      summary["best_roc_auc"])


def test_train_head_without_a_better_epoch_returns_a_host_copy():
  """Held-out problems of one class: every epoch's AUC is NaN, no epoch beats the
  start, and the initial head comes back on the host, not as the live device tree
  (placed twice, as "value" and "value_start", it would alias one donated buffer)."""
  from lrjax.methods.latr.value_phase import train_head  # noqa: PLC0415
  run = _value_run(epochs=1)
  held = split_by_problem(40, run.config.latent_rl.holdout, run.config.seed)
  labels = ~held  # held-out: all wrong; training: all right, but one wrong below
  labels[np.flatnonzero(~held)[0]] = False
  head, summary = train_head(run, _value_data(labels), jax.random.key(0))
  assert summary["best_epoch"] == 0 and np.isnan(run.metrics.lines[0][2]["value/roc_auc"])
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(head))


@pytest.mark.parametrize("label, says", [(False, "no correct"), (True, "no wrong")])
def test_value_phase_with_one_class_warns_and_keeps_the_initial_head(label, says, capsys):
  """A model that solves every (or no) problem: one warning line, AUC undefined, the
  head returned is the initial one (what random weights or a short warm-up give)."""
  from lrjax.methods.latr.value_phase import init_head, train_head  # noqa: PLC0415
  run = _value_run(epochs=2)
  head, summary = train_head(run, _value_data(np.full(20, label)), jax.random.key(0))
  out = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
  assert len(out) == 1 and f"20 rollouts have {says} response" in out[0], out
  assert "config.sft.steps" in out[0]
  assert summary["best_epoch"] == 0 and summary["best_roc_auc"] == -1.0
  assert all(np.isnan(m[2]["value/roc_auc"]) for m in run.metrics.lines)
  start = init_head(run, jax.random.fold_in(jax.random.key(0), 0))
  for got, want in zip(jax.tree.leaves(trainable(head)), jax.tree.leaves(trainable(start))):
    np.testing.assert_array_equal(got, want)


# --- the value phase end to end, in process: collect, train_head, run_value, then RL ---

def test_value_phase_then_rl(tmp_path, capsys):
  """configs/latent_rl.py's 'value,rl' on a random tiny model (2 thoughts) with a test
  reward that marks the problems with an even answer correct: the rollouts' labels are
  that reward, the phase writes its metrics, head file and DONE, hands "value" and
  "value_start" over as separate buffers (the donated RL update of one must not delete
  the other: 2 held-out problems of one class leave the best epoch at 0, the case that
  crashed), RL runs, and a second run reuses the finished head."""
  import json  # noqa: PLC0415
  from lrjax import rewards  # noqa: PLC0415
  from lrjax.compare import apply_overrides  # noqa: PLC0415
  from lrjax.data.order import data_window  # noqa: PLC0415
  from lrjax.phases.pipeline import prepare, run_phases  # noqa: PLC0415
  from lrjax.methods.latr.value_phase import HEAD_FILE, VALUE_STREAM, run_value  # noqa: PLC0415
  from tests.test_main import FAST  # noqa: PLC0415
  even = lambda completion, answer: float(answer[-1:] in "02468")  # noqa: E731
  rewards.REWARDS.register("test_even_answer")(even)
  try:
    c = latent_rl_config.get_config()
    apply_overrides(c, [f.removeprefix("--config.") for f in FAST] + [
        "mode=value,rl", "rule.num_latent=2", "latent_rl.prompts=12", "latent_rl.epochs=2",
        "latent_rl.batch_size=8", "latent_rl.widths=(8,)", "rl.reward=test_even_answer",
        "rl.steps=1", "rl.num_prompts=4", "rl.max_new=8", "eval.num_problems=4",
        "eval.batch_size=4", "eval.max_new=8", "rl.eval_every=1", "rl.log_every=1"])
    w = str(tmp_path / "w")
    run, phases = prepare(c, w)
    problems = [run.rl_train[i] for i in data_window(c.seed + VALUE_STREAM, len(run.rl_train),
                                                     0, 12)]
    run_phases(run, phases)
    recs = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
    value = [r for r in recs if r["phase"] == "value"]
    assert [r["step"] for r in value if "value/roc_auc" in r] == [1, 2]
    summary = [r for r in value if "value/best_roc_auc" in r][-1]
    assert summary["value/best_epoch"] == 0.0  # held-out problems of one class: AUC NaN
    assert summary["value/train_states"] + summary["value/heldout_states"] == 12 * 2
    assert summary["value/pos_rate"] == pytest.approx(np.mean([even("", p.answer) for p in problems]))
    assert 0 < summary["value/pos_rate"] < 1
    assert os.path.exists(os.path.join(w, "value", HEAD_FILE))
    assert json.load(open(os.path.join(w, "value", "DONE")))["best_epoch"] == 0
    rl = [r for r in recs if r["phase"] == "rl" and "train/loss" in r]
    assert [r["step"] for r in rl] == [1] and np.isfinite(rl[0]["train/loss"])
    assert 0 < rl[0]["train/value_mean_start"] < 1 and 0 < rl[0]["train/value_mean"] < 1
    # a second run reuses the finished head (no rollouts)
    run2, _ = prepare(c, w)
    capsys.readouterr()
    run_value(run2)
    assert "value: reusing the finished head" in capsys.readouterr().out
    a, b = run2.heads["value"], run2.heads["value_start"]
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert all(x.unsafe_buffer_pointer() != y.unsafe_buffer_pointer()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    run2.close()
  finally:
    rewards.REWARDS.unregister("test_even_answer")
