"""Decoder internals: presets, KV-cached decode vs full forward, clear errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrjax.model import (CheckpointError, ModelConfig, abstract_params, decode, decode_step, embed,
                         forward, init, load_hf, logits, positions_from_mask, prefill,
                         preset, resolve_dtype, save_hf)

# Published parameter counts (model cards / safetensors metadata).
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "llama-3.2-1b": 1_235_814_400,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
  shapes = abstract_params(preset(name))  # eval_shape: nothing is allocated
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert n == PUBLISHED[name]


_INIT_PAIR = """
import jax, jax.numpy as jnp, numpy as np
from lrjax.model.api import init, module
from lrjax.model.presets import preset
for tied in (True, False):
  cfg = preset("tiny").replace(tie_word_embeddings=tied)
  key = jax.random.key(7)
  eager = module(cfg).init(key, jnp.zeros((1, 1, cfg.hidden_size), cfg.jnp_dtype),
                           jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))["params"]
  compiled = init(cfg, key)
  assert jax.tree.structure(eager) == jax.tree.structure(compiled)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eager), jax.tree.leaves(compiled)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=f"tied={tied} {jax.tree_util.keystr(path)}")
  print("equal", tied, len(jax.tree.leaves(compiled)))
"""


# the suite's fast-compile options but XLA's fusion emitters, which users run
INIT_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def test_compiled_init_equals_flax_eager_init_bit_for_bit(tmp_path):
  """`init` is one jitted program; its parameters are those of flax's op-by-op init (the
  values every earlier run started from), embedding and untied head included. Run with
  XLA's fusion emitters, as users run (the suite's classic emitters fuse the scanned
  blocks' init differently in the two programs)."""
  from tests import e2e_runs as e2e
  from tests import forkserver
  rc, out, err = forkserver.run_code(_INIT_PAIR, [], str(tmp_path),
                                     e2e.env(INIT_XLA_FLAGS, fast=False), timeout=300)
  assert rc == 0, err[-3000:]
  assert out.split("\n")[:2] == ["equal True 14", "equal False 15"], out


def test_tiny_preset_is_small():
  n = sum(x.size for x in jax.tree.leaves(init(preset("tiny"), jax.random.key(0))))
  assert 2e5 < n < 1e6


def _left_padded(vocab, lengths, seed=0):
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.zeros((len(lengths), t), np.int32)
  mask = np.zeros((len(lengths), t), np.int32)
  for b, n in enumerate(lengths):
    ids[b, t - n:] = rng.integers(0, vocab, n)
    mask[b, t - n:] = 1
  return jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.parametrize("tied", [True, False])
def test_decode_matches_full_forward(tied):
  """Prefill a left-padded prompt, decode token by token; logits = one full forward."""
  cfg = preset("tiny").replace(tie_word_embeddings=tied, num_layers=3)
  params = init(cfg, jax.random.key(1))
  prompt_ids, prompt_mask = _left_padded(cfg.vocab_size, (7, 3, 5), seed=1)
  new = jax.random.randint(jax.random.key(2), (3, 6), 0, cfg.vocab_size)
  full_ids = jnp.concatenate([prompt_ids, new], 1)
  full_mask = jnp.concatenate([prompt_mask, jnp.ones_like(new)], 1)
  ref = logits(cfg, params, full_ids, full_mask)

  out = prefill(cfg, params, prompt_ids, prompt_mask, full_ids.shape[1])
  got = [out.logits]
  cache = out.cache
  start = prompt_mask.sum(-1, keepdims=True)  # next position per row
  for t in range(new.shape[1]):
    step = decode_step(cfg, params, embed(cfg, params, new[:, t:t + 1]), start + t, cache)
    cache = step.cache
    got.append(step.logits)
  got = jnp.concatenate(got, 1)
  m = np.asarray(full_mask, bool)
  np.testing.assert_allclose(np.asarray(got)[m], np.asarray(ref)[m], atol=1e-5, rtol=1e-5)
  assert int(cache["index"]) == full_ids.shape[1]


@pytest.mark.parametrize("overrides", [
    dict(tie_word_embeddings=True),
    dict(tie_word_embeddings=False, model_type="llama", qkv_bias=False, o_bias=True, mlp_bias=True,
         num_kv_heads=1, rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0),
                                       ("low_freq_factor", 1.0),
                                       ("original_max_position_embeddings", 16),
                                       ("rope_type", "llama3")))])
