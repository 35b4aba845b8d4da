"""GRPO on a LatR model (Özeren & Aßenmacher, arXiv 2512.11816): RL on continuous
thoughts, the thoughts deterministic, only the answer sampled.

The `hidden` rule runs the model's stored number of thoughts after `<bot>`,
forces `<eot>`, then samples the language answer (the paper: T 0.7, top-k 50).
The loss covers the forced `<eot>` (its old log-prob recomputed: the sampler
did not draw it) and every language token after it, nothing at `<bot>` or the
thoughts; one update per batch (ratio 1), clip 0.1, beta 0, token mean, group
8. The default run trains (or reuses from the workdir) its own LatR SFT model
(configs/latr_sft.py), then 200 GRPO steps:

    python -m lrjax.main --config=configs/latr.py --workdir=runs/latr

Measured (seeds 0/1/2, greedy on 1000 held-out arith problems): the LatR SFT
model reaches 0.068 / 0.066 / 0.086 with 3 thoughts; 200 GRPO steps at the
shared lr 3e-5 end at 0.089 / 0.067 / 0.099 (lr 1e-4, seed 0: 0.068); 14 min
for the whole run beside another one (docs/latr.md).
"""
from configs import base
from configs.latr_sft import set_latr_sft


def get_config(arg=None):
  base.check_arg(arg, "configs/latr.py")
  c = base.get_config(arg)
  c.name = "latr"
  c.mode = "sft,rl"
  set_latr_sft(c)
  c.rl.temperature, c.rl.top_k = 0.7, 50
  c.rl.loss = "ppo_clip"
  c.rl.clip_eps = 0.1
  c.rl.aggregation = "token_mean"
  c.rl.beta = 0.0
  c.rl.group_size = 8
  return c
