"""Hugging Face checkpoint import/export (safetensors + config.json).

`load_hf` reads a local folder with `config.json` and either
`model.safetensors` or a sharded `model.safetensors.index.json`, in float32 or
bfloat16 (via ml_dtypes, so no NumPy bf16 gap), into lrjax's parameter tree;
`save_hf` writes a folder that `transformers.AutoModelForCausalLM` loads.

Name mapping (lrjax path -> HF tensor; kernels are stored transposed in HF,
and `layers/...` leaves stack the per-layer tensors on a leading axis):

    embed/embedding              model.embed_tokens.weight
    layers/input_norm/scale      model.layers.{i}.input_layernorm.weight
    layers/attn/{q,k,v,o}/kernel model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
    layers/attn/{q,k,v,o}/bias   model.layers.{i}.self_attn.{q,k,v,o}_proj.bias
    layers/post_attn_norm/scale  model.layers.{i}.post_attention_layernorm.weight
    layers/mlp/{gate,up,down}/*  model.layers.{i}.mlp.{gate,up,down}_proj.*
    final_norm/scale             model.norm.weight
    lm_head/kernel               lm_head.weight            (untied models only)
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from lrjax.model import lora
from lrjax.model.api import init
from lrjax.model.config import ModelConfig, resolve_dtype

_SUBMODULES = {"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
               "attn": "self_attn", "mlp": "mlp", "q": "q_proj", "k": "k_proj", "v": "v_proj",
               "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight"}


class CheckpointError(ValueError):
  """A checkpoint folder that does not match what the config asks for."""


def hf_tensor_name(path: tuple[str, ...], layer: int | None = None) -> str:
  """HF name of an lrjax parameter path (for `layers/...`, of one layer)."""
  if path == ("embed", "embedding"):
    return "model.embed_tokens.weight"
  if path == ("final_norm", "scale"):
    return "model.norm.weight"
  if path == ("lm_head", "kernel"):
    return "lm_head.weight"
  if path[0] == "layers":
    parts = [_SUBMODULES[p] for p in path[1:-1]] + [_LEAVES[path[-1]]]
    return f"model.layers.{layer}." + ".".join(parts)
  raise KeyError(f"no HF name for parameter {'/'.join(path)}")


def _transposed(path) -> bool:
  return path[-1] == "kernel"


def abstract_params(cfg: ModelConfig) -> dict:
  """The parameter tree as ShapeDtypeStructs (nothing allocated)."""
  return jax.eval_shape(lambda: init(cfg, jax.random.key(0)))


class _Reader:
  """Random access to the tensors of a (possibly sharded) safetensors folder."""

  def __init__(self, path: str):
    self.path = path
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        self.weight_map = json.load(f)["weight_map"]
    elif os.path.exists(single):
      with safe_open(single, framework="np") as f:
        self.weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
      raise CheckpointError(
          f"{path} has neither model.safetensors nor model.safetensors.index.json")
    self._files = {}

  def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.weight_map:
      raise CheckpointError(
          f"checkpoint {self.path} is missing tensor {name!r} (expected shape {expected_shape})")
    fname = os.path.join(self.path, self.weight_map[name])
    if fname not in self._files:
      self._files[fname] = safe_open(fname, framework="np")
    handle = self._files[fname]
    shape = tuple(handle.get_slice(name).get_shape())
    if shape != tuple(expected_shape):
      raise CheckpointError(
          f"tensor {name!r} in {fname} has shape {shape}, but the config expects "
          f"{tuple(expected_shape)}")
    return handle.get_tensor(name)


def read_config(path: str, dtype: Any = "float32", param_dtype: Any = "") -> ModelConfig:
  cfg_file = os.path.join(path, "config.json")
  if not os.path.exists(cfg_file):
    raise CheckpointError(f"{path} has no config.json")
  with open(cfg_file) as f:
    return ModelConfig.from_hf_dict(json.load(f), dtype=dtype, param_dtype=param_dtype)


def load_hf(path: str, dtype: Any = jnp.float32, sharding: Any = None,
            param_dtype: Any = "") -> tuple[ModelConfig, dict]:
  """Loads a local HF Qwen2/Llama folder -> (cfg, params): compute dtype `dtype`, the
  parameters stored in `param_dtype` ("" = `dtype`; float32 for master weights).

  `sharding`, if given, is a pytree of shardings matching the parameters (see
  `lrjax.parallel.param_shardings`): each tensor is placed as it is read.
  """
  cfg = read_config(path, dtype, param_dtype)
  dtype = cfg.param_jnp_dtype
  reader = _Reader(path)
  flat = traverse_util.flatten_dict(abstract_params(cfg))
  flat_sharding = traverse_util.flatten_dict(sharding) if sharding is not None else {}
  out = {}
  for p, leaf in flat.items():
    if p[0] == "layers":
      per_layer = leaf.shape[1:]
      hf_shape = per_layer[::-1] if _transposed(p) else per_layer
      arrs = [reader.get(hf_tensor_name(p, i), hf_shape) for i in range(cfg.num_layers)]
      arr = np.stack([a.T if _transposed(p) else a for a in arrs])
    else:
      hf_shape = leaf.shape[::-1] if _transposed(p) else leaf.shape
      arr = reader.get(hf_tensor_name(p), hf_shape)
      arr = arr.T if _transposed(p) else arr
    arr = jnp.asarray(np.ascontiguousarray(arr)).astype(dtype)
    out[p] = jax.device_put(arr, flat_sharding[p]) if p in flat_sharding else arr
  return cfg, traverse_util.unflatten_dict(out)


def to_hf_tensors(cfg: ModelConfig, params: dict, dtype: Any = None) -> dict[str, np.ndarray]:
  """lrjax parameters -> {HF name: numpy array} (kernels transposed, layers split;
  LoRA adapters merged into their kernels, W + (α/r) A B)."""
  dtype = resolve_dtype(dtype or cfg.dtype)
  tensors = {}
  for p, leaf in traverse_util.flatten_dict(lora.merged(cfg, params)).items():
    arr = np.asarray(jax.device_get(leaf)).astype(dtype, copy=False)  # on the host
    if p[0] == "layers":
      for i in range(arr.shape[0]):
        a = arr[i].T if _transposed(p) else arr[i]
        tensors[hf_tensor_name(p, i)] = np.ascontiguousarray(a)
    else:
      tensors[hf_tensor_name(p)] = np.ascontiguousarray(arr.T if _transposed(p) else arr)
  return tensors


def save_hf(cfg: ModelConfig, params: dict, path: str, dtype: Any = None) -> str:
  """Writes `config.json` + `model.safetensors` loadable by transformers (LoRA
  adapters in `params` are merged into the kernels they adapt)."""
  os.makedirs(path, exist_ok=True)
  dtype = resolve_dtype(dtype or cfg.dtype)
  save_file(to_hf_tensors(cfg, params, dtype), os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})
  hf = cfg.replace(dtype=dtype.name).to_hf_dict()
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  return path
