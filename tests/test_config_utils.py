"""Config flattening, resume checks and validation messages."""
import json
import os

import ml_collections
import numpy as np
import pytest

from lrjax import config_utils as cu


def _config(**rl):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/a"
  c.allow_config_mismatch = False
  c.data = ml_collections.ConfigDict({"task": "arith", "sizes": (1, 2)})
  c.rl = ml_collections.ConfigDict({"lr": 1e-5, "group_size": 8, **rl})
  return c


def test_flatten_and_to_dict():
  c = _config()
  c.ref = ml_collections.FieldReference(3)
  flat = cu.flatten(c)
  assert flat["rl.lr"] == 1e-5 and flat["data.sizes"] == (1, 2) and flat["ref"] == 3
  assert set(flat) == {"seed", "workdir", "allow_config_mismatch", "data.task", "data.sizes",
                       "rl.lr", "rl.group_size", "ref"}
  assert cu.flatten({"a": {"b": {"c": 1}}, "e": {}}) == {"a.b.c": 1, "e": {}}
  d = cu.to_dict({"x": (1, np.float32(0.5)), "dt": np.dtype("float32"), "n": np.int64(2)})
  assert d == {"x": [1, 0.5], "dt": "float32", "n": 2}
  json.dumps(cu.to_dict(c))  # serialisable


def test_config_mismatch_lists_every_field():
  stored = cu.to_dict(_config())
  stored["rl"]["old"] = 1
  current = _config(lr=1e-4, extra="x")
  assert cu.config_mismatch(stored, current) == [
      "rl.extra: <absent> (stored) != 'x' (now)",
      "rl.lr: 1e-05 (stored) != 0.0001 (now)",
      "rl.old: 1 (stored) != <absent> (now)",
  ]
  assert cu.config_mismatch(stored, stored) == []
  assert cu.config_mismatch({"a": True}, {"a": 1}) == ["a: True (stored) != 1 (now)"]


def test_resume_check(tmp_path):
  workdir = str(tmp_path)
  cu.check_resume_config(workdir, _config(), allow_mismatch=False)  # nothing stored: fine
  path = cu.save_config(workdir, _config())
  assert os.path.exists(path) and json.load(open(path))["rl"]["lr"] == 1e-5
  # same config (tuples came back as lists) and ignored fields: fine
  same = _config()
  same.workdir, same.allow_config_mismatch = "elsewhere", True
  cu.check_resume_config(workdir, same, allow_mismatch=False)
  changed = _config(lr=1e-4)
  changed.seed = 1
  with pytest.raises(cu.ConfigMismatchError) as e:
    cu.check_resume_config(workdir, changed, allow_mismatch=False)
  msg = str(e.value)
  assert "rl.lr: 1e-05 (stored) != 0.0001 (now)" in msg and "seed: 0 (stored) != 1 (now)" in msg
  assert "--config.allow_config_mismatch=True" in msg and "2 field(s)" in msg
  assert isinstance(e.value, cu.ConfigError) and isinstance(e.value, ValueError)
  cu.check_resume_config(workdir, changed, allow_mismatch=True)  # only a warning


def test_resume_check_ignores_rl_fields_of_runs_without_rl(tmp_path):
  stored = _config()
  stored.mode = "sft"
  cu.save_config(str(tmp_path), stored)
  other = _config(lr=1e-4)  # an SFT run (or a shared warm-up) never reads rl.*
  other.mode = "sft"
  cu.check_resume_config(str(tmp_path), other, allow_mismatch=False)
  other.data.task = "prosqa"  # its own sections still count
  with pytest.raises(cu.ConfigMismatchError, match="data.task"):
    cu.check_resume_config(str(tmp_path), other, allow_mismatch=False)
  other.data.task, other.mode = "arith", "sft,rl"
  with pytest.raises(cu.ConfigMismatchError, match="rl.lr"):
    cu.check_resume_config(str(tmp_path), other, allow_mismatch=False)


def test_validate_choice():
  c = _config()
  assert cu.validate_choice(c, "data.task", ("arith", "prosqa", "gsm8k")) == "arith"
  c.data.task = "foo"
  with pytest.raises(cu.ConfigError) as e:
    cu.validate_choice(c, "data.task", ("arith", "prosqa", "gsm8k"))
  assert str(e.value) == "config.data.task='foo' is not one of: arith, prosqa, gsm8k"
  with pytest.raises(cu.ConfigError, match="did you mean 'task'"):
    cu.get_field(c, "data.tsk")
  with pytest.raises(cu.ConfigError, match="no field 'nope'"):
    cu.validate_choice({"a": 1}, "nope", ("x",))


