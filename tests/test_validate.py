"""Config validation before any phase: registry names, param_groups, out-of-range values."""
import importlib
import types

import pytest

from configs import (base, coconut, dlr, grpo, hrpo, latent_grpo, latent_rl, latr, lepo, nocot,
                     sft, sft_control)
from lrjax.config_utils import ConfigError
from lrjax.phases import PHASES
from lrjax.testing.rehearsal import override
from lrjax.validate import ROWS, Row, positive, validate_config
from tests import e2e_runs


def test_a_method_section_is_its_own():
  """Latent RL's section is not in every config: a config without it that reads it (the
  value phase, the latent_value objective) is refused in one line naming the section;
  the section's values are checked when it is there, and by its typed options."""
  assert "latent_rl" not in hrpo.get_config() and "latent_rl" in latent_rl.get_config()
  msg = _error(_config(hrpo, **{"rl.objective": "latent_value", "mode": "sft,value,rl"}))
  assert msg.startswith("config.rl.objective='latent_value' reads config.latent_rl"), msg
  msg = _error(_config(hrpo, mode="sft,value,rl"))
  assert msg.startswith("config.mode='sft,value,rl' runs the 'value' phase, which reads "
                        "config.latent_rl"), msg
  msg = _error(_config(latent_rl, **{"latent_rl.holdout": 1.5}))
  assert msg.startswith("config.latent_rl.holdout=1.5 must be"), msg
  with pytest.raises(ValueError, match="LatentRLOptions.prompts=1 must be >= 2"):
    base.use_options(hrpo.get_config(), "latent_rl", prompts=1)


def _config(module=hrpo, arg=None, **fields):
  return override(module.get_config(arg), fields)


def _error(c) -> str:
  with pytest.raises(ConfigError) as e:
    validate_config(c, PHASES)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


@pytest.mark.parametrize("module, arg", [(base, None), (sft, None), (nocot, None),
                                         (coconut, None), (grpo, None), (hrpo, None),
                                         (hrpo, "qwen2.5-1.5b"), (sft_control, None),
                                         (grpo, "prosqa"), (hrpo, "prosqa"),
                                         (sft_control, "prosqa"), (hrpo, "paper"),
                                         (lepo, "paper"), (latent_grpo, "paper"), (dlr, "paper"),
                                         (latr, "paper"), (latent_rl, "paper")])
def test_shipped_configs_pass(module, arg):
  c = module.get_config(arg)
  assert validate_config(c, PHASES) == c.mode.split(",")


def _presets(name: str):
  """(arg, config) of every preset configs/<name>.py accepts: the task presets and its own."""
  module = importlib.import_module(f"configs.{name}")
  for arg in (None, *base.TASK_PRESETS, "paper", "qwen2.5-1.5b"):
    try:
      yield arg, module.get_config(arg)
    except ValueError as e:
      if "unknown preset" not in str(e):
        raise


@pytest.mark.parametrize("name", e2e_runs.method_configs())
def test_every_shipped_config_and_preset_passes(name):
  presets = list(_presets(name))
  assert len(presets) > len(base.TASK_PRESETS)
  for arg, c in presets:
    assert validate_config(c, PHASES) == c.mode.split(","), (name, arg)


def _hrpo_with_latent_rl(arg=None):
  """configs/hrpo.py with Latent RL's own section added (its defaults)."""
  c = hrpo.get_config(arg)
  base.use_options(c, "latent_rl")
  return c


HRPO_LATENT_RL = types.SimpleNamespace(get_config=_hrpo_with_latent_rl)


