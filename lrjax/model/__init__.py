"""The Qwen2 / Llama decoder: config, presets, pure functions, HF import/export."""
from lrjax.model import decode
from lrjax.model.api import (Output, compute_params, decode_step, embed, forward, init,
                             init_cache, lm_logits, logits, positions_from_mask, prefill)
from lrjax.model.config import SUPPORTED_MODEL_TYPES, ModelConfig, resolve_dtype
from lrjax.model.hf_io import CheckpointError, abstract_params, load_hf, read_config, save_hf
from lrjax.model.presets import PRESETS, preset

__all__ = [
    "ModelConfig", "Output", "PRESETS", "SUPPORTED_MODEL_TYPES", "CheckpointError",
    "abstract_params", "compute_params", "decode", "decode_step", "embed", "forward", "init",
    "init_cache", "lm_logits", "load_hf", "logits", "positions_from_mask", "prefill", "preset", "read_config",
    "resolve_dtype", "save_hf",
]
