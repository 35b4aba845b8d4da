"""The CoT warm-up's latent span (`sft.latent_span`, lrjax.sft.span): layout, loss mask, noise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.model import init, preset
from lrjax.sft import build_batch
from lrjax.sft.span import noise_inputs, span_rows
from lrjax.sft.step import sft_loss
from tests.test_sft_sequences import BOT, EOS, EOT, H4, L, LAT, P3, Q, TOK, _check_row

COT = [7, 8, 9, 8, 10, 8] + H4  # 'a b c #### d'


def test_the_span_sits_between_question_and_solution_and_is_never_a_target():
  b = build_batch([P3, P3], TOK, "cot", max_len=24, latent_ids=LAT, span=3,
                  span_rows=[True, False])
  assert b.n_latent_max == 0  # the Coconut forward is not run
  _check_row(b, 0, Q + BOT + L * 3 + EOT + COT + EOS, response_start=7, latent_cols=(3, 4, 5))
  _check_row(b, 1, Q + COT + EOS, response_start=2)  # a row without the span: plain CoT
  np.testing.assert_array_equal(b.bot_pos, [2, 0])
  np.testing.assert_array_equal(b.n_latents, [3, 0])
  assert b.loss_mask[0, :6].sum() == 0  # no target in question, <bot>, span, <eot>
  plain = build_batch([P3], TOK, "cot", max_len=24)
  np.testing.assert_array_equal(b.ids[1], plain.ids[0])
  with pytest.raises(ValueError, match="without latents"):
    build_batch([P3], TOK, "coconut", latent_ids=LAT, span=2)


def test_a_hint_row_holds_the_answer_in_its_span():
  b = build_batch([P3], TOK, "cot", max_len=24, latent_ids=LAT, span=3, span_hints=[True])
  _check_row(b, 0, Q + BOT + [12] + L * 2 + EOT + COT + EOS, response_start=7,
             latent_cols=(3, 4, 5))  # answer 'd' = 12, then <latent>
  tok = jnp.ones((1, 2, 64))
  x = noise_inputs(tok, np.array([[True, False]]), jnp.float32(0.0), 2.0, jax.random.PRNGKey(0),
                   add_tokens=True)
  np.testing.assert_array_equal(x, tok)  # s = 0: E[hint] itself


def test_span_rows_are_fixed_by_seed_and_step():
  np.testing.assert_array_equal(span_rows(0, 5, 64, 0.5), span_rows(0, 5, 64, 0.5))
  assert not np.array_equal(span_rows(0, 5, 64, 0.5), span_rows(0, 6, 64, 0.5))
  assert span_rows(0, 5, 64, 0.0).sum() == 0 and span_rows(0, 5, 64, 1.0).all()
  assert 16 < span_rows(1, 0, 64, 0.5).sum() < 48


def test_noise_only_at_the_span_at_the_embedding_scale():
  """x = s·ρ·ε with ρ ~ U(0, r): E[x²] = s² r² / 3 on the span, tok elsewhere."""
  tok = jnp.ones((2, 5, 256))
  lat = np.zeros((2, 5), bool)
  lat[:, 1:4] = True
  x = noise_inputs(tok, lat, jnp.float32(0.5), 2.0, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(x[~lat], tok[~lat])
  np.testing.assert_allclose(jnp.mean(jnp.square(x[lat])), 0.25 * 4 / 3, rtol=0.3)


def test_the_loss_reads_the_noise_but_scores_the_solution_only():
  cfg = preset("tiny")
  params = init(cfg, jax.random.PRNGKey(0))
  b = build_batch([P3, P3], TOK, "cot", max_len=24, latent_ids=LAT, span=3)
  loss = jax.jit(lambda p, k: sft_loss(cfg, p, b, "cot", span_scale=2.0, key=k))
  (l0, aux), (l1, _) = loss(params, jax.random.PRNGKey(1)), loss(params, jax.random.PRNGKey(2))
  plain, _ = jax.jit(lambda p: sft_loss(cfg, p, b, "cot"))(params)  # E[<latent>] at the span
  assert aux["num_tokens"] == 2 * len(COT + EOS) and np.isfinite(float(l0))
  assert float(l0) != float(l1) and float(l0) != float(plain)  # the noise reaches the solution
  with pytest.raises(ValueError, match="needs a key"):
    sft_loss(cfg, params, b, "cot", span_scale=2.0)
