"""The eval phase (`--config.mode=eval --config.init=<workdir or HF folder>`): evaluate a model.

Writes the `eval/*` metrics at ("eval", step 0) in `<workdir>/metrics.jsonl`.
The thought rule is `config.rule.name`; its parameters come from the export's
sidecar (`lrjax_rule.safetensors`) when the rule has any, its extra heads (e.g.
DLR's assistant) from `lrjax_heads.safetensors` when the export has one.
"""
from __future__ import annotations

import os

import jax

from lrjax.latent import init_rule_params, prompt_suffix
from lrjax.phases import held_out
from lrjax.phases.workdir import HEADS, load_sidecar, load_tree, resolve_init_folder


def run_eval(run) -> dict:
  c = run.config
  n = run.num_latent()  # rule.num_latent, or 0: the chain length stored with the model
  ctx = run.eval_context(c.rule.name, num_latent=n, temperature=c.rl.temperature)
  rule_params = init_rule_params(ctx, jax.random.key(c.seed))
  sidecar = load_sidecar(resolve_init_folder(c.init)) if c.init else None
  if sidecar is not None:
    name, stored = sidecar
    if name != c.rule.name:
      raise ValueError(f"{c.init} holds parameters of rule {name!r}, but config.rule.name="
                       f"{c.rule.name!r}")
    rule_params = stored
  params = run.place({"model": run.params, "rule": rule_params, "heads": load_heads(c.init)})
  return held_out.evaluate_at(run, "eval", 0, params, ctx, prompt_suffix(ctx))


def load_heads(init: str) -> dict:
  """params["heads"] of the export `init` names ({} without a heads sidecar)."""
  if not init:
    return {}
  f = os.path.join(resolve_init_folder(init), HEADS)
  return load_tree(f) if os.path.exists(f) else {}
