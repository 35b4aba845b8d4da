"""LoRA adapters (lrjax/model/lora.py): W' = W + (α/r) A B reaches every consumer.

The references merge by hand in NumPy (W + (α/r) a @ b) and run the plain
forward on the merged tree, or load the export in transformers. The model is
the 1-layer `tiny` decoder; jit with XLA's backend optimisation off, as
tests/test_learner.py.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.config_utils import ConfigError
from lrjax.latent import RuleContext
from lrjax.model import logits as api_logits, lora, preset, save_hf
from lrjax.model.hf_io import hf_tensor_name
from lrjax.optim import ParamGroups
from lrjax.rl import learner as L
from lrjax.rollout import Sampling, replay
from lrjax.rollout.engine import sample_trajectory
from tests.e2e_runs import FAST_COMPILER_OPTIONS as FAST
from tests import test_replay as replay_tests

RANK, ALPHA = 4, 8.0
CFG = preset("tiny").replace(num_layers=2, lora_rank=RANK, lora_alpha=ALPHA,
                             lora_targets=lora.TARGETS)
CTX = RuleContext(CFG, "token", sampling=Sampling(1.0), eos_id=-1, pad_id=0, max_new=5,
                  return_logits=True)
rollout = jax.jit(sample_trajectory, static_argnums=0, compiler_options=FAST)  # one compile
pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")


def with_adapters(seed: int = 0, b_std: float = 0.3) -> dict:
  """A random backbone with adapters whose B is random (b_std 0: B = 0 as initialised)."""
  params = lora.attach(CFG, replay_tests.random_params(CFG, seed, 0.05), jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 16))
  return {**params, "lora": jax.tree.map(
      lambda x: x if b_std == 0 or x.shape[-2] != RANK else b_std * jax.random.normal(next(keys), x.shape),
      params["lora"])}


def merged_by_hand(params: dict) -> dict:
  """The plain backbone with W + (α/r) a @ b in NumPy (float64, then float32)."""
  out = jax.tree.map(np.asarray, lora.base(params))
  for group, names in params["lora"].items():
    for name, ab in names.items():
      w = out["layers"][group][name]["kernel"].astype(np.float64)
      d = np.einsum("lir,lro->lio", np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64))
      out["layers"][group][name]["kernel"] = (w + ALPHA / RANK * d).astype(np.float32)
  return out


def ids_batch(b=4, t=6, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, CFG.vocab_size, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[1, :3] = 0  # one left-padded row
  return ids, mask


def test_init_shapes_and_b_zero_leaves_outputs_unchanged():
  base = replay_tests.random_params(CFG, 0, 0.05)
  params = lora.attach(CFG, base, jax.random.key(0))
  a, b = params["lora"]["attn"]["q"]["a"], params["lora"]["attn"]["q"]["b"]
  assert a.shape == (2, 128, RANK) and b.shape == (2, RANK, 128)
  assert params["lora"]["mlp"]["down"]["a"].shape == (2, 352, RANK)
  assert float(jnp.std(a)) > 0 and not np.any(np.asarray(b))
  ids, mask = ids_batch()
  logits = jax.jit(api_logits, static_argnums=0, compiler_options=FAST)
  np.testing.assert_array_equal(np.asarray(logits(CFG, params, ids, mask)),
                                np.asarray(logits(CFG, base, ids, mask)))
  ctx, key = CTX, jax.random.key(3)
  t0 = rollout(ctx, {"model": base, "rule": {}, "heads": {}}, ids, mask, key)
  t1 = rollout(ctx, {"model": params, "rule": {}, "heads": {}}, ids, mask, key)
  np.testing.assert_array_equal(np.asarray(t0.ids), np.asarray(t1.ids))
  np.testing.assert_array_equal(np.asarray(t0.logits), np.asarray(t1.logits))


def test_rollout_and_forward_use_merged_weights():
  """The rollout's logits (decode.prepare) and the replay / learner forward with adapters
  equal the plain forward of the hand-merged kernels, and differ from the base's."""
  params = with_adapters()
  hand = merged_by_hand(params)
  ids, mask = ids_batch()
  logits = jax.jit(api_logits, static_argnums=0, compiler_options=FAST)
  got = np.asarray(logits(CFG, params, ids, mask))
  np.testing.assert_allclose(got, np.asarray(logits(CFG, hand, ids, mask)), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(got - np.asarray(logits(CFG, lora.base(params), ids, mask)))) > 1e-2
  ctx = CTX
  traj = rollout(ctx, {"model": params, "rule": {}, "heads": {}}, ids, mask, jax.random.key(1))
  replay_fn = jax.jit(replay, static_argnums=0, compiler_options=FAST)
  ref = replay_fn(ctx, {"model": hand, "rule": {}, "heads": {}}, traj)  # teacher-forced, merged
  np.testing.assert_allclose(np.asarray(traj.logits), np.asarray(ref.logits), rtol=1e-4, atol=1e-4)
  base = replay_fn(ctx, {"model": lora.base(params), "rule": {}, "heads": {}}, traj)
  assert np.max(np.abs(np.asarray(traj.logits) - np.asarray(base.logits))) > 1e-2


