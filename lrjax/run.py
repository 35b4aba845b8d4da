"""What every phase of a run shares: config, workdir, mesh, task, tokenizer, model.

`Run.create(config, workdir)` checks the stored config (resume safety), builds
the mesh, loads the task, and resolves the tokenizer and the model config:

* `config.init == ''`: the `model.preset` shapes with random init, and (for
  the tiny models) a character tokenizer built from the task and saved in
  `<workdir>/tokenizer` so that a resumed run reads the same vocabulary;
* `config.init` = an HF folder (config.json + safetensors + tokenizer), or a
  workdir of an earlier run, whose latest export is used.

Phases hand parameters to each other through `run.params` (backbone) and
`run.rule_params`; each phase keeps its checkpoints apart in
`<workdir>/<phase>/`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import ml_collections

from lrjax import config_utils, parallel
from lrjax.config_utils import ConfigError
from lrjax.data import tokenizer as tok_lib
from lrjax.data.tasks import QA, Problem, TaskData, load_task, rl_problems, sft_problems
from lrjax.metrics import MetricsWriter
from lrjax.model import ModelConfig, init, load_hf, preset, save_hf
from lrjax.validate import validate_config  # noqa: F401  (lrjax.main validates through here)

def needs_latent_tokens(config) -> bool:
  """Whether the thought rule or the SFT method declares special tokens (`<bot>`,
  `<latent>`, `<eot>`) that the vocabulary must hold."""
  from lrjax.latent import RULES
  from lrjax.sft.sequences import SFT_METHODS
  return bool(RULES.get(config.rule.name).special_tokens
              or SFT_METHODS.get(config.sft.method).special_tokens)


def resolve_init_folder(path: str) -> str:
  """An HF folder, or a workdir whose newest export (rl, then sft) is returned."""
  if os.path.exists(os.path.join(path, "config.json")) and (
      os.path.exists(os.path.join(path, "model.safetensors"))
      or os.path.exists(os.path.join(path, "model.safetensors.index.json"))):
    return path
  for phase in ("rl", "sft"):
    export = os.path.join(path, phase, "export")
    if os.path.exists(os.path.join(export, "config.json")):
      return export
  raise ConfigError(f"config.init={path!r} is neither an HF model folder nor a workdir with an export")


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  task: TaskData
  tokenizer: Any
  model_cfg: ModelConfig
  special: dict  # eos_id, pad_id, and bot/latent/eot ids when present
  metrics: MetricsWriter
  params: dict | None = None  # backbone parameters handed between phases
  rule_params: dict | None = None

  @classmethod
  def create(cls, config, workdir: str) -> "Run":
    os.makedirs(workdir, exist_ok=True)
    config_utils.check_resume_config(workdir, config, config.allow_config_mismatch)
    config_utils.save_config(workdir, config)
    parallel.maybe_initialize_distributed()
    mesh = parallel.make_mesh(config.mesh)
    task = load_task(config.data)
    logging.info("task %s: %d train / %d eval problems", config.data.task, len(task.train),
                 len(task.eval))
    tokenizer, model_cfg, params = _tokenizer_and_model(config, workdir, task)
    special = {"eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id}
    for name in tok_lib.LATENT_TOKENS:
      tid = tokenizer.convert_tokens_to_ids(name)
      if tid is not None and tid != tokenizer.unk_token_id and name in tokenizer.get_vocab():
        special[name.strip("<>") + "_id"] = tid
    run = cls(config, workdir, mesh, task, tokenizer, model_cfg, special, MetricsWriter(workdir))
    run.params = params
    return run

  @functools.cached_property
  def sft_train(self) -> list[Problem]:
    """The worked solutions the SFT phase trains on (`data.sft_size` of them)."""
    return sft_problems(self.task, self.config.data.sft_size)

  @functools.cached_property
  def rl_train(self) -> list[QA]:
    """The RL phase's problems: the whole train split, question and answer only."""
    return rl_problems(self.task)

  def close(self) -> None:
    self.metrics.close()

  def export(self, phase: str, params: dict, rule_params: dict | None = None) -> str:
    """Writes `<workdir>/<phase>/export`: HF weights + tokenizer (+ rule sidecar)."""
    path = os.path.join(self.workdir, phase, "export")
    if jax.process_index() == 0:
      save_hf(self.model_cfg, params, path)
      tok_lib.save_tokenizer(self.tokenizer, path)
      if rule_params:
        save_sidecar(path, self.config.rule.name, rule_params)
    return path


SIDECAR = "lrjax_rule.safetensors"


def save_sidecar(path: str, rule: str, rule_params: dict) -> None:
  """Thought-rule parameters beside an HF export (transformers ignores the file)."""
  from flax import traverse_util
  from safetensors.numpy import save_file
  import numpy as np
  flat = traverse_util.flatten_dict(jax.device_get(rule_params), sep="/")
  save_file({k: np.asarray(v) for k, v in flat.items()}, os.path.join(path, SIDECAR),
            metadata={"rule": rule})


def load_sidecar(path: str) -> tuple[str, dict] | None:
  """(rule name, params) from an export's sidecar, or None when there is none."""
  from flax import traverse_util
  from safetensors import safe_open
  import jax.numpy as jnp
  f = os.path.join(path, SIDECAR)
  if not os.path.exists(f):
    return None
  with safe_open(f, framework="np") as h:
    rule = (h.metadata() or {}).get("rule", "")
    flat = {k: jnp.asarray(h.get_tensor(k)) for k in h.keys()}
  return rule, traverse_util.unflatten_dict(flat, sep="/")


def _task_texts(task: TaskData) -> list[str]:
  from lrjax.data.tasks import cot_text, prompt_text
  return [prompt_text(p) + cot_text(p) for p in task.train[:20000] + task.eval]


def _tokenizer_and_model(config, workdir: str, task: TaskData):
  """(tokenizer, model_cfg, initial backbone params)."""
  if config.init:
    folder = resolve_init_folder(config.init)
    model_cfg, params = load_hf(folder, dtype=config.model.dtype)
    tokenizer = tok_lib.load_tokenizer(config.tokenizer.path or folder)
  else:
    tok_dir = os.path.join(workdir, "tokenizer")
    if config.tokenizer.path:
      tokenizer = tok_lib.load_tokenizer(config.tokenizer.path)
    elif os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
      tokenizer = tok_lib.load_tokenizer(tok_dir)
    else:
      tokenizer = tok_lib.build_char_tokenizer(_task_texts(task))
    model_cfg = preset(config.model.preset)
    vocab = max(model_cfg.vocab_size, -(-len(tokenizer) // 8) * 8)
    model_cfg = model_cfg.replace(vocab_size=vocab, dtype=config.model.dtype,
                                  remat=config.model.remat, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    params = init(model_cfg, jax.random.key(config.seed))
  model_cfg = model_cfg.replace(remat=config.model.remat)
  if needs_latent_tokens(config):
    tokenizer, model_cfg, params, _ = tok_lib.add_latent_tokens(tokenizer, model_cfg, params)
  if not config.init and jax.process_index() == 0:
    tok_lib.save_tokenizer(tokenizer, os.path.join(workdir, "tokenizer"))
  return tokenizer, model_cfg, params
