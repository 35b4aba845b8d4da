"""LatR and Latent RL (Özeren & Aßenmacher, arXiv 2512.11816; docs/latr.md,
docs/latent_rl.md). LatR's rule is Coconut's `hidden` (lrjax/methods/coconut/);
its own parts are Latent RL's:

    value_head.py    the value head V on thought states, its BCE, ROC-AUC
    value_phase.py   the `value` phase: pre-trains V on the starting model's thoughts
    latent_rl.py     the `latent_value` objective and the online `value_bce` loss

Its settings are the `latent_rl` config section, typed by `options.LatentRLOptions`
(their defaults and checks).
"""
from __future__ import annotations

from lrjax import config_checks as checks
from lrjax.latent.objective import Head
from lrjax.method import Method
from lrjax.methods.latr.latent_rl import LATENT_VALUE, value_bce
from lrjax.methods.latr.options import PHASE, SECTION, LatentRLOptions


def _run_value(run) -> None:
  from lrjax.methods.latr.value_phase import run_value  # noqa: PLC0415
  run_value(run)


def _init_head(run, key):
  from lrjax.methods.latr.value_phase import init_head  # noqa: PLC0415
  return init_head(run, key)


def _section_for_value(value, config) -> str | None:
  """The value phase reads the `latent_rl` section."""
  if SECTION not in config:
    return (f"runs the {PHASE!r} phase, which reads config.{SECTION}: start from "
            f"configs/latent_rl.py, or add it with configs/base.py's use_options(c, {SECTION!r})")
  return None


LATR = Method(
    name="latr", objectives={"latent_value": LATENT_VALUE}, aux_losses={"value_bce": value_bce},
    phases={PHASE: _run_value},
    # "value" is trained on in RL; "value_start" is the pre-trained head kept frozen
    heads={"value": Head(_init_head, PHASE), "value_start": Head(_init_head, PHASE)},
    options={SECTION: LatentRLOptions}, prompt="latr",
    rows=(checks.Row("mode", _section_for_value, phases=(PHASE,)),))
