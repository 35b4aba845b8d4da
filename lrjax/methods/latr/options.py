"""Latent RL's settings, the `latent_rl` config section: read by the `value` phase
(the value head's pre-training) and by the `latent_value` objective and `value_bce`
loss (`ctx.objective_cfg`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lrjax import config_checks as checks
from lrjax.method import Options

SECTION = "latent_rl"
PHASE = "value"


def positive_ints(value, config) -> str | None:
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    return "must be a non-empty tuple of integers >= 1, e.g. (128, 32, 8)"
  bad = [w for w in value if not checks._is_int(w) or w < 1]
  return f"has entries that are not integers >= 1: {bad}" if bad else None


@dataclasses.dataclass(frozen=True)
class LatentRLOptions(Options):
  widths: tuple[int, ...] = (128, 32, 8)  # hidden widths of V: H -> 128 -> 32 -> 8 -> 1
  dropout: float = 0.1
  pos_weight: float = 0.0  # BCE weight of the positives; 0 = n_neg / n_pos of the data
  prompts: int = 512  # problems rolled out to pre-train the head
  samples: int = 4  # sampled responses per problem (at rl.temperature / top_k / top_p)
  holdout: float = 0.2  # share of those problems held out (the split is by problem)
  epochs: int = 30
  batch_size: int = 256  # latent states per head update
  lr: float = 5e-4  # Adam, pre-training; stage 2 uses the head's rl.param_groups lr

  CHECKS = {
      "widths": (positive_ints, (PHASE,)),
      "dropout": (checks.in_unit_interval(True, False), (PHASE, "rl")),
      "pos_weight": (checks.non_negative, (PHASE,)),
      "prompts": (checks._compare(">=", 2, integer=True), (PHASE,)),
      "samples": (checks.positive_int, (PHASE,)),
      "holdout": (checks.in_unit_interval(False, False), (PHASE,)),
      "epochs": (checks.positive_int, (PHASE,)),
      "batch_size": (checks.positive_int, (PHASE,)),
      "lr": (checks.positive, (PHASE,)),
  }
