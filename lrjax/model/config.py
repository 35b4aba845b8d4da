"""Decoder configuration: one frozen dataclass for the Qwen2 / Llama families.

`ModelConfig` is hashable so it can be a static argument of `jax.jit`.
`from_hf_dict` reads a transformers `config.json` (v5's `rope_parameters` and
the older top-level `rope_theta` / `rope_scaling` alike); `to_hf_dict` writes
one that `transformers.AutoConfig` accepts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPE_NAMES = tuple(_DTYPES)  # what `model.dtype` may name


def resolve_dtype(dtype: Any) -> jnp.dtype:
  """Accepts a jnp dtype or its name; raises a ValueError naming the choices."""
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(
          f"unknown dtype {dtype!r}; accepted: {', '.join(sorted(_DTYPES))} "
          "(or the jnp dtype itself)")
    return jnp.dtype(_DTYPES[dtype])
  try:
    d = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"unknown dtype {dtype!r}; accepted: {', '.join(sorted(_DTYPES))}") from e
  if d.name not in _DTYPES:
    raise ValueError(f"unsupported dtype {d.name!r}; accepted: {', '.join(sorted(_DTYPES))}")
  return d


SUPPRESSED_LOGIT = -1e9  # finite: p = 0 without inf * 0 = nan in entropies / mixtures


def mask_suppressed(cfg: "ModelConfig", logits, start: Any = 0):
  """logits [..., C] (vocabulary columns start .. start + C) with `cfg.suppress_ids` set to
  SUPPRESSED_LOGIT; unchanged when there are none."""
  if not cfg.suppress_ids:
    return logits
  cols = jnp.arange(logits.shape[-1]) + start
  hit = jnp.isin(cols, jnp.asarray(cfg.suppress_ids, jnp.int32))
  return jnp.where(hit, jnp.asarray(SUPPRESSED_LOGIT, logits.dtype), logits)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a Qwen2 / Llama decoder."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int = 0  # 0 = hidden_size // num_heads
  model_type: str = "qwen2"
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # Hashable form of the rope scaling dict: sorted (key, value) pairs; () = default RoPE.
  rope_scaling: tuple = ()
  tie_word_embeddings: bool = True
  qkv_bias: bool = True
  o_bias: bool = False
  mlp_bias: bool = False
  max_position_embeddings: int = 32768
  dtype: str = "float32"  # compute dtype: activations, and the weights as the forward reads them
  # storage dtype of the parameters ("" = dtype): float32 under a bfloat16 `dtype` keeps
  # float32 master weights, cast to `dtype` once per step (`lrjax.model.api.compute_params`)
  param_dtype: str = ""
  remat: bool = False  # rematerialise each block in the backward pass
  # vocabulary columns per chunk when the learner scores ids from hidden states
  # (`lrjax.model.vocab`); 0 = full [.., V] logits
  logits_chunk: int = 0
  # LoRA (lrjax/model/lora.py): adapter rank (0 = none), α, and the adapted projections
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_targets: tuple = ()
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  pad_token_id: int | None = None
  # ids whose logits are pinned to SUPPRESSED_LOGIT (never sampled, zero probability): a
  # padding id the checkpoint never trained (`lrjax.data.special`); () = none
  suppress_ids: tuple = ()

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    resolve_dtype(self.dtype)
    if self.param_dtype:
      resolve_dtype(self.param_dtype)
    if self.logits_chunk < 0:
      raise ValueError(f"logits_chunk must be >= 0 (0 = off), got {self.logits_chunk}")
    rope_type = dict(self.rope_scaling).get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")

  @property
  def jnp_dtype(self):
    """The compute dtype."""
    return resolve_dtype(self.dtype)

  @property
  def param_jnp_dtype(self):
    """The dtype the parameters are stored (and trained) in."""
    return resolve_dtype(self.param_dtype or self.dtype)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], dtype: Any = "float32",
                   param_dtype: Any = "") -> "ModelConfig":
    """Builds a config from a transformers `config.json` dictionary (compute dtype
    `dtype`, parameters stored in `param_dtype`, "" = `dtype`)."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if d.get("use_sliding_window", False):
      raise ValueError("config.json sets use_sliding_window=true; lrjax supports full attention only")
    # transformers v5 keeps theta and scaling in `rope_parameters`; v4 at top level.
    rope = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", None) or d.get("rope_theta", 10000.0)
    params = rope or scaling
    rope_type = params.get("rope_type", params.get("type", "default"))
    scaling_items = ()
    if rope_type != "default":
      keep = {k: v for k, v in params.items() if k in (
          "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
      keep["rope_type"] = rope_type
      scaling_items = tuple(sorted(keep.items()))
    num_heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // num_heads
    if model_type == "qwen2":
      qkv_bias, o_bias, mlp_bias = True, False, False
    else:
      qkv_bias = o_bias = bool(d.get("attention_bias", False))
      mlp_bias = bool(d.get("mlp_bias", False))
    eos = d.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
      eos = eos[0] if eos else None
    return cls(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=num_heads, num_kv_heads=d.get("num_key_value_heads") or num_heads,
        head_dim=head_dim, model_type=model_type, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta), rope_scaling=scaling_items,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", model_type == "qwen2")),
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias,
        max_position_embeddings=d.get("max_position_embeddings", 32768),
        dtype=resolve_dtype(dtype).name,
        param_dtype=resolve_dtype(param_dtype).name if param_dtype else "",
        bos_token_id=d.get("bos_token_id"), eos_token_id=eos, pad_token_id=d.get("pad_token_id"))

  def to_hf_dict(self) -> dict:
    """A `config.json` dictionary that transformers v4 and v5 both read."""
    rope_params = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling:
      rope_params.update(dict(self.rope_scaling))
    d = {
        "model_type": self.model_type,
        "architectures": ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim, "hidden_act": "silu", "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta, "rope_parameters": rope_params,
        "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "torch_dtype": self.dtype, "dtype": self.dtype,
        "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id, "initializer_range": 0.02,
    }
    if self.model_type == "llama":
      d.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
    else:
      d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
    return d
