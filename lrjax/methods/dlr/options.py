"""DLR's settings, the `dlr` config section: read by the `dlr` rule (ctx.rule_cfg: the
assistant and its σ) and by the `dlr` objective, its reward and its auxiliary losses
(ctx.objective_cfg: λ, β, γ and the contrastive term's similarity, τ and groups)."""
from __future__ import annotations

import dataclasses

from lrjax import config_checks as checks
from lrjax.method import Options

SECTION = "dlr"
SIMILARITIES = ("cosine", "dot")


@dataclasses.dataclass(frozen=True)
class DLROptions(Options):
  # the assistant: a decoder preset or "mlp" (an MLP on the pooled prompt states)
  assistant: str = "tiny-assistant"
  # σ_0 / s at init (s: the main model's embedding RMS); log σ / s is clipped to
  # [log_sigma_min, log_sigma_max]
  sigma_init: float = 0.5
  log_sigma_min: float = -5.0
  log_sigma_max: float = 0.0
  lambda_format: float = 0.5  # R = R_corr + λ R_fmt (the paper does not give λ)
  beta: float = 0.01  # KL to the starting assistant, averaged over T·d (`dlr_chain_kl`)
  gamma: float = 0.1  # contrastive weight (`dlr_contrastive`; 0: the ablation)
  # the contrastive term's similarity: cosine (÷ temperature) | dot (÷ √(T·d), chains in
  # units of s; the paper's raw dot product)
  similarity: str = "dot"
  temperature: float = 0.1
  group_size: int = 8  # the contrastive term's groups (configs/dlr.py: rl.group_size)

  CHECKS = {
      "assistant": (checks.non_empty_str, ()),
      "sigma_init": (checks.positive, ()),
      # R > 0 exactly when the answer is correct (the objective's `correct_above`)
      "lambda_format": (checks.in_unit_interval(True, False), ("rl",)),
      "beta": (checks.non_negative, ("rl",)),
      "gamma": (checks.non_negative, ("rl",)),
      "similarity": (checks.one_of(lambda: SIMILARITIES), ("rl",)),
      "temperature": (checks.positive, ("rl",)),
      "group_size": (checks.positive_int, ("rl",)),
  }


def dlr_options(ctx) -> DLROptions:
  """The `dlr` settings of a rule context: the rule's (ctx.rule_cfg) overlaid with the
  objective's (ctx.objective_cfg); a field neither holds takes its default."""
  return DLROptions.from_section({**dict(ctx.rule_cfg), **dict(ctx.objective_cfg)})
