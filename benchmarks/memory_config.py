"""`benchmarks/memory.py --config=...`: one config's RL step compiled ahead of time.

Builds what the RL phase builds (`lrjax.phases.rl.train_context`, `initial_heads`,
`init_rule_params`, `lora.attach`, `frozen_in_compute_dtype` (float32 masters for the
trained parameters, the frozen ones in `model.dtype`), `frozen_reference`,
`LossSpec.from_config`, `make_rl_optimizer`, `make_update`) from the config alone, every array a `jax.ShapeDtypeStruct` carrying
lrjax's shardings on the config's mesh; the trajectory's shapes (the rule's records
included) come from `jax.eval_shape` of the rule's own rollout. No checkpoint,
tokenizer or data is read: the model is `model.preset`, special-token ids are stand-ins
at the top of its vocabulary, and the rule's token tables (HRPO's `####`, Latent-GRPO's
end token) come from a character tokenizer (their shapes are a few ids).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class PaperHost:
  devices: int
  gib: float
  what: str  # where the device count comes from


# The host each `:paper` preset's paper (or official code) trained on. GPU memory is
# not stated by any of them: 80 GiB (A100/H100 80GB) is assumed throughout.
PAPER_HOSTS = {
    "hrpo-paper": PaperHost(1, 80, "official script: one GPU (CUDA_VISIBLE_DEVICES=0), "
                                   "8 completions per device x 4 accumulated"),
    "lepo-paper": PaperHost(8, 80, "official runs: 8 GPUs x 256 accumulated micro-batches"),
    "latent_grpo-paper": PaperHost(8, 80, "not stated; 8 GPUs as the authors' Latent-SFT "
                                          "scripts"),
    "dlr-paper": PaperHost(8, 80, "not stated by the paper; 8 GPUs assumed"),
    "latr-paper": PaperHost(1, 80, "official GRPO: 4 completions per device x 16 "
                                   "accumulated = 64, one GPU"),
    "latent_rl-paper": PaperHost(1, 80, "official code (LatR's authors): one GPU"),
    "latent_sft-paper": PaperHost(8, 80, "official scripts: 8 GPUs x 8 per device x 8 "
                                         "accumulated"),
}


def load_config(spec: str):
  """`configs/<m>.py:<arg>` -> the ConfigDict its `get_config(arg)` returns."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      "lrjax_memory_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


class AbstractRun:
  """What `train_context` and `initial_heads` read of a `lrjax.phases.run.Run`."""

  def __init__(self, config, model_cfg, special: dict):
    self.config, self.model_cfg, self.special = config, model_cfg, special
    self.heads, self.heads_cfg = {}, {}

  def num_latent(self) -> int:
    # 0 = "the model's own chain" (stored with an SFT export); LatR's SFT ends at 6
    return int(self.config.rule.num_latent) or int(self.config.sft.get("max_latents", 0)) or 6

  from lrjax.phases.run import Run as _Run
  rule_context = _Run.rule_context
  del _Run


def model_config(config):
  """The preset's ModelConfig with the config's dtypes, remat, chunking and LoRA."""
  from lrjax.model import lora, preset
  m = config.model
  cfg = preset(m.preset).replace(dtype=m.dtype, param_dtype=m.param_dtype, remat=bool(m.remat),
                                 logits_chunk=int(m.get("logits_chunk", 0)))
  if m.lora.rank:
    cfg = cfg.replace(lora_rank=int(m.lora.rank), lora_alpha=float(m.lora.alpha),
                      lora_targets=lora.check_targets(m.lora.targets))
  v = cfg.vocab_size
  special = {"eos_id": v - 4, "eos_ids": (v - 4,), "pad_id": v - 5, "bot_id": v - 3,
             "latent_id": v - 2, "eot_id": v - 1}
  return cfg.replace(eos_token_id=v - 4, pad_token_id=v - 5, suppress_ids=(v - 5,)), special


def _rule_aux(ctx):
  from lrjax.data import tokenizer as tok_lib
  from lrjax.latent import rule_aux
  tok = tok_lib.build_char_tokenizer(["#### </think> <answer> 0123456789 abc"])
  return rule_aux(ctx.rule, tok, ctx.rule_cfg)


