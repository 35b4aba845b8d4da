"""Named model shapes, usable with no download (`preset(name) -> ModelConfig`).

`tiny` is the CPU default (tests and the embedded tasks); the others are the
published architectures, so `init(preset("qwen2.5-1.5b"), key)` or
`jax.eval_shape` of it gives the real parameter tree.
"""
from __future__ import annotations

from lrjax.model.config import ModelConfig

_LLAMA3_ROPE = (("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))

PRESETS: dict[str, ModelConfig] = {
    # ~0.4M parameters: learns the default synthetic tasks in minutes on 2 CPU cores.
    "tiny": ModelConfig(vocab_size=64, hidden_size=128, intermediate_size=352, num_layers=2,
                        num_heads=4, num_kv_heads=2, model_type="qwen2", rope_theta=10000.0,
                        tie_word_embeddings=True, max_position_embeddings=2048),
    # ~0.1M parameters: the DLR assistant beside `tiny` (its vocab_size is set to the main
    # model's when it is built, `lrjax.methods.dlr.assistant`).
    "tiny-assistant": ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=176,
                                  num_layers=2, num_heads=4, num_kv_heads=2, model_type="qwen2",
                                  rope_theta=10000.0, tie_word_embeddings=True,
                                  max_position_embeddings=2048),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_layers=24, num_heads=14, num_kv_heads=2, rope_theta=1e6,
                                tie_word_embeddings=True, rms_norm_eps=1e-6,
                                max_position_embeddings=32768, eos_token_id=151643),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                num_layers=28, num_heads=12, num_kv_heads=2, rope_theta=1e6,
                                tie_word_embeddings=True, rms_norm_eps=1e-6,
                                max_position_embeddings=32768, eos_token_id=151643),
    "qwen2.5-3b": ModelConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                              num_layers=36, num_heads=16, num_kv_heads=2, rope_theta=1e6,
                              tie_word_embeddings=True, rms_norm_eps=1e-6,
                              max_position_embeddings=32768, eos_token_id=151643),
    "llama-3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                                model_type="llama", rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                                tie_word_embeddings=True, qkv_bias=False, rms_norm_eps=1e-5,
                                max_position_embeddings=131072, bos_token_id=128000,
                                eos_token_id=128001),
}


def preset(name: str, **overrides) -> ModelConfig:
  """The named `ModelConfig`, with optional field overrides (e.g. vocab_size)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
