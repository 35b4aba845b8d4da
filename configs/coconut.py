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
  # Coconut starts its curriculum from a CoT-trained model: a long stage 0
  # (CoT with <bot><eot> markers), then one reasoning step per stage is
  # replaced by c latents; from step 1050 on all steps are latent (3 latents).
  c.sft.latents_per_step = 1
  c.sft.num_stages = 4
  c.sft.stage_steps = (600, 150, 150, 150)
  c.sft.steps = 1250
  c.sft.eval_every = 250
  return c
