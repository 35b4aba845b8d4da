"""Coconut curriculum SFT (Hao et al., arXiv 2412.06769) on the tiny model.

Stage k replaces the first k reasoning steps by k*c latent thoughts (each the
previous position's last hidden state); the last stage is all-latent; the
optimizer is reset at every stage switch. Evaluated with the `hidden` rule.

    python -m lrjax.main --config=configs/coconut.py --workdir=runs/coconut
"""
from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.name = "coconut"
  c.mode = "sft"
  c.sft.method = "coconut"
  c.rule.name = "hidden"
  return c
