"""No-CoT SFT (question -> '#### answer'): the baseline Coconut must beat.

    python -m lrjax.main --config=configs/nocot.py --workdir=runs/nocot
"""
from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/nocot.py")
  c = base.get_config(arg)
  c.name = "nocot"
  c.mode = "sft"
  c.sft.method = "nocot"
  return c
