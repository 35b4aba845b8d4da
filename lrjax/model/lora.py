"""LoRA adapters on the decoder's projections (Hu et al., arXiv 2106.09685).

A targeted kernel W [in, out] (lrjax's x @ W layout) is used as

    W' = W + (α / r) · A B,     A [in, r], B [r, out]

with A drawn like PEFT's default (uniform ±1/sqrt(in)) and B = 0, so W' = W at
initialisation. In HF/PEFT's [out, in] layout the same update is (α/r) · B_peft A_peft
with A_peft = Aᵀ and B_peft = Bᵀ.

The adapters live inside the backbone tree, beside the weights they adapt,
stacked over layers like them:

    params["model"]["lora"][group][name] = {"a": [L, in, r], "b": [L, r, out]}
    group/name: attn/{q,k,v,o}, mlp/{gate,up,down}   (`model.lora.targets`)

so their `rl.param_groups` paths are `model/lora/attn/q/a`, ... The scale α/r is
static: `ModelConfig.lora_rank` / `lora_alpha` (set from `model.lora`).

`merged(cfg, params)` is the one place the adapters enter the model: `api.forward`
(replay, the learner, SFT, `logits`) and `decode.prepare` (the rollout and
evaluation) call it first, and `hf_io.to_hf_tensors` (hence `save_hf`) exports
the merged kernels. `base(params)` is the backbone with the adapters off: the KL
reference of RL (the live frozen weights, no copy of the model).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lrjax.model.config import ModelConfig

KEY = "lora"
GROUPS = {"q": "attn", "k": "attn", "v": "attn", "o": "attn",
          "gate": "mlp", "up": "mlp", "down": "mlp"}
TARGETS = tuple(GROUPS)  # every projection of a block


def scale(cfg: ModelConfig) -> float:
  """α / r (0 when LoRA is off)."""
  return cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0


def has_adapters(params: Any) -> bool:
  """Whether a backbone tree holds adapters."""
  return isinstance(params, dict) and KEY in params


def kernel_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
  """(in, out) of every target's per-layer kernel."""
  h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  return {"q": (h, cfg.num_heads * d), "k": (h, cfg.num_kv_heads * d),
          "v": (h, cfg.num_kv_heads * d), "o": (cfg.num_heads * d, h),
          "gate": (h, f), "up": (h, f), "down": (f, h)}


def check_targets(targets) -> tuple[str, ...]:
  """The targets as a tuple of projection names (ValueError on an unknown one)."""
  if isinstance(targets, str):
    targets = [t.strip() for t in targets.split(",") if t.strip()]
  bad = [t for t in targets if t not in GROUPS]
  if bad:
    raise ValueError(f"unknown LoRA target {bad[0]!r}; choose among {', '.join(TARGETS)}")
  if not targets:
    raise ValueError("LoRA needs at least one target projection")
  return tuple(targets)


def init(cfg: ModelConfig, key: jax.Array) -> dict:
  """Fresh adapters {group: {name: {"a": [L, in, r], "b": [L, r, out] = 0}}} in cfg.param_dtype."""
  if cfg.lora_rank <= 0:
    raise ValueError("LoRA adapters need cfg.lora_rank > 0")
  shapes, r, n = kernel_shapes(cfg), cfg.lora_rank, cfg.num_layers
  out: dict = {}
  for i, name in enumerate(check_targets(cfg.lora_targets)):
    d_in, d_out = shapes[name]
    bound = d_in ** -0.5  # PEFT: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
    a = jax.random.uniform(jax.random.fold_in(key, i), (n, d_in, r), jnp.float32, -bound, bound)
    out.setdefault(GROUPS[name], {})[name] = {
        "a": a.astype(cfg.param_jnp_dtype), "b": jnp.zeros((n, r, d_out), cfg.param_jnp_dtype)}
  return out


def attach(cfg: ModelConfig, params: dict, key: jax.Array) -> dict:
  """The backbone with fresh adapters under params["lora"] (unchanged when LoRA is
  off or adapters are already there, e.g. a resumed tree)."""
  if not cfg.lora_rank or has_adapters(params):
    return params
  return {**params, KEY: init(cfg, key)}


def base(params: dict) -> dict:
  """The backbone with the adapters off (the tree without its "lora" entry)."""
  return {k: v for k, v in params.items() if k != KEY} if has_adapters(params) else params


def delta(cfg: ModelConfig, ab: dict) -> jax.Array:
  """(α / r) · A B [L, in, out] in float32."""
  a, b = ab["a"], ab["b"]
  if a.shape[-1] != cfg.lora_rank:
    raise ValueError(f"LoRA adapters of rank {a.shape[-1]}, but cfg.lora_rank="
                     f"{cfg.lora_rank} (the scale α/r would be wrong)")
  return scale(cfg) * jnp.einsum("lir,lro->lio", a.astype(jnp.float32), b.astype(jnp.float32))


def merged(cfg: ModelConfig, params: dict) -> dict:
  """The backbone with every adapted kernel replaced by W + (α/r) A B (in W's dtype)
  and no "lora" entry; the tree itself when it has no adapters. Differentiable in
  A and B."""
  if not has_adapters(params):
    return params
  layers = dict(params["layers"])
  for group, names in params[KEY].items():
    sub = dict(layers[group])
    for name, ab in names.items():
      w = sub[name]["kernel"]  # L in out
      sub[name] = {**sub[name], "kernel": (w.astype(jnp.float32) + delta(cfg, ab)).astype(w.dtype)}
    layers[group] = sub
  return {**base(params), "layers": layers}


def trainable_base_paths(groups, tree: dict) -> list[str]:
  """Paths under `model/` outside `model/lora/` that `groups` (`lrjax.optim.ParamGroups`)
  would train: with adapters the base must be frozen."""
  return [p for p, g in groups.assign(tree).items()
          if p.startswith("model/") and not p.startswith(f"model/{KEY}/") and groups.lr(g) is not None]


def reference_copy(params: dict) -> dict:
  """What RL copies as its frozen KL reference from the starting tree {"model", "rule",
  "heads"}: all of it, or with adapters everything but "model" (see `reference`)."""
  return {k: v for k, v in params.items() if k != "model"} if has_adapters(params["model"]) \
      else params


def reference(params: dict, ref: dict) -> dict:
  """The KL reference tree: `ref` itself, or when it has no "model" (`reference_copy` of
  a tree with adapters) the live backbone of `params` with the adapters off, under
  stop_gradient. The base is frozen (`trainable_base_paths`), so it is the start."""
  if "model" in ref:
    return ref
  return {**ref, "model": jax.lax.stop_gradient(base(params["model"]))}
