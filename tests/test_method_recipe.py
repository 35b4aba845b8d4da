"""docs/learner.md's "Adding a method" recipe, followed to the letter: a toy method made
of a thought rule with an option, an objective, an auxiliary loss and typed options that
are its own config section (defaults and checks), all in one module (here: this file),
registered
with the public call `lrjax/methods/__init__.py` uses, then run through a short
RL run, and unregistered afterwards (every registry as before).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections
import pytest

from lrjax.config_checks import non_negative, positive
from lrjax.config_utils import ConfigError
from lrjax.latent import (ANSWER, Objective, RuleContext, StepOut, ThoughtRule, embedding_table,
                          rule_options)
from lrjax.latent.objective import token_masks, token_terms
from lrjax.method import METHODS, Method, Options, register_method, unregister_method
from lrjax.sampling import sample, token_logp

# --- the toy method's module ----------------------------------------------------------

RULE = "toy_scaled"  # x_{t+1} = scale · E[y_t]


def step(ctx: RuleContext, params, logits, hidden, key, state, aux=None) -> StepOut:
  y = sample(key, logits, ctx.sampling)  # B
  emb = embedding_table(params)  # V H
  scale = rule_options(RULE, ctx.rule_cfg)["scale"]
  b = y.shape[0]
  return StepOut(y, token_logp(logits, y, ctx.sampling.temperature), jnp.ones((b,), bool),
                 jnp.full((b,), ANSWER, jnp.int8), (scale * emb[y]).astype(emb.dtype), {}, state)


def replay_inputs(ctx: RuleContext, params, traj, aux=None):
  emb = embedding_table(params)
  return (rule_options(RULE, ctx.rule_cfg)["scale"] * emb[traj.ids]).astype(emb.dtype)


def objective_metrics(ctx: RuleContext, params, traj, aux=None) -> dict:
  """train/toy_weight: the config section's setting, as the objective sees it."""
  return {"toy_weight": jnp.asarray(ctx.objective_opt("weight"), jnp.float32)}


def toy_norm(params, traj, replay_out, *, ctx, **kw):
  """weight · mean squared hidden state over the sampled positions."""
  m = traj.sampled.astype(jnp.float32)  # B N
  sq = jnp.sum(jnp.square(replay_out.hidden.astype(jnp.float32)), -1)  # B N
  value = jnp.sum(sq * m) / jnp.maximum(m.sum(), 1.0)
  return float(ctx.objective_opt("weight")) * value, {"sq": value}


@dataclasses.dataclass(frozen=True)
class ToyOptions(Options):
  """The `toy` config section: its fields, defaults and checks (the rule's and the
  objective's settings)."""
  scale: float = 1.0  # the rule's input scale
  weight: float = 0.01  # toy_norm's weight
  CHECKS = {"scale": (positive, ()), "weight": (non_negative, ("rl",))}


TOY = Method(
    name="toy",
    rules={RULE: ThoughtRule(step=step, replay_inputs=replay_inputs, config_section="toy")},
    objectives={"toy_objective": Objective(masks=token_masks, terms=token_terms,
                                           config_section="toy", metrics=objective_metrics)},
    aux_losses={"toy_norm": toy_norm},
    options={"toy": ToyOptions})


def toy_config(**fields) -> ml_collections.ConfigDict:
  """configs/grpo.py selecting the toy method: its rule, which adds its section `toy`."""
  from configs import base, grpo  # noqa: PLC0415
  c = grpo.get_config()
  base.use_rule(c, RULE, scale=0.5)
  c.rl.objective = "toy_objective"
  c.rl.aux_losses = (("toy_norm", 1.0),)
  for k, v in fields.items():
    section, _, name = k.rpartition(".")
    c[section][name] = v
  return c


# --- the test -------------------------------------------------------------------------


def _registries() -> dict:
  from lrjax.method import _registries as regs  # noqa: PLC0415
  from lrjax.config_checks import METHOD_ROWS  # noqa: PLC0415
  return {f: list(r.names()) for f, r in (*regs(), ("rows", METHOD_ROWS), ("methods", METHODS))}


@pytest.fixture
def toy():
  before = _registries()
  register_method(TOY)
  try:
    yield TOY
  finally:
    unregister_method(TOY.name)
    assert _registries() == before


def test_registering_twice_leaves_nothing_behind(toy):
  clash = Method(name="toy2", aux_losses={"toy_more": toy_norm}, rules={RULE: TOY.rules[RULE]})
  with pytest.raises(ValueError, match="registered twice"):
    register_method(clash)
  assert "toy2" not in METHODS and "toy_more" not in _registries()["aux_losses"]


def test_the_toy_method_validates_its_fields(toy):
  from lrjax.phases import PHASES  # noqa: PLC0415
  from lrjax.validate import validate_config  # noqa: PLC0415
  assert validate_config(toy_config(), PHASES) == ["sft", "rl"]
  with pytest.raises(ConfigError, match=r"config.toy.scale=-1.0 must be > 0"):
    validate_config(toy_config(**{"toy.scale": -1.0}), PHASES)
  with pytest.raises(ConfigError, match=r"config.toy.weight=-2.0 must be >= 0"):
    validate_config(toy_config(**{"toy.weight": -2.0}), PHASES)
  with pytest.raises(ValueError, match=r"ToyOptions.weight=-1 must be >= 0"):
    ToyOptions(weight=-1)


def test_the_toy_method_runs_a_short_pipeline(toy, tmp_path):
  from lrjax.compare import apply_overrides  # noqa: PLC0415
  from lrjax.phases.pipeline import prepare, run_phases  # noqa: PLC0415
  from tests.test_main import FAST  # noqa: PLC0415
  c = toy_config()
  apply_overrides(c, [f.removeprefix("--config.") for f in FAST] + [
      "mode=rl", "rl.steps=2", "rl.num_prompts=2", "rl.group_size=2",
      "rl.max_new=8", "eval.num_problems=4", "eval.batch_size=4", "eval.max_new=8",
      "rl.eval_every=2", "rl.log_every=1"])
  w = str(tmp_path / "toy")
  run_phases(*prepare(c, w))
  with open(os.path.join(w, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  train = [r for r in recs if r["phase"] == "rl" and "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2]
  for r in train:
    assert r["train/toy_weight"] == pytest.approx(0.01)
    assert r["train/aux_toy_norm"] == pytest.approx(0.01 * r["train/aux_toy_norm_sq"], rel=1e-5)
  assert all(v == v for r in train for k, v in r.items() if k.startswith("train/"))  # no NaN
