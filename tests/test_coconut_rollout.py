"""Coconut training forward == `hidden`-rule rollout on the same thoughts.

The SFT side (`coconut_forward`: prefill + scan of cached single-position
steps + one full pass) and the generation side (the `hidden` rule inside the
rollout's while-loop) are written independently. Feeding the rollout's own
output (prompt `<bot>`, N latents, `<eot>`, answer) back through the training
forward must give the logits the rollout produced at every position, or a
model trained with the curriculum would be evaluated on a different function.

Tolerance: float32, max |Δlogit| <= 1e-4 (the two paths differ in matmul
shapes and summation order only).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.latent import DONE, RuleContext
from lrjax.rollout import Sampling, pad_prompts, rollout
from lrjax.methods.coconut.forward import coconut_forward
from lrjax.sft.sequences import SFTBatch
from tests.test_replay import BOT, CFG, EOS, EOT, LAT, model_params

TOL = 1e-4
# ragged prompts, each ending with <bot> as the evaluation prompts do
PROMPTS = [[20, 21, 22, BOT], [5, 9, 13, 17, 21, 25, 29, BOT], [BOT], [40, 41, 42, 43, 44, BOT]]
MAX_NEW = 14


def _training_batch(traj, prompts, n: int) -> SFTBatch:
  """Right-padded rows `prompt + generated response` with the latents marked as Coconut's."""
  lengths = np.asarray(traj.lengths)
  ids_out = np.asarray(traj.ids)
  rows = [list(p) + list(ids_out[b, :lengths[b]]) for b, p in enumerate(prompts)]
  b, t = len(rows), max(map(len, rows))
  ids, mask = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
  latent_mask = np.zeros((b, t), bool)
  bot_pos = np.zeros((b,), np.int32)
  latent_pos = np.full((b, n), -1, np.int32)
  for i, (row, p) in enumerate(zip(rows, prompts)):
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
    bot_pos[i] = len(p) - 1
    latent_pos[i] = np.arange(len(p), len(p) + n)
    latent_mask[i, latent_pos[i]] = True
    assert all(row[c] == LAT for c in latent_pos[i])  # the rollout emitted the placeholders
  zeros = np.zeros_like(ids)
  return SFTBatch(ids, mask, zeros, zeros, latent_mask, bot_pos,
                  np.full((b,), n, np.int32), latent_pos)


@pytest.mark.parametrize("num_latent", [1, 3])
def test_coconut_forward_reproduces_hidden_rollout(num_latent):
  params = {"model": model_params(), "rule": {}, "heads": {}}
  ctx = RuleContext(CFG, "hidden", sampling=Sampling(temperature=1.0), eos_id=EOS, bot_id=BOT,
                    latent_id=LAT, eot_id=EOT, num_latent=num_latent, max_new=MAX_NEW,
                    return_logits=True)
  ids, mask = pad_prompts(PROMPTS, 8)
  traj = rollout(ctx, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(5))
  lengths = np.asarray(traj.lengths)
  assert (lengths >= num_latent + 2).all()  # latents, <eot> and at least one sampled token
  assert (lengths - num_latent - 1).sum() > 2 * len(PROMPTS)  # several answer tokens in all

  batch = _training_batch(traj, PROMPTS, num_latent)
  _, logits = jax.jit(coconut_forward, static_argnums=0)(CFG, params["model"], batch)
  logits, ref = np.asarray(logits), np.asarray(traj.logits)
  live = np.asarray(traj.span) != DONE
  worst = 0.0
  for b, p in enumerate(PROMPTS):
    # y_t was produced by the logits at column len(p) - 1 + t of the training row
    got = logits[b, len(p) - 1: len(p) - 1 + lengths[b]]
    want = ref[b, :lengths[b]]
    assert live[b, :lengths[b]].all()
    worst = max(worst, float(np.abs(got - want).max()))
  print(f"num_latent={num_latent}: max |coconut_forward - rollout| logit diff = {worst:.2e}")
  assert worst <= TOL


def test_the_comparison_sees_the_latents():
  """Feeding token embeddings instead of the hidden states changes the answer logits:
  the check above is not satisfied by a forward that ignores the thoughts."""
  params = {"model": model_params(), "rule": {}, "heads": {}}
  ctx = RuleContext(CFG, "hidden", sampling=Sampling(temperature=1.0), eos_id=EOS, bot_id=BOT,
                    latent_id=LAT, eot_id=EOT, num_latent=3, max_new=MAX_NEW,
                    return_logits=True)
  ids, mask = pad_prompts(PROMPTS, 8)
  traj = rollout(ctx, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(5))
  batch = _training_batch(traj, PROMPTS, 3)
  plain = batch._replace(latent_mask=np.zeros_like(batch.latent_mask),
                         latent_pos=batch.latent_pos[:, :0])  # `<latent>` token embeddings
  _, logits = jax.jit(coconut_forward, static_argnums=0)(CFG, params["model"], plain)
  p = PROMPTS[0]
  after = len(p) + 3  # the <eot> column: its logits give the first answer token
  gap = np.abs(np.asarray(logits)[0, after] - np.asarray(traj.logits)[0, 4]).max()
  assert gap > 1e-3
