"""Config validation before any phase runs: one table of (field, check) rows.

    phases = validate_config(config, PHASES)   # ConfigError naming the field, or the phases

`ROWS` lists every check in order; the first failing row raises a one-line
`ConfigError` such as

    config.rl.loss='ppo_clp' is not one of: ppo_clip, reinforce, reinforce_onpolicy
    config.sft.steps=-5 must be > 0 (the sft phase runs)

A row is `Row(field, check, phases=(), when=None)`: `check(value, config)`
returns what is wrong with the value (or None); `phases` limits the row to runs
that include one of those phases (a phase that is not run may keep, say, 0
steps); `when(config)` adds any other condition. Names (registries, schedules,
dtypes) and the shape of `rl.param_groups` are checked whatever the phases: a
misspelling is an error even where it is not read yet.

A method's settings are a typed section of their own (`lrjax.method.Options`, e.g.
`config.lepo`, the section of LEPO's rule): its checks run as rows of that section
when the config has it. Other fields of a method are checked by the rows its
`Method` record declares, e.g.

    Method(..., rows=(Row("my_method.coef", positive, phases=("rl",)),))

and a registry's names are checked with `one_of(lambda: MY_REGISTRY.names())`.
A registered advantage estimator may declare `min_group_size` (GRPO-style
estimators normalise within a group and declare 2); `rl.group_size` is
checked against it. A registered policy loss is a `PolicyLoss` record: with
`uses_ratio=False` (HRPO's `reinforce_onpolicy`) `rl.updates_per_batch > 1` is
refused; with `supports_direct=False` (DLR's `gspo_clip`) so is an objective that
declares direct terms (`Objective.has_direct`: LEPO's rule, Latent RL's
`latent_value`), whose positions it would not train. A registered method's own
rows (`lrjax.method.Method.rows`, filed in `METHOD_ROWS`) run after `ROWS`.
"""
from __future__ import annotations

from collections.abc import Sequence

from lrjax.config_checks import (METHOD_ROWS, ROWS, Check, Row, _compare,  # noqa: F401
                                  _is_int, _is_number, boolean, check_rows, in_unit_interval,
                                  non_negative, non_negative_int, off_or_above_one,
                                  off_or_non_negative, one_of, param_groups, positive,
                                  positive_int)
from lrjax.config_utils import ConfigError, get_field, mode_phases

def _aux_losses(value, config) -> str | None:
  """A (possibly empty) sequence of (name in AUX_LOSSES, weight >= 0) pairs."""
  from lrjax.rl.aux_losses import AUX_LOSSES
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    return "must be a tuple of (name, weight) pairs, e.g. (('heads_l2', 0.01),)"
  for i, entry in enumerate(value):
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
      return f"entry {i} ({entry!r}) must be a (name, weight) pair"
    name, weight = entry
    if name not in AUX_LOSSES:
      return f"entry {i}: {name!r} is not one of: {', '.join(AUX_LOSSES.names())}"
    if not (_is_number(weight) and weight >= 0):
      return f"entry {i} ({name!r}): weight {weight!r} must be a number >= 0"
  return None


def _updates_per_batch(value, config) -> str | None:
  """Whole prompt groups per mini-batch, and a policy loss with an importance ratio."""
  from lrjax.rl.losses import POLICY_LOSSES
  if config.rl.num_prompts % value:
    return (f"must divide rl.num_prompts={config.rl.num_prompts} (mini-batches hold whole "
            "prompt groups)")
  if value > 1 and not POLICY_LOSSES.get(config.rl.loss).uses_ratio:
    return (f"must be 1 with rl.loss={config.rl.loss!r}: it has no importance ratio "
            "(on-policy only, one update per rollout batch)")
  return None


def _loss_takes_objective(value, config) -> str | None:
  """The policy loss adds every term the objective makes: a loss without direct terms
  paired with an objective that makes them would train nothing at their positions."""
  from lrjax.latent import OBJECTIVES, RULES
  from lrjax.rl.losses import POLICY_LOSSES
  if POLICY_LOSSES.get(value).supports_direct:
    return None
  objective = config.rl.objective
  if objective:
    obj, whose = OBJECTIVES.get(objective), f"config.rl.objective={objective!r}"
  else:
    name = config.rule.name
    obj, whose = RULES.get(name).objective, f"the objective of config.rule.name={name!r}"
  if obj.has_direct:
    return (f"drops the direct terms of {whose}, whose positions would train nothing: "
            "pick a loss that adds them (e.g. 'ppo_clip')")
  return None


