"""LatR and Latent RL (Özeren & Aßenmacher, arXiv 2512.11816; docs/latr.md,
docs/latent_rl.md). LatR's rule is Coconut's `hidden` (lrjax/methods/coconut.py);
its own parts are Latent RL's:

    value_head.py    the value head V on thought states, its BCE, ROC-AUC
    value_phase.py   the `value` phase: pre-trains V on the starting model's thoughts
    latent_rl.py     the `latent_value` objective and the online `value_bce` loss

Its settings are the `latent_rl` config section.
"""
from __future__ import annotations

from collections.abc import Sequence

from lrjax import config_checks as checks
from lrjax.latent.objective import Head
from lrjax.method import Method
from lrjax.methods.latr.latent_rl import LATENT_VALUE, value_bce

PHASE = "value"
SECTION = "latent_rl"


def _run_value(run) -> None:
  from lrjax.methods.latr.value_phase import run_value  # noqa: PLC0415
  run_value(run)


def _init_head(run, key):
  from lrjax.methods.latr.value_phase import init_head  # noqa: PLC0415
  return init_head(run, key)


def _positive_ints(value, config) -> str | None:
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    return "must be a non-empty tuple of integers >= 1, e.g. (128, 32, 8)"
  bad = [w for w in value if not checks._is_int(w) or w < 1]
  return f"has entries that are not integers >= 1: {bad}" if bad else None


def _row(field: str, check, phases=(PHASE,)) -> checks.Row:
  return checks.Row(f"{SECTION}.{field}", check, phases=phases)


LATR = Method(
    name="latr", objectives={"latent_value": LATENT_VALUE}, aux_losses={"value_bce": value_bce},
    phases={PHASE: _run_value},
    # "value" is trained on in RL; "value_start" is the pre-trained head kept frozen
    heads={"value": Head(_init_head, PHASE), "value_start": Head(_init_head, PHASE)},
    rows=(
        _row("widths", _positive_ints),
        _row("dropout", checks.in_unit_interval(True, False), phases=(PHASE, "rl")),
        _row("pos_weight", checks.non_negative),
        _row("prompts", checks._compare(">=", 2, integer=True)),
        _row("samples", checks.positive_int),
        _row("holdout", checks.in_unit_interval(False, False)),
        _row("epochs", checks.positive_int),
        _row("batch_size", checks.positive_int),
        _row("lr", checks.positive)))
