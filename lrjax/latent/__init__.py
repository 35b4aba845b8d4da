"""Thought rules: how the emitted token and the next input embedding are made.

The interface (`ThoughtRule`, `Objective`, their registries) and the generic
`token` rule live here; importing this package registers `token` in `RULES`.
Each paper's rules and objectives are in its module under `lrjax/methods/`,
registered by `lrjax.methods` (`import lrjax.methods`).
"""
from lrjax.latent import token  # noqa: F401  (registers the `token` rule)
from lrjax.latent.base import (ANSWER, DONE, LATENT, PROMPT, RULES, SPAN_DTYPE, RuleContext,
                               StepOut, ThoughtRule, embedding_table, freeze, init_rule_params,
                               objective_of, prompt_suffix, rule_aux, rule_config, rule_defaults,
                               rule_of, rule_options, rule_options_class,
                               thought_positions)
from lrjax.latent.objective import (HEADS, OBJECTIVES, TOKEN_OBJECTIVE, Head, Masks, Objective,
                                    Terms)

__all__ = [
    "ANSWER", "DONE", "HEADS", "LATENT", "OBJECTIVES", "PROMPT", "RULES", "SPAN_DTYPE",
    "TOKEN_OBJECTIVE", "Head", "Masks", "Objective", "RuleContext", "StepOut", "Terms",
    "ThoughtRule", "embedding_table", "freeze", "init_rule_params", "objective_of",
    "prompt_suffix", "rule_aux", "rule_config", "rule_defaults", "rule_of", "rule_options",
    "rule_options_class", "thought_positions",
]
