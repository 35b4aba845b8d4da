"""CoT SFT of the tiny model on the synthetic `arith` task (CPU, a few minutes).

    python -m lrjax.main --config=configs/sft.py --workdir=runs/sft
"""
from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/sft.py")
  c = base.get_config(arg)
  c.name = "sft"
  c.mode = "sft"
  c.sft.method = "cot"
  return c
