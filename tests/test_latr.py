"""LatR (arXiv 2512.11816): SFT without gradient through the thought chain, its
curriculum and labels, and the chain length stored with a model and used when it
is evaluated or trained further.

Tolerances: the no-grad chain's gradient vs the detached step-by-step loop 1e-5
absolute / 1e-4 relative (float32, as tests/test_coconut.py).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latr as latr_config, latr_sft as latr_sft_config
from lrjax.config_utils import ConfigError
from lrjax.data.tasks import Problem
from lrjax.methods.coconut.curriculum import latr_counts
from lrjax.phases import PHASES
from lrjax.phases.workdir import MODEL_META, load_model_meta, save_model_meta
from lrjax.sft import build_batch, make_train_step
from lrjax.validate import validate_config
from tests.test_coconut import CFG, LR, PARAMS, PROBLEMS, SGD, _batch, _loss_and_grad, reference_loss
from tests.test_sft_sequences import LAT, P3, TOK

CFG_STEP = make_train_step(CFG, SGD, "coconut", max_traces=1, latent_grad=False)


def _no_grad_loss_and_grad(params, batch):
  new, _, metrics = CFG_STEP(jax.tree.map(jnp.copy, params), SGD.init(params), batch)
  return metrics["loss"], jax.tree.map(lambda a, b: (a - b) / LR, params, new)


def test_no_grad_chain_is_the_detached_loop():
  """latent_grad=False: the same loss as Coconut's, the gradient of the step-by-step
  loop with every fed-back hidden state detached, and not the through-chain one."""
  batch = _batch(3, problems=PROBLEMS[::2])  # <bot> at 2 and 3; 3 and 1 latents
  value, grads = _no_grad_loss_and_grad(PARAMS, batch)
  ref_value, cut = jax.value_and_grad(reference_loss)(PARAMS, batch, stop_chain=True)
  np.testing.assert_allclose(value, ref_value, atol=1e-5)
  chex.assert_trees_all_close(grads, cut, atol=1e-5, rtol=1e-4)
  _, through = _loss_and_grad(PARAMS, batch)  # Coconut: through the chain
  diff = max(float(jnp.abs(a - b).max())
             for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(through)))
  assert diff > 1e-3


def test_latr_curriculum_counts():
  # c 1, start 0, max 3 (the tiny default): stage s has s thoughts replacing s steps,
  # and at 3 every step is latent
  assert [latr_counts(3, s, 1, 0, 3) for s in range(5)] == [(0, 0), (1, 1), (2, 2), (3, 3),
                                                            (3, 3)]
  assert latr_counts(5, 3, 1, 0, 3) == (5, 3)  # at the maximum: all 5 steps latent
  assert latr_counts(1, 2, 1, 0, 3) == (1, 2)  # a short problem keeps the stage's count
  # LatR's GSM8K schedule: c 2, start 4, max 6
  assert latr_counts(8, 0, 2, 4, 6) == (2, 4)
  assert latr_counts(8, 1, 2, 4, 6) == (8, 6)
  with pytest.raises(ValueError):
    latr_counts(3, -1, 1, 0, 3)


def test_latr_batch_has_marker_targets_and_fixed_counts():
  short = Problem("qq", ("a",), "b")
  b = build_batch([P3, short], TOK, "coconut", stage=2, c=1, max_len=32, latent_ids=LAT,
                  start_latents=0, max_latents=3, label_markers=True)
  assert b.n_latents.tolist() == [2, 2] and b.n_latent_max == 2
  for row in range(2):
    bot = int(b.bot_pos[row])
    lat_cols = np.flatnonzero(b.latent_mask[row])
    np.testing.assert_array_equal(lat_cols, [bot + 1, bot + 2])
    eot_col = bot + 3
    assert b.ids[row, bot] == LAT.bot and b.ids[row, eot_col] == LAT.eot
    # targets: <bot> (from the last question token), <eot> (from the last thought), text
    assert b.loss_mask[row, bot - 1] == 1 and b.labels[row, bot - 1] == LAT.bot
    assert b.loss_mask[row, eot_col - 1] == 1 and b.labels[row, eot_col - 1] == LAT.eot
    # the thoughts are never targets, nor predicted from <bot> / the first thought
    assert b.loss_mask[row, bot] == 0 and b.loss_mask[row, bot + 1] == 0
    assert (b.labels[row][b.loss_mask[row] > 0] != LAT.latent).all()
  # P3 (3 steps) keeps its third step as text; the 1-step problem has none left
  plain = build_batch([P3], TOK, "coconut", stage=2, c=1, max_len=32, latent_ids=LAT)
  assert plain.loss_mask[0, int(plain.bot_pos[0]) - 1] == 0  # Coconut: no marker targets
  assert plain.loss_mask.sum() == b.loss_mask[0].sum() - 2


def test_shipped_configs_and_schedule_check():
  for mod in (latr_config, latr_sft_config):
    c = mod.get_config()
    assert validate_config(c, PHASES) == c.mode.split(",")
  c = latr_sft_config.get_config()
  c.sft.max_latents = 5  # 0 + 3 stages * 1 < 5: the all-latent stage is never reached
  with pytest.raises(ConfigError, match=r"config.sft.max_latents=5 is not reached"):
    validate_config(c, PHASES)
  c = latr_sft_config.get_config()
  c.sft.start_latents = 4
  with pytest.raises(ConfigError, match=r"must be >= sft.start_latents=4"):
    validate_config(c, PHASES)


def test_model_meta_round_trip_and_bad_file(tmp_path):
  save_model_meta(str(tmp_path), 3)
  assert load_model_meta(str(tmp_path)) == {"num_latent": 3}
  assert load_model_meta(str(tmp_path / "none")) == {}
  (tmp_path / MODEL_META).write_text('{"num_latent": "three"}')
  with pytest.raises(ConfigError, match=MODEL_META):
    load_model_meta(str(tmp_path))


def test_rule_num_latent_zero_means_the_models_own(capsys):
  from types import SimpleNamespace
  from lrjax.phases.run import Run
  run = lambda asked, own: SimpleNamespace(
      config=SimpleNamespace(rule=SimpleNamespace(num_latent=asked)), model_num_latent=own)
  assert Run.num_latent(run(0, 3)) == 3
  assert Run.num_latent(run(0, None)) == 0  # an HF folder without lrjax_model.json
  assert Run.num_latent(run(3, 3)) == 3 and "warning" not in capsys.readouterr().out
  assert Run.num_latent(run(1, 3)) == 1
  assert "config.rule.num_latent=1 overrides the 3 latent steps" in capsys.readouterr().out
