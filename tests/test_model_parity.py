"""lrjax's decoder against the transformers PyTorch implementation (float32, 1e-4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lrjax.model import load_hf, logits, save_hf
from tests.hf_fixtures import left_padded_batch, make_hf_model, torch_logits

TOL = 1e-4


def _max_diff_on_real(a, b, mask):
  m = mask.astype(bool)
  return float(np.max(np.abs(np.asarray(a)[m] - np.asarray(b)[m])))


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_float32_checkpoint_matches_transformers(tmp_path, model_type):
  model = make_hf_model(model_type)
  model.save_pretrained(tmp_path)
  cfg, params = load_hf(str(tmp_path), dtype=jnp.float32)
  assert cfg.model_type == model_type
  ids, mask = left_padded_batch(cfg.vocab_size)
  ours = logits(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
  assert ours.dtype == jnp.float32
  assert bool(jnp.isfinite(ours).all()), "pad positions must stay finite"
  ref = torch_logits(model, ids, mask)
  assert _max_diff_on_real(ours, ref, mask) <= TOL


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_bfloat16_checkpoint_loads(tmp_path, model_type):
  """A bf16-stored checkpoint, read into float32, equals torch reading the same file."""
  model = make_hf_model(model_type, seed=1).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
  cfg, params = load_hf(str(tmp_path), dtype="float32")
  ids, mask = left_padded_batch(cfg.vocab_size, seed=1)
  ours = logits(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
  assert _max_diff_on_real(ours, torch_logits(ref_model, ids, mask), mask) <= TOL
  # The bf16 load keeps bf16 parameters.
  _, params_bf16 = load_hf(str(tmp_path), dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params_bf16))


def test_sharded_index_checkpoint(tmp_path):
  model = make_hf_model("qwen2", seed=2)
  model.save_pretrained(tmp_path, max_shard_size="60KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  cfg, params = load_hf(str(tmp_path))
  ids, mask = left_padded_batch(cfg.vocab_size, seed=2)
  ours = logits(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
  assert _max_diff_on_real(ours, torch_logits(model, ids, mask), mask) <= TOL


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_save_hf_round_trip_in_transformers(tmp_path, model_type):
  model = make_hf_model(model_type, seed=3)
  model.save_pretrained(tmp_path / "src")
  cfg, params = load_hf(str(tmp_path / "src"))
  save_hf(cfg, params, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", dtype=torch.float32, attn_implementation="eager").eval()
  assert type(reloaded) is type(model)
  ids, mask = left_padded_batch(cfg.vocab_size, seed=3)
  ours = logits(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
  assert _max_diff_on_real(ours, torch_logits(reloaded, ids, mask), mask) <= TOL
  # and lrjax reads its own export back bit-identically
  cfg2, params2 = load_hf(str(tmp_path / "out"))
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_top_level_rope_theta_config(tmp_path):
  """Older configs keep theta/scaling at top level (no `rope_parameters`)."""
  import json
  model = make_hf_model("llama", seed=4)
  model.save_pretrained(tmp_path)
  raw = json.loads((tmp_path / "config.json").read_text())
  rope = raw.pop("rope_parameters", None) or {}
  raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta"))
  raw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"} or raw.get("rope_scaling")
  (tmp_path / "config.json").write_text(json.dumps(raw))
  cfg, params = load_hf(str(tmp_path))
  assert dict(cfg.rope_scaling)["rope_type"] == "llama3"
  assert cfg.rope_theta == 500000.0
  ids, mask = left_padded_batch(cfg.vocab_size, seed=4)
  ours = logits(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
  assert _max_diff_on_real(ours, torch_logits(model, ids, mask), mask) <= TOL
