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
  # Calibrated on every worked solution at batch 32, before the scarce-solution
  # regime of the RL configs (data.sft_size); kept so its results stay comparable.
  c.data.sft_size = 0
  c.sft.batch_size = 32
  c.sft.steps = 800
  c.sft.eval_every = 400
  return c