def test_save_hf_exports_merged_kernels_and_transformers_agrees(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  params = with_adapters(seed=2)
  path = save_hf(CFG, params, str(tmp_path / "export"))
  from safetensors.numpy import load_file
  tensors = load_file(path + "/model.safetensors")
  assert not any("lora" in k for k in tensors)
  for group, name in (("attn", "q"), ("attn", "o"), ("mlp", "down")):
    for layer in range(CFG.num_layers):
      ab = params["lora"][group][name]
      w = np.asarray(params["layers"][group][name]["kernel"][layer], np.float64)  # in out
      expect = w + ALPHA / RANK * np.asarray(ab["a"][layer], np.float64) @ np.asarray(ab["b"][layer],
                                                                                      np.float64)
      got = tensors[hf_tensor_name(("layers", group, name, "kernel"), layer)]  # out in
      np.testing.assert_allclose(got.T, expect, rtol=1e-6, atol=1e-6)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
  ids, mask = ids_batch()
  with torch.no_grad():
    pos = torch.from_numpy(np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int64))
    hf = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
               attention_mask=torch.from_numpy(mask.astype(np.int64)), position_ids=pos).logits
  np.testing.assert_allclose(hf.numpy()[mask.astype(bool)],
                             np.asarray(api_logits(CFG, params, ids, mask))[mask.astype(bool)],
                             rtol=1e-4, atol=1e-4)


def test_rank_mismatch_and_unknown_target_raise():
  params = with_adapters()
  with pytest.raises(ValueError, match="rank 4"):
    lora.merged(CFG.replace(lora_rank=8), params)
  with pytest.raises(ValueError, match="unknown LoRA target 'qkv'"):
    lora.check_targets("q,qkv")
  assert lora.check_targets("q, v") == ("q", "v")


def test_groups_must_freeze_the_base():
  tree = {"model": with_adapters(b_std=0), "rule": {}, "heads": {}}
  assert lora.trainable_base_paths(ParamGroups(((".*", 1e-3),)), tree)
  frozen = ParamGroups((("model/lora/.*", 1e-3), ("model/.*", None), (".*", 1e-3)))
  assert lora.trainable_base_paths(frozen, tree) == []


