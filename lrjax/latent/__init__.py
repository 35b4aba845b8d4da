"""Thought rules: how the emitted token and the next input embedding are made.

Importing this package registers `token`, `hidden`, `hybrid`, `gumbel_soft`, `topk_gumbel`
and `dlr` in `RULES` (and DLR's objective `dlr` in `OBJECTIVES`).
"""
from lrjax.latent import dlr, hidden, hybrid, latent_grpo, lepo, token  # noqa: F401  (registers the rules)
from lrjax.latent.base import (ANSWER, DONE, LATENT, PROMPT, RULES, SPAN_DTYPE, RuleContext,
                               StepOut, ThoughtRule, embedding_table, freeze, init_rule_params,
                               objective_of, prompt_suffix, rule_aux, rule_config, rule_defaults,
                               rule_of, rule_options, thought_positions)
from lrjax.latent.hybrid import hybrid_ratio
from lrjax.latent.objective import OBJECTIVES, TOKEN_OBJECTIVE, Masks, Objective, Terms

__all__ = [
    "ANSWER", "DONE", "LATENT", "OBJECTIVES", "PROMPT", "RULES", "SPAN_DTYPE", "TOKEN_OBJECTIVE",
    "Masks", "Objective", "RuleContext", "StepOut", "Terms", "ThoughtRule", "embedding_table",
    "freeze", "hybrid_ratio", "init_rule_params", "objective_of", "prompt_suffix", "rule_aux",
    "rule_config", "rule_defaults", "rule_of", "rule_options", "thought_positions",
]
