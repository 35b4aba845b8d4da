"""The jitted rollout engine: eos, early stop, padding of finished rows, truncation,
greedy determinism, the `hidden` latent schedule, HRPO's think span, bucketing.

A "forced" model makes outputs predictable: its decoder blocks are zero (the
residual stream is the input embedding) and its untied LM head maps
x = E[u] to logits peaked on succ(u), so greedy decoding follows a chosen chain.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
from lrjax.latent import ANSWER, DONE, LATENT, RuleContext
from lrjax.methods import hrpo as hybrid
from lrjax.model import preset
from lrjax.rollout import (Sampling, Trajectory, bucket_length, decode, pad_prompts, rollout,
                           sample_trajectory, token_logp)
from tests.test_replay import (BUCKET, CFG, EOS, EOT, LAT, PROMPTS, contexts, fast_jit,
                               full_params, hybrid_aux, random_params, replay_fast, rollout_fast)

N = 12
FCFG = preset("tiny", tie_word_embeddings=False)
TOK = build_char_tokenizer(DEFAULT_ALPHABET)
HASH, A, X = TOK.convert_tokens_to_ids(["#", "a", "x"])


def forced_params(succ: dict, seed: int = 1, scale: float = 10.0) -> dict:
  """Zero blocks and an LM head with logits ∝ cos(x, E[u]) on column succ(u) (else u)."""
  p = random_params(FCFG, seed, std=1.0)
  p["layers"] = jax.tree_util.tree_map_with_path(
      lambda path, x: x if "scale" in jax.tree_util.keystr(path) else jnp.zeros_like(x),
      p["layers"])
  emb = np.asarray(p["embed"]["embedding"])  # V H
  unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  to = np.zeros((FCFG.vocab_size, FCFG.vocab_size), np.float32)  # V V
  for u in range(FCFG.vocab_size):
    to[u, succ.get(u, u)] = 1.0
  p["lm_head"]["kernel"] = jnp.asarray(scale * unit.T @ to)  # H V
  return p


def prompts_ending(last: list[int]) -> tuple[jax.Array, jax.Array]:
  ids, mask = pad_prompts([[30 + i] * (i + 2) + [u] for i, u in enumerate(last)], BUCKET)
  return jnp.asarray(ids), jnp.asarray(mask)


TOKEN_CTX = RuleContext(FCFG, "token", sampling=Sampling(greedy=True), eos_id=EOS, max_new=N,
                        return_logits=True)
CHAIN = {10: 11, 11: 12, 12: EOS, 13: EOS, 20: 20}


@pytest.fixture(scope="module")
def forced():
  return {"model": forced_params(CHAIN), "rule": {}, "heads": {}}


def test_eos_early_stop_and_padding(forced):
  traj = rollout(TOKEN_CTX, forced, *prompts_ending([10, 11, 13, 12]), jax.random.key(0))
  want = [[11, 12, EOS], [12, EOS], [EOS], [EOS]]
  ids, span = np.asarray(traj.ids), np.asarray(traj.span)
  for b, w in enumerate(want):
    np.testing.assert_array_equal(ids[b, :len(w)], w)
    np.testing.assert_array_equal(ids[b, len(w):], 0)  # pad
    np.testing.assert_array_equal(span[b, :len(w)], ANSWER)
    np.testing.assert_array_equal(span[b, len(w):], DONE)
  np.testing.assert_array_equal(traj.lengths, [3, 2, 1, 1])
  np.testing.assert_array_equal(traj.truncated, False)
  np.testing.assert_array_equal(traj.sampled, span != DONE)
  np.testing.assert_array_equal(np.asarray(traj.logp)[span == DONE], 0.0)
  # every row was done after 3 steps: the loop stopped, later logits were never written
  logits = np.asarray(traj.logits)
  assert np.abs(logits[:, :3]).max(-1).min() > 0
  np.testing.assert_array_equal(logits[:, 3:], 0.0)


def test_truncation_and_greedy(forced):
  traj = rollout(TOKEN_CTX, forced, *prompts_ending([10, 20, 13, 12]), jax.random.key(0))
  np.testing.assert_array_equal(traj.lengths, [3, N, 1, 1])
  np.testing.assert_array_equal(traj.truncated, [False, True, False, False])
  np.testing.assert_array_equal(traj.ids[1], 20)
  assert np.abs(np.asarray(traj.logits)[:, -1]).max() > 0  # ran all N steps
  live = np.asarray(traj.span) != DONE
  np.testing.assert_array_equal(np.asarray(traj.logits).argmax(-1)[live],
                                np.asarray(traj.ids)[live])
  lp = token_logp(traj.logits, traj.ids, 1.0)
  np.testing.assert_allclose(np.asarray(traj.logp)[live], np.asarray(lp)[live], atol=1e-6)


def test_bucketed_prompts_compile_once(forced):
  """Two batches of different raw prompt lengths in one bucket: one trace."""
  counted = fast_jit(chex.assert_max_traces(sample_trajectory, n=1))
  raw = [[[5] * n for n in (3, 5, 2, 4)], [[6] * n for n in (6, 7, 1, 8)]]
  for prompts in raw:
    bucket = bucket_length(max(map(len, prompts)), (8, 16))
    assert bucket == BUCKET
    ids, mask = pad_prompts(prompts, bucket)
    chex.assert_shape(counted(TOKEN_CTX, forced, ids, mask, jax.random.key(0)).ids, (4, N))
  ids, mask = pad_prompts([[5] * 9] * 4, bucket_length(9, (8, 16)))
  with pytest.raises(AssertionError):  # a new bucket is a new trace (raised before compiling)
    counted(TOKEN_CTX, forced, ids, mask, jax.random.key(0))


def test_phased_cache_equals_one_phase(monkeypatch):
  """The loop split in phases over a growing cache (engine.phase_ends) = one full-length loop."""
  import lrjax.rollout.engine as engine
  ctx, params = contexts()["hybrid"], full_params()
  ids, mask = (jnp.asarray(x) for x in pad_prompts(PROMPTS, BUCKET))
  args = (params, ids, mask, jax.random.key(7), hybrid_aux())
  one = rollout_fast(ctx, *args)  # N = 12 < 64: one phase
  assert engine.phase_ends(N) == [N] and engine.phase_ends(128) == [32, 64, 96, 128]
  loops = lambda f: f.lower(ctx, *args).as_text().count("stablehlo.while")  # noqa: E731
  base = loops(fast_jit(lambda *a: engine.sample_trajectory(*a)))
  # each phase adds one decode loop (with the loops inside its step, e.g. a top-k's
  # bisection): 2 phases add one such nest, 4 phases three
  monkeypatch.setattr(engine, "phase_ends", lambda n: [5, n])
  nest = loops(fast_jit(lambda *a: engine.sample_trajectory(*a))) - base
  monkeypatch.setattr(engine, "phase_ends", lambda n: [3, 5, 9, n])
  jitted = fast_jit(lambda *a: engine.sample_trajectory(*a))  # a fresh trace
  assert nest >= 1 and loops(jitted) == base + 3 * nest
  phased = jitted(ctx, *args)
  live = np.asarray(one.span) != DONE
  assert 0 < (~live).sum() and live.all(-1).any()  # rows ended early and ran to N
  for name in ("ids", "span", "sampled", "lengths", "truncated"):
    np.testing.assert_array_equal(getattr(phased, name), getattr(one, name), err_msg=name)
  # attention over a cache of another length sums in another order: float32 agreement,
  # relative to the logits' size (4.4e-6 relative on an AVX-512 CPU, within 1e-5 on AVX2)
  np.testing.assert_allclose(phased.logits, one.logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(phased.logp, one.logp, rtol=1e-5, atol=1e-5)


def test_bucket_helpers():
  assert [bucket_length(n, (16, 8)) for n in (1, 8, 9, 16, 17, 40)] == [8, 8, 16, 16, 32, 48]
  ids, mask = pad_prompts([[4, 5], [7]], 4, pad_id=9)
  np.testing.assert_array_equal(ids, [[9, 9, 4, 5], [9, 9, 9, 7]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1]])
  with pytest.raises(ValueError, match="more than the bucket"):
    pad_prompts([[1] * 5], 4)


def test_hybrid_think_span_ends_after_delimiter():
  """Greedy '#' chains: the token completing '####' is the last LATENT one."""
  ctx = RuleContext(FCFG, "hybrid", sampling=Sampling(temperature=0.7, greedy=True),
                    eos_id=EOS, max_new=N, return_logits=True)
  params = {"model": forced_params({A: HASH}), "heads": {},
            "rule": hybrid.init_params(FCFG, ctx.rule_cfg, jax.random.key(0))}
  aux = hybrid.delimiter_aux(TOK, "####", FCFG.vocab_size)
  traj = rollout_fast(ctx, params, *prompts_ending([A, HASH, X, A]), jax.random.key(0), aux)
  ids, span, think = (np.asarray(v) for v in (traj.ids, traj.span, traj.records["think"]))
  for b in (0, 1, 3):  # '#' x 12; the prompt's '#' does not count (span starts at response)
    np.testing.assert_array_equal(ids[b], HASH)
    np.testing.assert_array_equal(span[b], [LATENT] * 4 + [ANSWER] * (N - 4))
    np.testing.assert_array_equal(think[b], [True] * 3 + [False] * (N - 3))
  np.testing.assert_array_equal(ids[2], X)  # never a delimiter: think all along
  np.testing.assert_array_equal(span[2], LATENT)
  assert think[2].all()
  np.testing.assert_array_equal(traj.truncated, True)
  # greedy still builds ĥ from the training τ: softmax(top-50(l / 0.7)) E / ||p||
  logits = np.asarray(traj.logits, np.float64) / 0.7
  kth = np.sort(logits, -1)[..., -50][..., None]
  p = np.where(logits >= kth, np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
  p /= p.sum(-1, keepdims=True)
  soft = p @ np.asarray(params["model"]["embed"]["embedding"], np.float64)
  soft /= np.linalg.norm(p, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(traj.records["soft"])[think], soft[think], atol=1e-4)
  np.testing.assert_array_equal(np.asarray(traj.records["soft"])[~think], 0.0)


@pytest.fixture(scope="module")
def random_model():
  ids, mask = pad_prompts(PROMPTS, BUCKET)
  return full_params(), jnp.asarray(ids), jnp.asarray(mask)


def test_hidden_latents_then_eot_and_greedy_determinism(random_model):
  params, ids, mask = random_model
  ctx = contexts()["hidden"]
  traj = rollout_fast(ctx, params, ids, mask, jax.random.key(1), None)
  again = rollout_fast(ctx, params, ids, mask, jax.random.key(2), None)
  np.testing.assert_array_equal(traj.ids, again.ids)  # greedy: the key does not matter
  got, span = np.asarray(traj.ids), np.asarray(traj.span)
  np.testing.assert_array_equal(got[:, :3], LAT)
  np.testing.assert_array_equal(got[:, 3], EOT)
  assert not np.isin(got[:, 4:], [LAT, EOT]).all()
  np.testing.assert_array_equal(span[:, :4], LATENT)
  np.testing.assert_array_equal(np.asarray(traj.sampled)[:, :4], False)
  np.testing.assert_array_equal(np.asarray(traj.logp)[:, :4], 0.0)
  answer = span == ANSWER
  assert answer.any()
  np.testing.assert_array_equal(np.asarray(traj.logits).argmax(-1)[answer], got[answer])
  # the record is h_t for t < 3: the replay's hidden states reproduce it
  stored = np.asarray(traj.records["hidden"])
  assert np.abs(stored[:, :3]).min(-1).min() > 0
  np.testing.assert_array_equal(stored[:, 3:], 0.0)
  hidden, _ = replay_fast(ctx, params, traj, None)
  np.testing.assert_allclose(np.asarray(hidden)[:, :3], stored[:, :3], atol=1e-4)


def test_sampled_rows_stop_after_eos(random_model):
  params, ids, mask = random_model
  ctx = contexts()["token"]
  for seed in range(3):
    traj = rollout_fast(ctx, params, ids, mask, jax.random.key(seed), None)
    got, span = np.asarray(traj.ids), np.asarray(traj.span)
    for b in range(got.shape[0]):
      hits = np.flatnonzero(got[b] == EOS)
      end = hits[0] + 1 if hits.size else N
      assert traj.lengths[b] == end and bool(traj.truncated[b]) == (hits.size == 0)
      np.testing.assert_array_equal(span[b, :end] != DONE, True)
      np.testing.assert_array_equal(span[b, end:], DONE)
      np.testing.assert_array_equal(got[b, end:], 0)


def test_decode_text_and_latents():
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  tok.add_tokens(["<bot>", "<latent>", "<eot>"], special_tokens=True)
  ctx = RuleContext(CFG, "hidden", eos_id=EOS, latent_id=LAT, eot_id=EOT, num_latent=2, max_new=6)
  a, b, seven = TOK.convert_tokens_to_ids(["a", "b", "7"])
  ids = np.array([[LAT, LAT, EOT, seven, EOS, 0], [LAT, LAT, EOT, a, b, seven]], np.int32)
  span = np.array([[1, 1, 1, 2, 2, 3], [1, 1, 1, 2, 2, 2]], np.int8)
  hidden = np.zeros((2, 6, CFG.hidden_size), np.float32)
  traj = Trajectory(
      prompt_ids=np.zeros((2, 1), np.int32), prompt_mask=np.ones((2, 1), np.int32), ids=ids,
      span=span, sampled=span == 2, logp=np.zeros((2, 6), np.float32),
      records={"hidden": hidden}, lengths=np.array([5, 6]), truncated=np.array([False, True]))
  assert decode(tok, traj, ctx) == ["<latent><latent><eot>7", "<latent><latent><eot>ab7"]