def test_update_trains_adapters_only_and_reference_is_the_base():
  """One RL update (token rule, β > 0) with the base frozen by rl.param_groups: the base
  is bit-identical, B moves; the reference is the base with adapters off, so with B = 0
  the KL is 0 and with B ≠ 0 it equals the KL against the plain base tree."""
  ctx = CTX
  ids, mask = ids_batch()
  groups = ParamGroups((("model/lora/.*", 1e-2), ("model/.*", None), (".*", 1e-2)))
  opt = L.make_grouped_optimizer(groups)
  spec = L.LossSpec(loss="ppo_clip", beta=0.1)
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
  loss_fn = jax.jit(L.policy_loss, static_argnums=(0, 1), compiler_options=FAST)

  def kl(params):
    traj = rollout(ctx, params, ids, mask, jax.random.key(0))
    _, m = loss_fn(ctx, spec, params, lora.reference_copy(params), traj, adv, None)
    _, m_plain = loss_fn(ctx, spec, params, {**params, "model": lora.base(params["model"])},
                         traj, adv, None)
    return traj, float(m["kl_mean"]), float(m_plain["kl_mean"])

  start = {"model": with_adapters(b_std=0), "rule": {}, "heads": {}}
  traj, k0, _ = kl(start)
  assert k0 == 0.0
  moved = {**start, "model": with_adapters(b_std=0.3)}
  _, k1, k1_plain = kl(moved)
  assert k1 > 1e-4 and k1 == pytest.approx(k1_plain, rel=1e-6)
  update = L.make_update(ctx, spec, opt)
  state = opt.init(start)
  before = jax.tree.map(np.asarray, start)
  new, _, m = update(jax.tree.map(jnp.copy, start), state, lora.reference_copy(start), traj, adv,
                     None)
  assert bool(m["ok"])
  for k in ("embed", "layers", "final_norm"):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new["model"][k]),
                 before["model"][k])
  assert np.any(np.asarray(new["model"]["lora"]["attn"]["q"]["b"]) != 0)


def test_rl_phase_rejects_trainable_base():
  from configs import base as base_config
  from lrjax.phases.rl import check_param_groups
  from lrjax.phases.run import Run
  c = base_config.get_config()
  c.model.lora.rank, c.model.lora.alpha = RANK, ALPHA

  def run():
    return Run(config=c, workdir="", mesh=None, task=None, tokenizer=None, model_cfg=CFG,
               special={"eos_id": 1, "pad_id": 0}, metrics=None,
               params=replay_tests.random_params(CFG, 0, 0.05))
  with pytest.raises(ConfigError, match="trains adapters only.*model/embed/embedding"):
    check_param_groups(run())
  c.rl.param_groups = (("model/lora/.*", 1e-3), ("model/.*", None), (".*", 1e-3))
  check_param_groups(run())


def test_hrpo_paper_preset_trains_adapters_only():
  from configs import hrpo
  c = hrpo.get_config("qwen2.5-1.5b")
  assert (c.model.lora.rank, c.model.lora.alpha) == (32, 64.0)
  assert lora.check_targets(c.model.lora.targets) == lora.TARGETS
  groups = ParamGroups(tuple(c.rl.param_groups))
  tree = {"model": with_adapters(b_std=0), "heads": {},
          "rule": {"lambda": jnp.zeros(3), "gate_i": {"kernel": jnp.zeros(2)}}}
  assert lora.trainable_base_paths(groups, tree) == []
  lrs = {p: groups.lr(g) for p, g in groups.assign(tree).items()}
  assert lrs["model/lora/attn/q/a"] == lrs["model/lora/mlp/down/b"] == 5e-6
  assert lrs["rule/lambda"] == 1e-3 and lrs["rule/gate_i/kernel"] == 1e-4


def test_adapters_are_sharded_like_their_kernels():
  """On a fake 2x2x2 mesh, A B gets the PartitionSpec of the kernel it is added to."""
  from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P
  from lrjax import parallel
  mesh = AbstractMesh((2, 2, 2), parallel.AXES, axis_types=(AxisType.Auto,) * 3)
  shapes = jax.eval_shape(with_adapters)
  for group, name in (("attn", "q"), ("attn", "o"), ("mlp", "up"), ("mlp", "down")):
    w = parallel.param_spec(f"model/layers/{group}/{name}/kernel",
                            shapes["layers"][group][name]["kernel"].shape, mesh)
    a = parallel.param_spec(f"model/lora/{group}/{name}/a", shapes["lora"][group][name]["a"].shape, mesh)
    b = parallel.param_spec(f"model/lora/{group}/{name}/b", shapes["lora"][group][name]["b"].shape, mesh)
    assert w[0] is None and (a[1], b[2]) == (w[1], w[2]) and a[2] is None and b[1] is None
    assert w != P()