def test_resume_check_allows_a_workdir_from_before_length_buckets(tmp_path, capsys):
  """A workdir stored without rl.bucket_width / rl.bucket_rows (the padded update)
  resumes with them: they change the update's summation order, not its values."""
  stored = _config()
  stored.mode = "sft,rl"
  cu.save_config(str(tmp_path), stored)
  cu.check_resume_config(str(tmp_path), _with_mode(_config(bucket_width=16, bucket_rows=8)),
                         allow_mismatch=False)
  said = capsys.readouterr().out
  assert "rl.bucket_width: <absent> (stored) != 16 (now)" in said
  with pytest.raises(cu.ConfigMismatchError, match="rl.lr"):
    cu.check_resume_config(str(tmp_path), _with_mode(_config(bucket_width=16, lr=1e-4)),
                           allow_mismatch=False)


def _with_mode(c, mode: str = "sft,rl"):
  c.mode = mode
  return c


def test_resume_check_allows_another_mesh_and_logging_cadence(tmp_path, capsys):
  stored = _config(log_every=10)
  stored.mode = "sft,rl"
  stored.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  cu.save_config(str(tmp_path), stored)
  other = _config(log_every=1)
  other.mode = "sft,rl"
  other.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 2, "tensor": 1})
  cu.check_resume_config(str(tmp_path), other, allow_mismatch=False)  # said, not refused
  said = capsys.readouterr().out
  assert "another mesh or logging cadence" in said
  for line in ("mesh.data: -1 (stored) != 1 (now)", "mesh.fsdp: 1 (stored) != 2 (now)",
               "rl.log_every: 10 (stored) != 1 (now)"):
    assert line in said
  other.rl.lr = 1e-4  # any other field still counts, and only it is listed
  with pytest.raises(cu.ConfigMismatchError) as e:
    cu.check_resume_config(str(tmp_path), other, allow_mismatch=False)
  assert "1 field(s)" in str(e.value) and "mesh" not in str(e.value)


def test_a_workdir_of_the_flat_rule_layout_resumes_migrated(tmp_path, capsys):
  """A workdir written when every rule's settings were `config.rule` fields (all rules'
  fields, from before each rule kept its own) resumes with the config whose rule keeps
  them in its method's section: its rule's move there, the others are dropped, in one
  line; a moved field that differs still counts, under its new name."""
  from configs import lepo
  from lrjax.phases.run import migrated
  now = lepo.get_config()
  stored = cu.to_dict(now)
  stored["rule"].update(stored.pop("lepo"), gate_c=8.0, r_min=0.99, noise_scale=1.0,
                        end_token="####")
  with open(os.path.join(tmp_path, cu.CONFIG_FILE), "w") as f:
    json.dump(stored, f)
  with pytest.raises(cu.ConfigMismatchError, match="rule.gate_c"):
    cu.check_resume_config(str(tmp_path), now, allow_mismatch=False)
  capsys.readouterr()
  migrate = lambda s: migrated(str(tmp_path), s, now)  # noqa: E731
  cu.check_resume_config(str(tmp_path), now, False, migrate=migrate)
  [line] = capsys.readouterr().out.splitlines()
  assert "rule.latent_len -> lepo.latent_len" in line and "rule.top_k -> lepo.top_k" in line
  assert "dropped rule.gate_c, rule.r_min, rule.noise_scale, rule.end_token" in line
  now.lepo.top_k = 20
  with pytest.raises(cu.ConfigMismatchError, match="lepo.top_k: 30"):
    cu.check_resume_config(str(tmp_path), now, False, migrate=migrate)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_workdir_from_before_param_dtype_resumes_as_it_stored_its_parameters(
    tmp_path, capsys, dtype):
  """A stored config without `model.param_dtype` stored its parameters in `model.dtype`:
  a float32 run resumes under today's float32 default with one line saying so; a
  bfloat16 run is refused naming model.param_dtype, and resumes when the flag keeps it."""
  from configs import hrpo
  from lrjax.phases.run import migrated
  now = hrpo.get_config()
  stored = cu.to_dict(now)
  stored["model"]["dtype"] = dtype
  del stored["model"]["param_dtype"]
  with open(os.path.join(tmp_path, cu.CONFIG_FILE), "w") as f:
    json.dump(stored, f)
  now.model.dtype = dtype
  with pytest.raises(cu.ConfigMismatchError, match="model.param_dtype: <absent>"):
    cu.check_resume_config(str(tmp_path), now, allow_mismatch=False)
  migrate = lambda s: migrated(str(tmp_path), s, now)  # noqa: E731
  capsys.readouterr()
  if dtype == "bfloat16":
    with pytest.raises(cu.ConfigMismatchError, match="model.param_dtype: 'bfloat16'"):
      cu.check_resume_config(str(tmp_path), now, False, migrate=migrate)
    now.model.param_dtype = "bfloat16"
  cu.check_resume_config(str(tmp_path), now, False, migrate=migrate)
  line = capsys.readouterr().out.splitlines()[-1]
  assert f"read as model.param_dtype='{dtype}'" in line, line