@pytest.mark.parametrize("module, fields, whose", [
    (lepo, {}, "the objective of config.rule.name='gumbel_soft'"),
    (latent_rl, {}, "config.rl.objective='latent_value'"),
    (HRPO_LATENT_RL, {"rl.objective": "latent_value", "mode": "sft,value,rl"},
     "config.rl.objective='latent_value'"),
])
def test_a_loss_without_direct_terms_is_refused_with_an_objective_that_makes_them(
    module, fields, whose):
  """gspo_clip (one term per sequence) would drop LEPO's and Latent RL's direct terms."""
  msg = _error(_config(module, **{"rl.loss": "gspo_clip", **fields}))
  assert msg.startswith(f"config.rl.loss='gspo_clip' drops the direct terms of {whose},"), msg
  validate_config(_config(module, **{**fields, "rl.loss": "ppo_clip"}), PHASES)
  validate_config(_config(module, **{"rl.loss": "gspo_clip", **fields, "mode": "sft"}), PHASES)


def test_dlr_pairs_gspo_clip_with_an_objective_without_direct_terms():
  c = dlr.get_config()
  assert c.rl.loss == "gspo_clip" and validate_config(c, PHASES)


@pytest.mark.parametrize("field, bad", [
    ("rule.name", "hybird"),
    ("rl.loss", "ppo_clp"),
    ("rl.aggregation", "token_meen"),
    ("rl.advantage", "grpoo"),
    ("rl.schedule", "cosin"),
    ("sft.schedule", "linear"),
    ("rl.reward", "hash_exat"),
    ("data.task", "arithm"),
    ("sft.method", "cott"),
    ("model.preset", "qwen2.5-7b"),
    ("model.dtype", "bf16"),
    ("model.param_dtype", "fp32"),
    ("rl.kl_estimator", "k4"),
    ("rl.kl_reference", "token_input"),
])
def test_misspelled_registry_name_names_the_field(field, bad):
  msg = _error(_config(**{field: bad}))
  assert msg.startswith(f"config.{field}={bad!r} is not one of: "), msg


def test_registry_choices_are_listed_and_empty_reward_allowed():
  msg = _error(_config(**{"rl.loss": "ppo_clp"}))
  assert "ppo_clip" in msg and "reinforce_onpolicy" in msg
  validate_config(_config(**{"rl.reward": ""}), PHASES)
  validate_config(_config(**{"rl.reward": "format_hash"}), PHASES)
  assert "''" in _error(_config(**{"rl.reward": "nope"}))  # '' is listed as a choice
  # a name is wrong even in a run whose phases do not read it
  assert _error(_config(sft, **{"rl.loss": "ppo_clp"})).startswith("config.rl.loss=")
  # model.preset is not read when init names a checkpoint
  validate_config(_config(**{"model.preset": "whatever", "init": "/some/folder"}), PHASES)


