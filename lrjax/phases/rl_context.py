"""The RL phase's rollout/learner context, read from the config (`train_context`).

Kept apart from `lrjax.phases.rl` because the `value` phase rolls out with the
same context, and `lrjax.phases.rl` reads the `value` phase's head.
"""
from __future__ import annotations

from lrjax.latent import OBJECTIVES, RuleContext
from lrjax.rollout import Sampling


def train_context(run) -> RuleContext:
  """The rollout/learner context of the RL phase: the rule, `rl` sampling, and the
  objective named by `rl.objective` with its config section (overlaid with what
  earlier phases resolved, `run.heads_cfg`)."""
  c = run.config
  base = run.rule_context(c.rule.name, c.rl.max_new, num_latent=run.num_latent(),
                          temperature=c.rl.temperature)
  objective_cfg = {}
  if c.rl.objective:
    section = OBJECTIVES.get(c.rl.objective).config_section
    objective_cfg = {**(dict(c[section]) if section else {}), **run.heads_cfg}
  return base.replace(sampling=Sampling(temperature=c.rl.temperature, top_k=c.rl.top_k,
                                        top_p=c.rl.top_p, greedy=bool(c.rl.greedy)),
                      objective=c.rl.objective, objective_cfg=objective_cfg)