def _microbatch(value, config) -> str | None:
  """Whole chunks of rows in every mini-batch (`lrjax.rl.accumulate`)."""
  rows = config.rl.num_prompts * config.rl.group_size // max(config.rl.updates_per_batch, 1)
  if value and rows % value:
    return (f"must divide the {rows} rows of a mini-batch (rl.num_prompts x rl.group_size / "
            "rl.updates_per_batch)")
  return None


def _bucket_width(value, config) -> str | None:
  """With an auxiliary loss (it may couple a prompt's rows) the length-sorted chunks
  hold whole prompt groups (`lrjax.rl.buckets`)."""
  micro = config.rl.get("microbatch", 0)
  if value and config.rl.aux_losses and micro and micro % config.rl.group_size:
    return (f"with rl.aux_losses, rl.microbatch={micro} must be a multiple of "
            f"rl.group_size={config.rl.group_size} (the chunks hold whole prompt groups)")
  return None


def _sft_within_train(value, config) -> str | None:
  """A synthetic task has `data.train_size` problems; SFT reads the first `sft_size`."""
  if value > config.data.train_size:
    return f"exceeds config.data.train_size={config.data.train_size} (SFT reads the first sft_size)"
  return None


def _synthetic_task(config) -> bool:
  """True for a task generated from `data.train_size` (arith, prosqa), not read from files."""
  from lrjax.data.tasks import TASKS, registered_tasks
  return (config.data.task in registered_tasks()
          and TASKS.get(config.data.task).__module__ == "lrjax.data.synthetic")


def _min_group_size(value, config) -> str | None:
  from lrjax.rl.advantages import ADVANTAGES
  need = getattr(ADVANTAGES.get(config.rl.advantage), "min_group_size", 1)
  if value < need:
    return (f"must be >= {need}: rl.advantage={config.rl.advantage!r} normalises within "
            "each prompt's group")
  return None


def _pass_k(value, config) -> str | None:
  n = config.eval.num_samples
  ks = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
  for k in ks:
    if not _is_int(k) or k < 1:
      return f"entries must be integers >= 1, got {k!r}"
    if k > n:
      return f"has k={k} > eval.num_samples={n} (pass@k needs k <= n samples)"
  return None


def _objective_heads(value, config) -> str | None:
  """An objective that reads a head an earlier phase makes (`HEADS`) needs that phase in
  config.mode."""
  from lrjax.latent import HEADS, OBJECTIVES
  heads = OBJECTIVES.get(value).heads if value else ()
  phases = mode_phases(config.mode)
  for h in heads:
    phase = HEADS.get(h).phase if h in HEADS else ""
    if phase and phase not in phases:
      return (f"reads the {h} head: run the {phase!r} phase before 'rl' (config.mode "
              f"'sft,{phase},rl', or '{phase},rl' with config.init)")
  return None


def _objective_section(value, config) -> str | None:
  """An objective that reads a config section (`Objective.config_section`) needs it."""
  from lrjax.latent import OBJECTIVES
  section = OBJECTIVES.get(value).config_section if value else ""
  if section and section not in config:
    return (f"reads config.{section}, which this config has not: add it with "
            f"configs/base.py's use_options(c, {section!r})")
  return None


def _warmup_below_steps(phase: str) -> Check:
  def check(value, config):
    steps = get_field(config, f"{phase}.steps")
    if value >= steps:
      return f"must be < {phase}.steps={steps} with {phase}.schedule='cosine'"
    return None
  return check


# --------------------------------------------------------------------------- names


def _tasks():
  from lrjax.data.tasks import registered_tasks
  return registered_tasks()


def _presets():
  from lrjax.model import PRESETS
  return sorted(PRESETS)


def _dtypes():
  from lrjax.model.config import DTYPE_NAMES
  return DTYPE_NAMES


def _sft_methods():
  from lrjax.sft.sequences import SFT_METHODS
  return SFT_METHODS.names()


def _schedules():
  from lrjax.optim import SCHEDULES
  return SCHEDULES


def _registry(module: str, name: str, extra: tuple[str, ...] = ()):
  def names():
    import importlib
    return [*extra, *getattr(importlib.import_module(module), name).names()]
  return names