@pytest.mark.parametrize("fields, field, expect", [
    ({"sft.steps": -5}, "sft.steps", "must be > 0 (the sft phase runs)"),
    ({"sft.steps": 0}, "sft.steps", "must be > 0"),
    ({"rl.steps": 0}, "rl.steps", "must be > 0 (the rl phase runs)"),
    ({"sft.batch_size": 0}, "sft.batch_size", "must be > 0"),
    ({"rl.num_prompts": -1}, "rl.num_prompts", "must be > 0"),
    ({"eval.batch_size": 0}, "eval.batch_size", "must be > 0"),
    ({"rl.group_size": 1}, "rl.group_size", "must be >= 2: rl.advantage='grpo'"),
    ({"rl.group_size": 1, "rl.advantage": "grpo_no_std"}, "rl.group_size", "must be >= 2"),
    ({"sft.lr": 0.0}, "sft.lr", "must be > 0"),
    ({"rl.clip_eps": 0.0}, "rl.clip_eps", "must be > 0"),
    ({"rl.beta": -0.1}, "rl.beta", "must be >= 0"),
    ({"rl.temperature": 0.0}, "rl.temperature", "must be > 0"),
    ({"eval.temperature": -1.0}, "eval.temperature", "must be > 0"),
    ({"eval.pass_k": (1, 8)}, "eval.pass_k", "k=8 > eval.num_samples=4"),
    ({"eval.num_samples": 0}, "eval.num_samples", "must be > 0"),
    ({"rl.top_p": 0.0}, "rl.top_p", "must be in (0, 1]"),
    ({"rl.schedule": "cosine", "rl.warmup_steps": 200}, "rl.warmup_steps",
     "must be < rl.steps=200"),
    ({"rl.warmup_steps": -1}, "rl.warmup_steps", "must be >= 0"),
    ({"checkpoint.every": 0}, "checkpoint.every", "must be > 0"),
    ({"rl.clip_eps_high": -0.1}, "rl.clip_eps_high", "must be None or a number >= 0"),
    ({"rl.dual_clip": 0.5}, "rl.dual_clip", "must be None or 0 (off), or a number > 1"),
    ({"rl.dual_clip": 1.0}, "rl.dual_clip", "or a number > 1"),
    ({"rl.kl_clamp": -1.0}, "rl.kl_clamp", "must be >= 0"),
    ({"rl.dynamic_sampling_tries": -1}, "rl.dynamic_sampling_tries", "must be >= 0"),
    ({"rl.updates_per_batch": 0}, "rl.updates_per_batch", "must be > 0"),
    ({"rl.updates_per_batch": 3}, "rl.updates_per_batch", "must divide rl.num_prompts=8"),
    ({"rl.updates_per_batch": 2}, "rl.updates_per_batch",
     "must be 1 with rl.loss='reinforce_onpolicy': it has no importance ratio"),
    ({"rl.mask_truncated": None}, "rl.mask_truncated", "must be True or False"),
    ({"rl.truncated_in_stats": None}, "rl.truncated_in_stats", "must be True or False"),
    ({"rl.first_token_selection": None}, "rl.first_token_selection", "must be True or False"),
    ({"rl.aux_losses": (("heads_l3", 0.1),)}, "rl.aux_losses",
     "entry 0: 'heads_l3' is not one of: "),
    ({"rl.aux_losses": (("heads_l2", -0.1),)}, "rl.aux_losses", "weight -0.1 must be a number >= 0"),
    ({"rl.aux_losses": ("heads_l2", 0.1)}, "rl.aux_losses", "must be a (name, weight) pair"),
])
def test_out_of_range_values_name_the_field(fields, field, expect):
  msg = _error(_config(**fields))
  assert msg.startswith(f"config.{field}="), msg
  assert expect in msg, msg
  if "is not one of" in expect:  # the registered names are listed (DLR's, Latent RL's, ...)
    assert "heads_l2" in msg.split("is not one of: ")[1].split(", "), msg


def test_learner_options_accepted():
  """The new learner fields' valid settings, and mini-batches with a ratio loss."""
  validate_config(_config(grpo, **{"rl.clip_eps_high": 0.28, "rl.dual_clip": 3.0,
                                   "rl.kl_estimator": "k2", "rl.kl_clamp": 10.0,
                                   "rl.mask_truncated": True, "rl.truncated_in_stats": False,
                                   "rl.first_token_selection": True,
                                   "rl.dynamic_sampling_tries": 50, "rl.updates_per_batch": 4,
                                   "rl.aux_losses": (("heads_l2", 0.01),)}), PHASES)
  validate_config(_config(grpo, **{"rl.clip_eps_high": None, "rl.dual_clip": None}), PHASES)
  validate_config(_config(**{"rl.kl_reference": "policy_inputs"}), PHASES)


def test_phase_fields_are_checked_only_when_the_phase_runs():
  validate_config(_config(sft, **{"rl.steps": 0, "rl.clip_eps": 0.0}), PHASES)  # mode=sft
  validate_config(_config(**{"mode": "rl", "sft.steps": 0}), PHASES)
  # pass@k against num_samples only matters when sampled evaluation is on
  validate_config(_config(**{"eval.pass_k": (1, 8), "eval.sampled": False}), PHASES)