def test_config_rows_name_the_lora_field():
  from configs import base as base_config
  from lrjax.phases import PHASES
  from lrjax.validate import validate_config
  c = base_config.get_config()
  validate_config(c, PHASES)  # rank 0: alpha and targets are not read
  c.model.lora.rank = 4
  with pytest.raises(ConfigError, match="model.lora.alpha"):
    validate_config(c, PHASES)
  c.model.lora.alpha, c.model.lora.targets = 8.0, "q,proj"
  with pytest.raises(ConfigError, match="model.lora.targets.*'proj'"):
    validate_config(c, PHASES)
  c.model.lora.targets = "q,v"
  validate_config(c, PHASES)


# --- LoRA through the RL phase, with resume --------------------------------------------

def _lora_rl(workdir, reward):
  """configs/grpo.py's RL phase alone on the random tiny model, rank-2 adapters on q and
  v (the base frozen by the groups), 3 steps, a checkpoint every step; the run."""
  from configs import grpo  # noqa: PLC0415
  from lrjax.compare import apply_overrides  # noqa: PLC0415
  from lrjax.phases.pipeline import prepare, run_phases  # noqa: PLC0415
  from tests.test_main import FAST  # noqa: PLC0415
  c = grpo.get_config()
  apply_overrides(c, [f.removeprefix("--config.") for f in FAST] + [
      "mode=rl", "model.lora.rank=2", "model.lora.alpha=4.0", "model.lora.targets=q,v",
      "rl.param_groups=(('model/lora/.*', 0.01), ('model/.*', None), ('.*', 0.01))",
      f"rl.reward={reward}", "rl.steps=3", "rl.num_prompts=4", "rl.group_size=2",
      "rl.max_new=8", "eval.num_problems=4", "eval.batch_size=4", "eval.max_new=8",
      "rl.eval_every=3", "rl.log_every=1", "checkpoint.every=1"])
  run, phases = prepare(c, str(workdir))
  start = jax.device_get(run.params)
  run_phases(run, phases)
  return start, run


def test_lora_rl_phase_resumes_bit_identical(tmp_path, capsys):
  """The adapters train, the base stays as it started, and a run resumed from its
  step-2 checkpoint (step 3's checkpoint, export and DONE removed, as a kill leaves
  it) ends with the uninterrupted run's adapters and export, bit for bit."""
  import shutil  # noqa: PLC0415
  from safetensors.numpy import load_file  # noqa: PLC0415
  from lrjax import rewards  # noqa: PLC0415
  rewards.REWARDS.register("test_even_length")(
      lambda completion, answer: float(len(completion) % 2 == 0))  # varies within a group
  try:
    full, cut = tmp_path / "full", tmp_path / "cut"
    start, run = _lora_rl(full, "test_even_length")
    params = jax.device_get(run.params)
    assert set(params["lora"]["attn"]) == {"q", "v"}
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(params["lora"]))  # B moved
    base = {k: v for k, v in params.items() if k != "lora"}
    jax.tree.map(np.testing.assert_array_equal, base, start)  # frozen
    shutil.copytree(full, cut)
    for p in ("rl/DONE", "rl/ckpt/3", "rl/export"):
      shutil.rmtree(cut / p) if (cut / p).is_dir() else os.remove(cut / p)
    capsys.readouterr()
    _, resumed = _lora_rl(cut, "test_even_length")
    assert "resuming phase 'rl' from its checkpoint at step 2" in capsys.readouterr().out
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), params)
    a = load_file(str(full / "rl" / "export" / "model.safetensors"))
    b = load_file(str(cut / "rl" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and not any("lora" in k for k in a)  # merged kernels
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  finally:
    rewards.REWARDS.unregister("test_even_length")