def abstract_step(config, mesh, prompt: int) -> dict:
  """The RL phase's pieces for `config` on `mesh`, as abstract sharded values."""
  import memory  # noqa: PLC0415 - the sibling script (its helpers)
  from lrjax import parallel
  from lrjax.latent import init_rule_params
  from lrjax.model import init, lora
  from lrjax.phases.rl import initial_heads, train_context
  from lrjax.optim import ParamGroups
  from lrjax.rl.learner import (LossSpec, frozen_in_compute_dtype, frozen_reference,
                                make_rl_optimizer, make_update)
  from lrjax.rollout import rollout
  cfg, special = model_config(config)
  run = AbstractRun(config, cfg, special)
  ctx = train_context(run)
  key = jax.random.key(0)
  groups = ParamGroups(tuple(config.rl.param_groups))
  tree = jax.eval_shape(lambda: frozen_in_compute_dtype(cfg, groups, {  # as the RL phase
      "model": lora.attach(cfg, init(cfg, key), key),
      "rule": init_rule_params(ctx, key), "heads": initial_heads(run, ctx)}))
  params = memory._abstract(tree, parallel.param_shardings(tree, mesh))
  rl = config.rl
  rows = rl.num_prompts * rl.group_size
  ids, mask = memory.abstract_batch((jax.ShapeDtypeStruct((rows, prompt), jnp.int32),) * 2,
                                    mesh)
  aux = _rule_aux(ctx)
  rkey = jax.eval_shape(lambda: jax.random.key(0))
  traj = jax.eval_shape(lambda p, i, m, k: rollout(ctx, p, i, m, k, aux), params, ids, mask,
                        rkey)
  mb = rows // max(rl.updates_per_batch, 1)  # one update's mini-batch
  traj_mb = jax.tree.map(lambda x: jax.ShapeDtypeStruct((mb,) + x.shape[1:], x.dtype), traj)
  n = traj.ids.shape[1]
  adv = jax.ShapeDtypeStruct((mb, n) if rl.first_token_selection else (mb,), jnp.float32)
  old = jax.ShapeDtypeStruct((mb, n), jnp.float32)  # recomputed old terms (Latent-GRPO)
  rewards = jax.ShapeDtypeStruct((mb,), jnp.float32)
  traj_mb, adv, old, rewards = memory.abstract_batch((traj_mb, adv, old, rewards), mesh)
  optimizer = make_rl_optimizer(rl, rl.steps)
  opt_state = jax.eval_shape(optimizer.init, params)
  opt_state = memory._abstract(opt_state, parallel.param_shardings(opt_state, mesh))
  ref = None
  if rl.beta > 0:  # the frozen reference, its backbone in the compute dtype
    ref = jax.eval_shape(lambda p: frozen_reference(cfg, p), params)
    ref = memory._abstract(ref, parallel.param_shardings(ref, mesh))
  update = make_update(ctx, LossSpec.from_config(rl), optimizer,
                       microbatch=int(rl.get("microbatch", 0)), mesh=mesh)
  return {"ctx": ctx, "params": params, "ids": ids, "mask": mask, "key": rkey, "aux": aux,
          "update": update, "args": (params, opt_state, ref, traj_mb, adv, aux, old, rewards),
          "rows": rows, "minibatch": mb, "new": n, "model_cfg": cfg}


def compile_step(step: dict, mesh, rollout_too: bool = True) -> dict[str, Any]:
  """{"update": compiled update, "rollout": compiled rollout (or None)}."""
  from lrjax.rollout import rollout
  with jax.set_mesh(mesh):
    update = step["update"].lower(*step["args"]).compile()
    roll = (rollout.lower(step["ctx"], step["params"], step["ids"], step["mask"], step["key"],
                          step["aux"]).compile() if rollout_too else None)
  return {"update": update, "rollout": roll}


def mesh_for(config, devices: int):
  """The config's mesh (`mesh.data/fsdp/tensor`, one may be -1) over `devices` fake devices."""
  from lrjax import parallel
  return parallel.make_mesh(config.mesh, jax.devices()[:devices])
