"""Tiny random transformers models saved to local folders (no Hub access)."""
from __future__ import annotations

import numpy as np
import torch
import transformers


def tiny_hf_config(model_type: str, **overrides):
  """A small Qwen2 (tied, q/k/v bias) or Llama (untied, llama3 RoPE) config."""
  common = dict(vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6)
  if model_type == "qwen2":
    cfg = transformers.Qwen2Config(**{**common, "tie_word_embeddings": True,
                                      "rope_theta": 10000.0, **overrides})
  elif model_type == "llama":
    cfg = transformers.LlamaConfig(**{
        **common, "tie_word_embeddings": False, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        **overrides})
  else:
    raise ValueError(model_type)
  return cfg


def make_hf_model(model_type: str, seed: int = 0, **overrides):
  """A random model in float32; weights widened from N(0, 0.02) so logits differ visibly."""
  torch.manual_seed(seed)
  cfg = tiny_hf_config(model_type, **overrides)
  cfg._attn_implementation = "eager"
  model_cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}
  model = model_cls[model_type](cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:  # norms and biases: move away from 1 / 0 so mistakes show
        p.add_(0.1 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.08)
  return model


def left_padded_batch(vocab: int, lengths=(9, 5, 7), seed: int = 0):
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.zeros((len(lengths), t), np.int32)
  mask = np.zeros((len(lengths), t), np.int32)
  for b, n in enumerate(lengths):
    ids[b, t - n:] = rng.integers(0, vocab, size=n)
    mask[b, t - n:] = 1
  return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Reference logits with HF generate's positions: cumsum(mask) - 1."""
  ids_t = torch.from_numpy(ids.astype(np.int64))
  mask_t = torch.from_numpy(mask.astype(np.int64))
  pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos)
  return out.logits.float().numpy()
