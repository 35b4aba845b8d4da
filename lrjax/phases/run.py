"""What every phase of a run shares: config, workdir, mesh, task, tokenizer, model.

`Run.create(config, workdir)` checks the stored config (resume safety), builds
the mesh, loads the task, and resolves the tokenizer and the model config:

* `config.init == ''`: the `model.preset` shapes with random init, and (for
  the tiny models) a character tokenizer built from the task and saved in
  `<workdir>/tokenizer` so that a resumed run reads the same vocabulary;
* `config.init` = an HF folder (config.json + safetensors + tokenizer), or a
  workdir of an earlier run, whose latest export is used.

Phases hand parameters to each other through `run.params` (backbone) and
`run.rule_params`; each phase keeps its files apart in `<workdir>/<phase>/`
(`lrjax.phases.workdir`). `run.place` puts a parameter tree on the mesh and
`run.rule_context` makes a thought rule's context from the config.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import ml_collections

from lrjax import config_moves, config_utils, distributed, parallel
from lrjax.config_checks import OPTION_SECTIONS
from lrjax.data import special as special_lib, tokenizer as tok_lib
from lrjax.data.prompts import Prompter
from lrjax.data.tasks import QA, Problem, TaskData, load_task, rl_problems, sft_problems
from lrjax.latent import RULES, RuleContext, rule_config
from lrjax.metrics import MetricsWriter, say
from lrjax.model import ModelConfig, init, load_hf, lora, preset
from lrjax.phases.workdir import load_model_meta, resolve_init_folder
from lrjax.sampling import Sampling
from lrjax.sft.sequences import SFT_METHODS


def needs_latent_tokens(config) -> bool:
  """Whether the thought rule or the SFT method declares special tokens (`<bot>`,
  `<latent>`, `<eot>`) that the vocabulary must hold."""
  return bool(RULES.get(config.rule.name).special_tokens
              or SFT_METHODS.get(config.sft.method).special_tokens)


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  task: TaskData
  tokenizer: Any
  model_cfg: ModelConfig
  special: dict  # eos_id, eos_ids (every id ending a row), pad_id, and bot/latent/eot ids when present
  metrics: MetricsWriter
  params: dict | None = None  # backbone parameters handed between phases
  rule_params: dict | None = None
  # the latent chain length the current params were trained with (None: unknown,
  # e.g. an HF folder without lrjax_model.json); `num_latent()` resolves it
  model_num_latent: int | None = None
  # extra heads handed between phases (params["heads"], e.g. Latent RL's "value"), and
  # the settings their phase resolved for the objective (e.g. the value BCE's pos_weight)
  heads: dict = dataclasses.field(default_factory=dict)
  heads_cfg: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, config, workdir: str) -> "Run":
    # first: process_index() (who writes the files below) needs the process group
    distributed.maybe_initialize_distributed(config.get("distributed"))
    os.makedirs(workdir, exist_ok=True)
    config_utils.check_resume_config(workdir, config, config.allow_config_mismatch,
                                     unread=dropped_sections(workdir, config),
                                     migrate=lambda stored: migrated(workdir, stored, config))
    config_utils.save_config(workdir, config)
    mesh = parallel.make_mesh(config.mesh)
    task = load_task(config.data)
    logging.info("task %s: %d train / %d eval problems", config.data.task, len(task.train),
                 len(task.eval))
    tokenizer, model_cfg, params, ids = _tokenizer_and_model(config, workdir, task)
    special = {"eos_id": ids.eos_ids[0], "eos_ids": ids.eos_ids, "pad_id": ids.pad_id}
    for name in tok_lib.LATENT_TOKENS:
      tid = tokenizer.convert_tokens_to_ids(name)
      if tid is not None and tid != tokenizer.unk_token_id and name in tokenizer.get_vocab():
        special[name.strip("<>") + "_id"] = tid
    run = cls(config, workdir, mesh, task, tokenizer, model_cfg, special, MetricsWriter(workdir))
    eot = run.prompter.end_of_turn_id()  # a templated turn ends a row like an eos
    if eot is not None and eot not in special["eos_ids"]:
      special["eos_ids"] = special["eos_ids"] + (eot,)
    run.params = params
    if config.init:
      run.model_num_latent = load_model_meta(resolve_init_folder(config.init)).get("num_latent")
    return run

  def num_latent(self) -> int:
    """The `hidden` chain length to run: `rule.num_latent`, or with 0 the model's own
    (stored with its export); a non-zero value that differs from the model's wins,
    with a warning (not for a model trained without latent steps, e.g. the CoT model
    under DLR's chain)."""
    asked, own = int(self.config.rule.num_latent), self.model_num_latent
    if asked == 0:
      return own or 0
    if own and own != asked:
      msg = (f"config.rule.num_latent={asked} overrides the {own} latent steps the model "
             "was trained with")
      logging.warning(msg)
      say(f"[lrjax] warning: {msg}")
    return asked

  @functools.cached_property
  def prompter(self) -> Prompter:
    """How this run writes prompts and SFT targets (`data.prompt`, `data.chat_template`)."""
    return Prompter.from_config(self.tokenizer, self.config.data)

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

  def place(self, tree: Any) -> Any:
    """Puts a parameter-like tree on the mesh with lrjax's partition rules."""
    return jax.device_put(tree, parallel.param_shardings(tree, self.mesh))

  def rule_context(self, rule: str, max_new: int, num_latent: int = 0,
                   temperature: float = 1.0) -> RuleContext:
    """Rule `rule`'s context for this run: its settings (its config section), the special ids."""
    c = self.config
    rule_cfg = rule_config(rule, c)
    return RuleContext(
        model_cfg=self.model_cfg, rule=rule, rule_cfg=rule_cfg,
        sampling=Sampling(temperature=temperature), eos_id=self.special["eos_id"],
        extra_eos=tuple(self.special.get("eos_ids", ())[1:]),
        pad_id=self.special["pad_id"], bot_id=self.special.get("bot_id", -1),
        latent_id=self.special.get("latent_id", -1), eot_id=self.special.get("eot_id", -1),
        num_latent=num_latent, max_new=max_new)

  def eval_context(self, rule: str, num_latent: int = 0, temperature: float = 1.0) -> RuleContext:
    """`rule_context` for a held-out evaluation: `eval.max_new` answer positions plus
    what the rule spends before the answer (`ThoughtRule.extra_positions`: `hidden`'s
    latents and `<eot>`)."""
    budget = self.config.eval.max_new + RULES.get(rule).extra_positions(num_latent)
    return self.rule_context(rule, budget, num_latent=num_latent, temperature=temperature)


def migrated(workdir: str, stored: dict, config) -> dict:
  """A workdir's stored config read in the current layout (`lrjax.config_moves`: the
  rule settings that moved from `config.rule` to their method's section, and
  `model.param_dtype` where it predates the field), each change said in one line."""
  for migrate in (lambda s: config_moves.migrate_stored(s, config),
                  config_moves.migrate_param_dtype):
    stored, notice = migrate(stored)
    if notice:
      say(f"[lrjax] {workdir}: {notice}")
  return stored


def dropped_sections(workdir: str, config) -> tuple[str, ...]:
  """A method's config sections (`OPTION_SECTIONS`) that a workdir's stored config holds
  and `config` has not: a config.json written when configs/base.py held every method's
  section. Nothing reads them; resuming does not count them as changes, says so in one
  line, and the config.json it writes drops them."""
  stored = config_utils.load_config(workdir) or {}
  dropped = tuple(s for s in OPTION_SECTIONS.names() if s in stored and s not in config)
  if dropped:
    say(f"[lrjax] {workdir}: its stored config.json holds "
        f"{', '.join('config.' + s for s in dropped)}, which this config has not (a method "
        "section it does not use, from before each method kept its own); dropped")
  return dropped


def _task_texts(task: TaskData) -> list[str]:
  from lrjax.data.tasks import cot_text, prompt_text
  return [prompt_text(p) + cot_text(p) for p in task.train[:20000] + task.eval]


def _tokenizer_and_model(config, workdir: str, task: TaskData):
  """(tokenizer, model_cfg, initial backbone params, `Special` ids)."""
  folder = ""
  if config.init:
    folder = resolve_init_folder(config.init)
    model_cfg, params = load_hf(folder, dtype=config.model.dtype,
                                param_dtype=config.model.param_dtype)
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
                                  param_dtype=config.model.param_dtype, remat=config.model.remat,
                                  eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    params = init(model_cfg, jax.random.key(config.seed))
  ids = special_lib.resolve_special(tokenizer, folder)  # may add a pad token
  model_cfg, params = tok_lib.fit_vocab(tokenizer, model_cfg, params)
  model_cfg = model_cfg.replace(pad_token_id=ids.pad_id, suppress_ids=ids.suppress_ids)
  model_cfg = model_cfg.replace(remat=config.model.remat,
                                logits_chunk=config.model.get("logits_chunk", 0))
  if config.model.lora.rank:  # the adapters themselves are attached by the RL phase
    model_cfg = model_cfg.replace(lora_rank=int(config.model.lora.rank),
                                  lora_alpha=float(config.model.lora.alpha),
                                  lora_targets=lora.check_targets(config.model.lora.targets))
  if needs_latent_tokens(config):
    tokenizer, model_cfg, params, _ = tok_lib.add_latent_tokens(tokenizer, model_cfg, params)
  # every process has read the tokenizer folder before process 0 (re)writes it
  _barrier("lrjax: tokenizer read")
  if not config.init and jax.process_index() == 0:
    tok_lib.save_tokenizer(tokenizer, os.path.join(workdir, "tokenizer"))
  _barrier("lrjax: tokenizer saved")
  return tokenizer, model_cfg, params, ids


def _barrier(name: str) -> None:
  """Waits for every process (a no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