@pytest.mark.parametrize("groups, expect", [
    ((), "non-empty"),
    ((".*", 1e-4), "entry 0 ('.*') must be a (regex, lr) pair"),
    (((".*",),), "must be a (regex, lr) pair"),
    (((1, 1e-4),), "the pattern 1 must be a string"),
    ((("rule/(", 1e-3), (".*", 1e-4)), "entry 0: the pattern 'rule/(' does not compile"),
    (((".*", 0.0),), "lr 0.0 must be a number > 0, or None"),
    ((("rule/.*", None), (".*", -1e-4)), "entry 1 ('.*'): lr -0.0001"),
    (((".*", "fast"),), "lr 'fast'"),
    (((".*", True),), "lr True"),
])
def test_param_groups_shape_and_values(groups, expect):
  msg = _error(_config(**{"rl.param_groups": groups}))
  assert msg.startswith("config.rl.param_groups="), msg
  assert expect in msg, msg


def test_param_groups_accepts_frozen_groups_and_lists():
  validate_config(_config(**{"rl.param_groups": (("model/.*", None), (".*", 3e-3))}), PHASES)
  validate_config(_config(**{"rl.param_groups": (["rule/.*", 1e-3], [".*", 1])}), PHASES)


def test_a_method_adds_its_own_rows(monkeypatch):
  c = _config(**{"mode": "sft"})
  c.rl.my_coef = -1.0
  monkeypatch.setattr("lrjax.config_checks.ROWS", [*ROWS, Row("rl.my_coef", positive, phases=("rl",))])
  validate_config(c, PHASES)  # rl does not run
  c.mode = "sft,rl"
  assert _error(c) == "config.rl.my_coef=-1.0 must be > 0 (the rl phase runs)"


def test_an_estimator_without_min_group_size_accepts_a_group_of_one(monkeypatch):
  from lrjax.rl import advantages
  monkeypatch.setitem(advantages.ADVANTAGES._items, "per_sample", lambda r, g, **kw: r)
  validate_config(_config(**{"rl.group_size": 1, "rl.advantage": "per_sample"}), PHASES)


def test_sft_size_beyond_a_synthetic_train_split_is_one_line():
  """SFT reads the first data.sft_size of data.train_size synthetic problems: more is refused
  before any problem is generated; file tasks (no train_size) and RL-only runs are not."""
  msg = _error(_config(**{"data.train_size": 400, "data.sft_size": 500}))
  assert msg == ("config.data.sft_size=500 exceeds config.data.train_size=400 (SFT reads the "
                 "first sft_size) (the sft phase runs)"), msg
  validate_config(_config(**{"data.train_size": 500, "data.sft_size": 500}), PHASES)
  validate_config(_config(**{"mode": "rl", "data.train_size": 400, "data.sft_size": 500}),
                  PHASES)
  validate_config(_config(hrpo, "paper", **{"mode": "sft,rl", "data.train_size": 4,
                                            "data.sft_size": 500}), PHASES)  # gsm8k's own split


def test_length_buckets_with_an_aux_loss_hold_whole_groups():
  """With an auxiliary loss the length-sorted chunks keep a prompt's rows together: a
  microbatch that splits a group is refused naming the field; bad values are refused."""
  fields = {"rl.aux_losses": (("heads_l2", 0.1),), "rl.group_size": 8}
  msg = _error(_config(hrpo, **fields, **{"rl.microbatch": 4}))
  assert msg.startswith("config.rl.bucket_width=16 with rl.aux_losses, rl.microbatch=4 must be "
                        "a multiple of rl.group_size=8"), msg
  validate_config(_config(hrpo, **fields, **{"rl.microbatch": 16}), PHASES)
  validate_config(_config(hrpo, **fields, **{"rl.microbatch": 4, "rl.bucket_width": 0}), PHASES)
  assert _error(_config(hrpo, **{"rl.bucket_rows": -1})).startswith("config.rl.bucket_rows=-1")


def test_dlr_microbatch_holds_whole_groups():
  """DLR's contrastive term reads a whole group of chains: a chunk that splits one is
  refused in one line (it was a traceback inside the jitted update)."""
  msg = _error(_config(dlr, "paper", **{"rl.microbatch": 32}))
  assert msg.startswith("config.rl.microbatch=32 must be a multiple of dlr.group_size=64"), msg
  validate_config(_config(dlr, "paper", **{"rl.microbatch": 64}), PHASES)