def test_rollout_decoder_matches_full_forward(overrides):
  """decode.prefill/step (per-layer caches, fused kernels) = one full forward, slot by slot."""
  cfg = preset("tiny").replace(num_layers=3, **overrides)
  params = init(cfg, jax.random.key(1))
  if cfg.o_bias or cfg.mlp_bias:  # nonzero biases, so a dropped one would show
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 if path[-1].key == "bias" else x, params)
  prompt_ids, prompt_mask = _left_padded(cfg.vocab_size, (7, 3, 5), seed=1)
  new = jax.random.randint(jax.random.key(2), (3, 6), 0, cfg.vocab_size)
  full_ids = jnp.concatenate([prompt_ids, new], 1)
  full_mask = jnp.concatenate([prompt_mask, jnp.ones_like(new)], 1)
  ref = forward(cfg, params, embed(cfg, params, full_ids), positions_from_mask(full_mask),
                full_mask)

  p, n = prompt_ids.shape[1], new.shape[1]
  dparams = decode.prepare(cfg, params)
  hidden, logits_p, cache = jax.jit(decode.prefill, static_argnums=(0, 5))(
      cfg, dparams, embed(cfg, params, prompt_ids), positions_from_mask(prompt_mask), prompt_mask,
      p + n + 2)  # two spare slots stay masked
  np.testing.assert_allclose(np.asarray(logits_p), np.asarray(ref.logits[:, p - 1]),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(hidden), np.asarray(ref.hidden[:, p - 1]),
                             atol=1e-5, rtol=1e-5)
  step = jax.jit(decode.step, static_argnums=0)
  start = prompt_mask.sum(-1)  # B, next position per row
  for t in range(n):
    hidden, logits_t, cache = step(cfg, dparams, embed(cfg, params, new[:, t]), start + t, cache)
    np.testing.assert_allclose(np.asarray(logits_t), np.asarray(ref.logits[:, p + t]),
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(ref.hidden[:, p + t]),
                               atol=1e-5, rtol=1e-5)
  assert int(cache["index"]) == p + n
  assert cache["k"][0].shape == (3, cfg.num_kv_heads, cfg.head_dim, p + n + 2)


def test_forward_takes_embeddings():
  """Feeding E[ids] through `forward` equals the id path; hidden is post-norm."""
  cfg = preset("tiny")
  params = init(cfg, jax.random.key(0))
  ids, mask = _left_padded(cfg.vocab_size, (4, 6))
  out = forward(cfg, params, embed(cfg, params, ids), positions_from_mask(mask), mask)
  np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(logits(cfg, params, ids, mask)))
  # tied head: logits = hidden @ E^T
  np.testing.assert_allclose(np.asarray(out.hidden @ params["embed"]["embedding"].T),
                             np.asarray(out.logits), atol=1e-5)


def test_bfloat16_forward_runs():
  cfg = preset("tiny").replace(dtype="bfloat16")
  params = init(cfg, jax.random.key(0))
  assert params["layers"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
  out = logits(cfg, params, jnp.ones((2, 5), jnp.int32))
  assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())


def _saved_tiny(tmp_path):
  cfg = preset("tiny").replace(tie_word_embeddings=False)
  save_hf(cfg, init(cfg, jax.random.key(0)), str(tmp_path))
  return cfg


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  _saved_tiny(tmp_path)
  tensors = load_file(str(tmp_path / "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    load_hf(str(tmp_path))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
  from safetensors.numpy import load_file, save_file
  _saved_tiny(tmp_path)
  tensors = load_file(str(tmp_path / "model.safetensors"))
  tensors["lm_head.weight"] = np.zeros((10, 128), np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=r"lm_head\.weight.*\(10, 128\).*\(64, 128\)"):
    load_hf(str(tmp_path))


def test_unsupported_model_type_lists_supported(tmp_path):
  _saved_tiny(tmp_path)
  raw = json.loads((tmp_path / "config.json").read_text())
  raw["model_type"] = "gpt2"
  (tmp_path / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=r"'gpt2'.*supported: qwen2, llama"):
    load_hf(str(tmp_path))


def test_bad_dtype_name_lists_accepted():
  with pytest.raises(ValueError, match=r"'float64'.*accepted: bfloat16, float16, float32"):
    resolve_dtype("float64")
  with pytest.raises(ValueError, match="accepted"):
    ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                num_kv_heads=1, dtype="fp32")


def test_missing_files_are_named(tmp_path):
  with pytest.raises(CheckpointError, match="config.json"):
    load_hf(str(tmp_path))
  _saved_tiny(tmp_path)
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(CheckpointError, match="model.safetensors"):
    load_hf(str(tmp_path))