def _latr_schedule(value, config) -> str | None:
  """LatR's curriculum must start below its maximum and reach it by the last stage."""
  s = config.sft
  if s.start_latents > value:
    return f"must be >= sft.start_latents={s.start_latents}"
  if s.start_latents + s.num_stages * s.latents_per_step < value:
    return (f"is not reached: sft.start_latents + sft.num_stages * sft.latents_per_step = "
            f"{s.start_latents + s.num_stages * s.latents_per_step}")
  return None


def _lora_targets(value, config):
  """Projection names of `lrjax.model.lora.TARGETS`."""
  from lrjax.model import lora  # noqa: PLC0415
  try:
    lora.check_targets(value)
  except ValueError as e:
    return str(e)
  return None


_SAMPLED = lambda c: c.eval.sampled  # noqa: E731
_TRAIN = ("sft", "rl")

ROWS.extend([
    # names: always
    Row("data.task", one_of(_tasks)),
    Row("data.prompt", one_of(_registry("lrjax.data.prompts", "PROMPTS"))),
    Row("data.chat_template", one_of(lambda: ["none", "auto"])),
    Row("model.preset", one_of(_presets), when=lambda c: not c.init),  # init brings its shapes
    Row("model.dtype", one_of(_dtypes)),
    Row("model.param_dtype", one_of(_dtypes)),
    Row("model.logits_chunk", non_negative_int),
    Row("model.lora.rank", non_negative_int),
    Row("model.lora.alpha", positive, when=lambda c: c.model.lora.rank > 0),
    Row("model.lora.targets", _lora_targets, when=lambda c: c.model.lora.rank > 0),
    Row("sft.method", one_of(_sft_methods)),
    Row("sft.schedule", one_of(_schedules)),
    Row("rule.name", one_of(_registry("lrjax.latent", "RULES"))),
    Row("rl.loss", one_of(_registry("lrjax.rl.losses", "POLICY_LOSSES"))),
    Row("rl.aggregation", one_of(_registry("lrjax.rl.losses", "AGGREGATIONS"))),
    Row("rl.advantage", one_of(_registry("lrjax.rl.advantages", "ADVANTAGES"))),
    Row("rl.schedule", one_of(_schedules)),
    Row("rl.reward", one_of(_registry("lrjax.rewards", "REWARDS", extra=("",)))),  # '' = task's
    Row("rl.kl_estimator", one_of(_registry("lrjax.rl.kl", "KL_ESTIMATORS"))),
    Row("rl.kl_reference", one_of(_registry("lrjax.rl.learner", "KL_REFERENCES"))),
    Row("rl.aux_losses", _aux_losses),
    Row("rl.objective", one_of(_registry("lrjax.latent", "OBJECTIVES", extra=("",)))),
    Row("rl.objective", _objective_heads, phases=("rl",)),
    Row("rl.objective", _objective_section, phases=("rl",)),
    Row("rl.loss", _loss_takes_objective, phases=("rl",)),
    Row("rl.param_groups", param_groups),
    Row("rule.num_latent", non_negative_int),
    # SFT
    Row("sft.steps", positive_int, phases=("sft",)),
    Row("sft.batch_size", positive_int, phases=("sft",)),
    Row("sft.lr", positive, phases=("sft",)),
    Row("sft.weight_decay", non_negative, phases=("sft",)),
    Row("sft.warmup_steps", non_negative_int, phases=("sft",)),
    Row("sft.warmup_steps", _warmup_below_steps("sft"), phases=("sft",),
        when=lambda c: c.sft.schedule == "cosine"),
    Row("sft.clip_norm", non_negative, phases=("sft",)),
    Row("sft.max_len", positive_int, phases=("sft",)),
    Row("sft.eval_every", positive_int, phases=("sft",)),
    Row("sft.log_every", positive_int, phases=("sft",)),
    Row("data.sft_size", non_negative_int),
    Row("data.sft_size", _sft_within_train, phases=("sft",), when=_synthetic_task),
    Row("sft.decay_steps", non_negative_int, phases=("sft",)),
    Row("sft.end_lr_frac", in_unit_interval(True, True), phases=("sft",)),
    Row("sft.latent_grad", boolean, phases=("sft",)),
    Row("sft.label_markers", boolean, phases=("sft",)),
    Row("sft.start_latents", non_negative_int, phases=("sft",)),
    Row("sft.max_latents", non_negative_int, phases=("sft",)),
    Row("sft.max_latents", _latr_schedule, phases=("sft",), when=lambda c: c.sft.max_latents),
    # RL
    Row("rl.steps", positive_int, phases=("rl",)),
    Row("rl.num_prompts", positive_int, phases=("rl",)),
    Row("rl.group_size", positive_int, phases=("rl",)),
    Row("rl.group_size", _min_group_size, phases=("rl",)),
    Row("rl.max_new", positive_int, phases=("rl",)),
    Row("rl.temperature", positive, phases=("rl", "eval")),  # the eval phase samples at it
    Row("rl.top_k", non_negative_int, phases=("rl",)),
    Row("rl.top_p", in_unit_interval(False, True), phases=("rl",)),
    Row("rl.adv_eps", non_negative, phases=("rl",)),
    Row("rl.clip_eps", positive, phases=("rl",)),
    Row("rl.clip_eps_high", off_or_non_negative, phases=("rl",)),
    Row("rl.dual_clip", off_or_above_one, phases=("rl",)),
    Row("rl.beta", non_negative, phases=("rl",)),
    Row("rl.kl_clamp", non_negative, phases=("rl",)),
    Row("rl.mask_truncated", boolean, phases=("rl",)),
    Row("rl.truncated_in_stats", boolean, phases=("rl",)),
    Row("rl.first_token_selection", boolean, phases=("rl",)),
    Row("rl.dynamic_sampling_tries", non_negative_int, phases=("rl",)),
    Row("rl.updates_per_batch", positive_int, phases=("rl",)),
    Row("rl.updates_per_batch", _updates_per_batch, phases=("rl",)),
    Row("rl.microbatch", non_negative_int, phases=("rl",)),
    Row("rl.microbatch", _microbatch, phases=("rl",)),
    Row("rl.bucket_width", non_negative_int, phases=("rl",)),
    Row("rl.bucket_width", _bucket_width, phases=("rl",)),
    Row("rl.bucket_rows", non_negative_int, phases=("rl",)),
    Row("rl.weight_decay", non_negative, phases=("rl",)),
    Row("rl.b1", in_unit_interval(True, False), phases=("rl",)),
    Row("rl.b2", in_unit_interval(True, False), phases=("rl",)),
    Row("rl.clip_norm", non_negative, phases=("rl",)),
    Row("rl.warmup_steps", non_negative_int, phases=("rl",)),
    Row("rl.warmup_steps", _warmup_below_steps("rl"), phases=("rl",),
        when=lambda c: c.rl.schedule == "cosine"),
    Row("rl.greedy", boolean, phases=("rl",)),
    Row("rl.log_param_change", boolean, phases=("rl",)),
    Row("rl.eval_every", positive_int, phases=("rl",)),
    Row("rl.log_every", positive_int, phases=("rl",)),
    # evaluation (every phase evaluates) and checkpoints
    Row("eval.num_problems", non_negative_int),
    Row("eval.batch_size", positive_int),
    Row("eval.max_new", positive_int),
    Row("eval.temperature", positive),
    Row("eval.show_samples", non_negative_int),
    Row("eval.num_samples", positive_int, when=_SAMPLED),
    Row("eval.pass_k", _pass_k, when=_SAMPLED),
    Row("train.max_nonfinite", positive_int, phases=_TRAIN),
    Row("train.inject_nan_step", _compare(">=", -1, integer=True), phases=_TRAIN),
    Row("checkpoint.every", positive_int, phases=_TRAIN),
    Row("checkpoint.max_to_keep", positive_int, phases=_TRAIN),
])


# phases that read a trained model from config.init: alone in config.mode, they need one
READS_INIT = ("eval", "span_probe")


def validate_config(config, phases_registry) -> list[str]:
  """The phases to run (`config.mode`), after every row of `ROWS` passed.

  Raises a one-line ConfigError naming the field otherwise.
  """
  phases = mode_phases(config.mode)
  if not phases:
    raise ConfigError("config.mode is empty; use e.g. 'sft', 'sft,rl' or 'eval'")
  for p in phases:
    if p not in phases_registry:
      raise ConfigError(f"config.mode phase {p!r} is not one of: {', '.join(phases_registry.names())}")
  if len(phases) == 1 and phases[0] in READS_INIT and not config.init:
    raise ConfigError(f"config.init must name a workdir or HF folder for mode={phases[0]}")
  check_rows(config, phases)
  for method in METHOD_ROWS.names():  # each registered method's own rows
    check_rows(config, phases, METHOD_ROWS.get(method))
  return phases
