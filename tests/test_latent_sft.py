"""Latent-SFT: the rows, masks and positions on a worked example written out by hand,
the latent mixture and the stage-2 loss against NumPy, the stage-1 forward with its
[B, T, T] mask against transformers, and the gradient path of one stage-1 step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.methods.latent_grpo.latent_sft import layout, losses
from lrjax.model import forward, init, preset

# prompt P0 P1 P2, think t1..t5 (k = 2: chunks [t1 t2] [t3 t4] [t5]), tail Z0 Z1
EX = layout.Example(prompt=[11, 12, 13], think=[21, 22, 23, 24, 25], tail=[31, 32])
PAD = 1


def _grid(rows: list[str]) -> np.ndarray:
  return np.array([[ch == "x" for ch in r.replace(" ", "")] for r in rows])


def test_rows_masks_and_positions_by_hand():
  b = layout.stage1_batch([EX], 2, PAD, max_len=64, multiple=1)
  # encoder: P0 P1 P2 t1 t2 C t3 t4 C t5 C
  assert b.enc_ids[0].tolist() == [11, 12, 13, 21, 22, 0, 23, 24, 0, 25, 0]
  assert np.flatnonzero(b.enc_compress[0]).tolist() == [5, 8, 10]
  assert b.comp_cols[0].tolist() == [5, 8, 10]
  induction = _grid([  # keys: P0 P1 P2 t1 t2 C  t3 t4 C  t5 C
      "x . . . . . . . . . .",  # P0
      "x x . . . . . . . . .",  # P1
      "x x x . . . . . . . .",  # P2
      "x x x x . . . . . . .",  # t1
      "x x x x x . . . . . .",  # t2
      "x x x x x x . . . . .",  # C1
      "x x x x x . x . . . .",  # t3: not C1
      "x x x x x . x x . . .",  # t4
      "x x x x x . x x x . .",  # C2
      "x x x x x . x x . x .",  # t5
      "x x x x x . x x . x x",  # C3
  ])
  np.testing.assert_array_equal(b.enc_mask[0], induction)
  # decoder: P0 P1 P2 L1 t3 t4 L2 t5 L3 Z0 Z1
  assert b.ids[0].tolist() == [11, 12, 13, 0, 23, 24, 0, 25, 0, 31, 32]
  assert b.latent_cols[0].tolist() == [3, 6, 8]
  supervision = _grid([  # keys: P0 P1 P2 L1 t3 t4 L2 t5 L3 Z0 Z1
      "x . . . . . . . . . .",  # P0
      "x x . . . . . . . . .",  # P1
      "x x x . . . . . . . .",  # P2
      "x x x x . . . . . . .",  # L1: prompt + itself
      ". . . x x . . . . . .",  # t3: L1 + its chunk
      ". . . x x x . . . . .",  # t4
      "x x x x . . x . . . .",  # L2: prompt + earlier latents
      ". . . . . . x x . . .",  # t5: L2 + itself
      "x x x x . . x . x . .",  # L3
      "x x x x . . x . x x .",  # Z0: prompt + latents, no text
      "x x x x . . x . x x x",  # Z1
  ])
  np.testing.assert_array_equal(b.mask[0], supervision)
  assert b.pos[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 5, 6, 7]
  seq = layout.stage1_batch([EX], 2, PAD, max_len=64, multiple=1, positions="sequential")
  assert seq.pos[0].tolist() == list(range(11))  # the first official version's
  # targets: t3 (at L1), t4, t5 (at L2), Z0 (at L3), Z1; never a latent
  assert b.loss_mask[0].tolist() == [0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0]
  assert b.labels[0, :10].tolist() == b.ids[0, 1:].tolist()
  s2 = layout.stage2_batch([EX], [3], np.zeros((1, 3, 2), np.int32), np.ones((1, 3, 2)),
                           PAD, max_len=64, multiple=1)
  assert s2.ids[0].tolist() == [11, 12, 13, 0, 0, 0, 31, 32]
  assert s2.latent_cols[0].tolist() == [3, 4, 5]
  assert s2.loss_mask[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0]  # Z0 (at L3), Z1


def test_padding_rows_and_columns_are_masked():
  other = layout.Example([11], [21, 22, 23, 24, 25, 26, 27, 28], [31])
  b = layout.stage1_batch([EX, other], 2, PAD, max_len=64, multiple=8)
  assert b.mask.shape == (2, 16, 16) and b.enc_mask.shape == (2, 16, 16)
  n = 11  # EX's decoder row length
  assert not b.mask[0, :n, n:].any() and not b.mask[0, n:, :n].any()
  np.testing.assert_array_equal(b.mask[0, n:, n:], np.eye(16 - n, dtype=bool))
  assert b.latent_cols[0, 3:].tolist() == [16] * 5  # out of range: dropped by the scatter
  assert b.loss_mask[0, n - 1:].sum() == 0


@pytest.mark.parametrize("top_k", [3, 0])
def test_mixture_matches_numpy(top_k):
  rng = np.random.default_rng(0)
  h, e = rng.normal(size=(2, 4, 8)), rng.normal(size=(13, 8))
  mix = losses.mixture(jnp.asarray(h, jnp.float32), jnp.asarray(e, jnp.float32), top_k)
  logits = h @ e.T
  for i in np.ndindex(2, 4):
    ids = np.argsort(-logits[i])[:top_k] if top_k else np.arange(13)
    p = np.exp(logits[i][ids] - logits[i][ids].max())
    p /= p.sum()
    np.testing.assert_array_equal(np.sort(np.asarray(mix.ids[i])), np.sort(ids))
    order = np.argsort(np.asarray(mix.ids[i]))
    np.testing.assert_allclose(np.asarray(mix.probs[i])[order], p[np.argsort(ids)], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(mix.latent[i]), p @ e[ids], rtol=1e-4, atol=1e-5)
  # E is held fixed: no gradient reaches it through the mixture
  g = jax.grad(lambda t: losses.mixture(jnp.asarray(h, jnp.float32), t, top_k).latent.sum())(
      jnp.asarray(e, jnp.float32))
  assert float(jnp.abs(g).max()) == 0.0


def _tiny():
  cfg = preset("tiny").replace(vocab_size=40)
  return cfg, init(cfg, jax.random.key(0))


def test_stage2_loss_matches_numpy_loop():
  cfg, params = _tiny()
  rng = np.random.default_rng(1)
  exs = [EX, layout.Example([11, 14], [21, 22, 23], [31, 32, 33])]
  n, k = [3, 2], 4
  lid = rng.integers(2, 40, size=(2, 3, k)).astype(np.int32)
  lpr = rng.dirichlet(np.ones(k), size=(2, 3)).astype(np.float32) * 0.9  # not normalised
  b = layout.stage2_batch(exs, n, lid, lpr, PAD, max_len=64, multiple=8)
  loss, m = losses.stage2_loss(cfg, params, b, jnp.asarray(b.label_probs), 1.0, 0.5)
  table = np.asarray(params["embed"]["embedding"])
  nll, kls = [], []
  for i, ex in enumerate(exs):  # each row alone, unpadded
    ids = ex.prompt + [0] * n[i] + ex.tail
    x = table[ids].copy()
    p = len(ex.prompt)
    for j in range(n[i]):
      x[p + j] = lpr[i, j] @ table[lid[i, j]]
    out = forward(cfg, params, jnp.asarray(x[None]), jnp.arange(len(ids))[None],
                  jnp.ones((1, len(ids)), jnp.int32))
    logp = np.asarray(jax.nn.log_softmax(out.logits[0], -1))
    for t in range(p + n[i] - 1, len(ids) - 1):  # targets: the tail
      nll.append(-logp[t, ids[t + 1]])
    row = []
    for j in range(n[i]):
      q = lpr[i, j] / (lpr[i, j].sum() + 1e-12)
      row.append(np.sum(q * (np.log(q) - logp[p + j - 1, lid[i, j]])))
    kls.append(np.mean(row))
  ce, kl = np.mean(nll), np.mean(kls)
  np.testing.assert_allclose(float(m["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-5)
  np.testing.assert_allclose(float(loss), ce + 0.5 * kl, rtol=1e-5)


def test_stage1_forward_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  from lrjax.model import load_hf
  from tests.hf_fixtures import make_hf_model
  model = make_hf_model("qwen2")
  model.save_pretrained(tmp_path)
  cfg, params = load_hf(str(tmp_path))
  b = layout.stage1_batch([EX, layout.Example([11], [21, 22, 23, 24], [31])], 2, PAD,
                          max_len=64, multiple=8)
  rng = np.random.default_rng(2)
  x = rng.normal(size=b.ids.shape + (cfg.hidden_size,)).astype(np.float32)
  ours = forward(cfg, params, jnp.asarray(x), jnp.asarray(b.pos), jnp.asarray(b.mask)).logits
  additive = np.where(b.mask, 0.0, np.finfo(np.float32).min)[:, None].astype(np.float32)
  with torch.no_grad():
    ref = model(inputs_embeds=torch.from_numpy(x), attention_mask=torch.from_numpy(additive),
                position_ids=torch.from_numpy(b.pos.astype(np.int64))).logits.numpy()
  valid = b.ids != PAD
  np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=2e-4, rtol=2e-4)


def test_gumbel_perturbation_keeps_end_token_off_top():
  probs = jnp.asarray([[[0.5, 0.45, 0.05], [0.9, 0.05, 0.05]]], jnp.float32)
  ids = jnp.asarray([[[5, 7, 9], [3, 7, 9]]], jnp.int32)  # 7: the end id, second at latent 0
  valid = jnp.asarray([[True, True]])
  out = losses.gumbel_perturb(jax.random.key(0), probs, ids, valid, end_id=7, scale=1.0,
                              temperature=1.0, tries=100)
  np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, rtol=1e-5)
  top = np.take_along_axis(np.asarray(ids), np.asarray(out).argmax(-1)[..., None], -1)
  assert not (top == 7).any()
  # with no noise (scale 0) the labels come back unchanged (log p + 0, softmax)
  same = losses.gumbel_perturb(jax.random.key(0), probs, ids, valid, 7, 0.0, 1.0, tries=2)
  np.testing.assert_allclose(np.asarray(same), np.asarray(probs), rtol=1e-5)


def test_stage1_gradient_reaches_encoder_only_through_latents():
  from lrjax.methods.latent_grpo.sft_phase import initial_encoder
  cfg, dec = _tiny()
  enc = initial_encoder(init(cfg, jax.random.key(1)))
  b = layout.stage1_batch([EX], 2, PAD, max_len=64, multiple=8)
  g = jax.grad(lambda e: losses.stage1_loss(cfg, e, dec, b, 3)[0])(enc)
  assert float(jnp.abs(g["compress"]).max()) > 0
  assert float(jnp.abs(g["model"]["embed"]["embedding"]).max()) > 0
  # the encoder's LM head is never read (tied here: only embedding rows of its inputs move)
  rows = np.abs(np.asarray(g["model"]["embed"]["embedding"])).sum(-1) > 0
  assert set(np.flatnonzero(rows)) <= set(b.enc_ids[0].tolist())
  # the chain rule through the latents alone gives the whole encoder gradient
  lat_of = lambda e: losses.mixture(losses.encode(cfg, e, b), dec["embed"]["embedding"], 3).latent
  lat, vjp = jax.vjp(lat_of, enc)
  g_lat = jax.grad(lambda z: losses.decoder_ce(cfg, dec, b, z)[0])(lat)
  for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(vjp(g_lat)[0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-7)


def test_a_stage_state_is_laid_out_as_its_step_returns_it():
  """Each stage's fresh state (optimizer included) is placed on the mesh as the step
  returns it: otherwise every stage step compiles twice."""
  import types
  from lrjax import optim, parallel
  from lrjax.methods.latent_grpo.sft_phase import (FROZEN, initial_encoder, initial_state,
                                                   make_stage1_step)
  mesh = parallel.make_mesh(None, jax.devices()[:2])
  run = types.SimpleNamespace(mesh=mesh)
  cfg, dec = _tiny()
  opt = optim.make_optimizer(lr=1e-3)
  state = initial_state(run, initial_encoder(dec), dec, opt, ("enc", "dec"), FROZEN)
  b = layout.stage1_batch([EX, EX], 2, PAD, max_len=64, multiple=8)
  step = make_stage1_step(cfg, opt, ("enc", "dec"), FROZEN, 3, parallel.shardings_of(state))
  with jax.set_mesh(mesh):
    for _ in range(2):
      state, _ = step(state, b)
  assert step._cache_size() == 1  # the returned state is the layout it was given


class _Stop(Exception):
  pass


def _stage_run(path, inject_nan_step: int = -1, max_nonfinite: int = 3):
  """A stand-in Run for `sft_phase._train`: the config fields its loop reads."""
  import types
  import ml_collections
  from lrjax.metrics import MetricsWriter
  config = ml_collections.ConfigDict({
      "latent_sft": {"log_every": 1, "eval_every": 100},
      "checkpoint": {"every": 2, "max_to_keep": 2},
      "train": {"inject_nan_step": inject_nan_step, "max_nonfinite": max_nonfinite}})
  return types.SimpleNamespace(config=config, workdir=str(path),
                               metrics=MetricsWriter(str(path), tensorboard=False))


def test_steps_resume_exactly_and_finished_steps_are_reused(tmp_path):
  """A stage step stopped after its step-2 checkpoint resumes there and ends where an
  uninterrupted one does; once DONE it is restored from its checkpoint, not rerun."""
  from lrjax.methods.latent_grpo import sft_phase as phase
  make_run = _stage_run
  step_fn = jax.jit(lambda st, b, step, poison: (
      {"w": st["w"] * 0.5 + b}, {"loss": jnp.sum(st["w"]), "ok": jnp.bool_(True)}))
  calls = []

  def batch(step, stop_at=None):
    if step == stop_at:
      raise _Stop
    calls.append(step)
    return jnp.float32(step + 1)

  start = {"w": jnp.ones((3,), jnp.float32)}
  ref = phase._train(make_run(tmp_path / "a"), "encoder", start, 5, step_fn, batch)
  run = make_run(tmp_path / "b")
  with pytest.raises(_Stop):
    phase._train(run, "encoder", start, 5, step_fn, lambda s: batch(s, stop_at=3))
  calls.clear()
  out = phase._train(run, "encoder", start, 5, step_fn, batch)
  assert calls == [2, 3, 4]  # resumed from the step-2 checkpoint
  np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(ref["w"]))
  calls.clear()
  again = phase._train(run, "encoder", start, 5, step_fn, batch)
  assert calls == []  # DONE: restored, not retrained
  np.testing.assert_array_equal(np.asarray(again["w"]), np.asarray(ref["w"]))


def test_a_non_finite_update_is_skipped_counted_and_stops_after_the_limit(tmp_path):
  """A stage step's NaN update (train.inject_nan_step) leaves the weights and optimizer
  as they were, is counted in `train/nonfinite_skipped`, and the run goes on; as many
  in a row as train.max_nonfinite stop it with the faults module's error."""
  import optax
  from lrjax import faults
  from lrjax.metrics import read_metrics
  from lrjax.methods.latent_grpo import sft_phase as phase
  opt = optax.sgd(0.1)

  @jax.jit
  def step_fn(st, target, step, poison):
    train = {"enc": st["enc"]}
    return phase._update(st, train, lambda tr: (jnp.sum((tr["enc"]["w"] - target) ** 2),
                                                {"loss": jnp.sum((tr["enc"]["w"] - target) ** 2)}),
                         opt, poison)

  def start():
    w = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)
    return {"enc": {"w": w}, "dec": {}, "opt_state": opt.init({"enc": {"w": w}})}

  batch = lambda step: jnp.float32(step)  # noqa: E731
  out = phase._train(_stage_run(tmp_path / "a", inject_nan_step=3), "encoder", start(), 5,
                     step_fn, batch)
  w = np.asarray([1.0, -2.0, 0.5], np.float32)  # NumPy: SGD on |w - t|², step 3 skipped
  for step in range(5):
    if step + 1 != 3:
      w = w - np.float32(0.1) * 2 * (w - np.float32(step))
  np.testing.assert_allclose(np.asarray(out["enc"]["w"]), w, rtol=1e-6)
  lines = {r["step"]: r for r in read_metrics(str(tmp_path / "a"))
           if r.get("phase") == "latent_sft/encoder"}
  assert [lines[k]["train/nonfinite_skipped"] for k in range(1, 6)] == [0, 0, 1, 1, 1]
  assert np.isnan(lines[3]["train/grad_norm"]) and np.isfinite(lines[4]["train/grad_norm"])

  with pytest.raises(faults.NonFiniteError, match="max_nonfinite=1"):
    phase._train(_stage_run(tmp_path / "b", inject_nan_step=2, max_nonfinite=1), "encoder",
                 start(), 5, step_fn, batch)


def test_config_refusals_name_the_field():
  from configs import latent_sft as cfg
  from lrjax.config_utils import ConfigError
  from lrjax.methods.latent_grpo.sft_phase import check_config
  check_config(cfg.get_config())
  with pytest.raises(ConfigError, match="config.init"):
    check_config(cfg.get_config("paper"))  # latent_sft alone needs a CoT model
  c = cfg.get_config()
  c.latent_sft.compression_rate = 0
  with pytest.raises(ConfigError, match="latent_sft.compression_rate"):
    check_config(c)