def test_rule_settings_and_their_checks_come_from_the_method_section():
  """No module adds rule rows to ROWS when imported; a rule's settings are its method's
  typed section (its defaults when the config has none), checked when present."""
  import lrjax.methods  # noqa: F401 - every rule registered
  from lrjax.latent import RULES, rule_config, rule_defaults, rule_options_class
  assert {r.field for r in ROWS if r.field.startswith("rule.")} == {"rule.name", "rule.num_latent"}
  assert RULES.get("gumbel_soft").config_section == "lepo"
  assert list(rule_options_class("gumbel_soft").CHECKS) == ["tau", "latent_len", "top_k", "top_p"]
  c = _config(grpo, **{"rule.name": "gumbel_soft"})  # switched by a flag: no section
  assert "lepo" not in c and set(c.rule) == {"name", "num_latent"}
  assert rule_config("gumbel_soft", c) == {"tau": 0.3, "latent_len": 64, "top_k": 30,
                                           "top_p": 0.95}
  validate_config(c, PHASES)
  base.use_rule(c, "gumbel_soft", top_k=5)
  assert rule_config("gumbel_soft", c)["top_k"] == 5
  c.lepo.top_k = 0
  assert _error(c) == "config.lepo.top_k=0 must be > 0"
  assert rule_defaults("hybrid") == {"gate_c": 8.0, "r_min": 0.99, "top_k": 50}
  assert rule_defaults("topk_gumbel")["top_k"] == 10 and rule_defaults("token") == {}


def test_use_rule_writes_the_section_and_refuses_other_fields():
  c = base.get_config()
  base.use_rule(c, "gumbel_soft", latent_len=8)
  assert (c.rule.name, c.lepo.latent_len, c.lepo.top_k, c.lepo.top_p) == ("gumbel_soft", 8, 30,
                                                                          0.95)
  assert set(c.rule) == {"name", "num_latent"}
  with pytest.raises(ValueError, match="config.hrpo has no field 'tau'; its fields: gate_c"):
    base.use_rule(base.get_config(), "hybrid", tau=0.5)
  with pytest.raises(ValueError, match="rule 'token' has no settings"):
    base.use_rule(base.get_config(), "token", top_k=5)
  with pytest.raises(ValueError, match=r"HRPOOptions.top_k=0 must be > 0"):
    base.use_rule(base.get_config(), "hybrid", top_k=0)


def test_rows_added_while_validating_are_not_seen(monkeypatch):
  """check_rows reads a snapshot: a check that adds a row (as an import inside a check
  once could) does not change the rows being run."""
  rows = list(ROWS)

  def adds_a_row(value, config):
    rows.append(Row("rl.beta", lambda v, c: "always fails"))
    return None
  rows.insert(0, Row("rl.steps", adds_a_row))
  monkeypatch.setattr("lrjax.config_checks.ROWS", rows)
  validate_config(_config(), PHASES)
  assert len(rows) == len(ROWS) + 2


def test_paper_presets_take_their_methods_prompt():
  """A `Method` names its paper's prompt format (data in lrjax.data.prompts); the `:paper`
  presets set `data.prompt` from it."""
  from lrjax.data.prompts import PROMPTS
  from lrjax.methods import METHODS
  for module, method in ((hrpo, "hrpo"), (lepo, "lepo"), (latent_grpo, "latent_grpo"),
                         (dlr, "dlr"), (latr, "latr")):
    prompt = METHODS.get(method).prompt
    assert prompt in PROMPTS and module.get_config("paper").data.prompt == prompt, method
    assert module.get_config().data.prompt == "raw"
  with pytest.raises(ValueError, match="method 'coconut' names no paper prompt"):
    base.use_paper_prompt(base.get_config(), "coconut", chat_template="auto")