def test_a_stored_method_section_this_config_has_not_is_dropped_on_resume(tmp_path, capsys):
  """A workdir written when configs/base.py held Latent RL's section in every config
  resumes with a config that has none: one line says the section is dropped, and it is
  not a mismatch; a changed value elsewhere still is."""
  import json  # noqa: PLC0415

  from configs import base, hrpo  # noqa: PLC0415
  from lrjax.config_utils import (ConfigMismatchError, check_resume_config,  # noqa: PLC0415
                                  save_config, to_dict)
  from lrjax.phases.run import dropped_sections  # noqa: PLC0415
  old = hrpo.get_config()
  base.use_options(old, "latent_rl")
  w = str(tmp_path)
  save_config(w, old)
  now = hrpo.get_config()
  dropped = dropped_sections(w, now)
  assert dropped == ("latent_rl",)
  out = [line for line in capsys.readouterr().out.splitlines() if line]
  assert len(out) == 1 and "config.latent_rl" in out[0] and "dropped" in out[0], out
  check_resume_config(w, now, False, unread=dropped)
  now.rl.clip_eps = 2 * now.rl.clip_eps
  with pytest.raises(ConfigMismatchError, match="rl.clip_eps"):
    check_resume_config(w, now, False, unread=dropped)
  assert dropped_sections(w, old) == ()
  with open(f"{w}/config.json") as f:
    assert "latent_rl" in json.load(f) and "latent_rl" in to_dict(old)


def test_old_rule_flags_set_the_method_section_with_a_note():
  """`--config.rule.<setting>` of the flat layout sets the field where the selected rule
  keeps it now (after a `--config.rule.name` flag), and says so; `name`, `num_latent`
  stay flags of config.rule; a setting the rule has not is refused naming its section."""
  from configs import grpo, lepo
  from lrjax.config_moves import apply_moved_flags, split_moved_flags
  argv = ["lrjax", "--config=configs/lepo.py", "--config.rule.top_k=5", "--config.rule.tau",
          "0.5", "--config.rule.num_latent=2", "--config.rule.name=gumbel_soft"]
  kept, moved = split_moved_flags(argv)
  assert kept == ["lrjax", "--config=configs/lepo.py", "--config.rule.num_latent=2",
                  "--config.rule.name=gumbel_soft"]
  assert moved == [("top_k", "5"), ("tau", "0.5")]
  c = lepo.get_config()
  notes = apply_moved_flags(c, moved)
  assert (c.lepo.top_k, c.lepo.tau) == (5, 0.5) and "top_k" not in c.rule
  assert notes == ["[lrjax] --config.rule.top_k is deprecated: use --config.lepo.top_k (set to 5)",
                   "[lrjax] --config.rule.tau is deprecated: use --config.lepo.tau (set to 0.5)"]
  with pytest.raises(cu.ConfigError, match="rule 'gumbel_soft' keeps no 'gate_c' "
                     r"\(its settings are config.lepo\)"):
    apply_moved_flags(c, [("gate_c", "4")])
  with pytest.raises(cu.ConfigError, match="rule 'token' keeps no 'top_k' .it has no settings"):
    apply_moved_flags(grpo.get_config(), [("top_k", "5")])
  g = grpo.get_config()
  g.rule.name = "hybrid"  # switched by a flag: the config has no hrpo section
  with pytest.raises(cu.ConfigError, match="--config.rule.top_k is now --config.hrpo.top_k, "
                     "but this config has no config.hrpo"):
    apply_moved_flags(g, [("top_k", "5")])


def test_compare_overrides_read_old_rule_settings_with_a_note(capsys):
  """A compare's override 'rule.<setting>=v' of the flat layout sets the field where the
  method's rule keeps it now (after the other overrides), with the note the flag gives."""
  from configs import lepo
  from lrjax.compare import apply_overrides
  c = lepo.get_config()
  apply_overrides(c, ["rule.top_k=5", "rl.steps=3", "rule.num_latent=2"])
  assert (c.lepo.top_k, c.rl.steps, c.rule.num_latent) == (5, 3, 2) and "top_k" not in c.rule
  assert "[lrjax] rule.top_k is deprecated: use lepo.top_k (set to 5)" in capsys.readouterr().out
  with pytest.raises(cu.ConfigError, match="rule 'gumbel_soft' keeps no 'gate_c'"):
    apply_overrides(c, ["rule.gate_c=4"])
  with pytest.raises(ValueError, match="unknown config field 'rl.nope'"):
    apply_overrides(c, ["rl.nope=1"])
