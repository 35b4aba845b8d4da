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

`--config=configs/latr.py:paper`: LatR's SFT (`configs.latr_sft.set_latr_paper`: Qwen2.5-1.5B
base, GSM8K-Aug, the official raw-text prompt, `boxed_math`), then GRPO as the official
src/configs/latr/latent_reasoner_sft_rl.yaml: group 8, 64 completions per step (8
prompts), 1024 new tokens, T 0.7, lr 5e-6 cosine after 10 warm-up steps, wd 0.01, clip
0.1, β 0, one epoch of 10000 problems (1250 steps). The official RL data is
OpenR1-Math-220k, which lrjax does not load: the preset's RL reads GSM8K-Aug's
questions (`--config.mode=rl --config.init=<the SFT export> --config.data.task=math`
runs it on MATH instead).
"""
from configs import base
from configs.latr_sft import set_latr_paper, set_latr_sft


def get_config(arg=None):
  base.check_arg(arg, "configs/latr.py", own=("paper",))
  c = base.get_config(None if arg == "paper" else arg)
  c.name = "latr"
  c.mode = "sft,rl"
  set_latr_sft(c)
  c.rl.temperature, c.rl.top_k = 0.7, 50
  c.rl.loss = "ppo_clip"
  c.rl.clip_eps = 0.1
  c.rl.aggregation = "token_mean"
  c.rl.beta = 0.0
  c.rl.group_size = 8
  if arg == "paper":
    _paper(c)
  return c


def _paper(c):
  """LatR SFT then GRPO at the official settings (module doc)."""
  c.name = "latr-paper"
  set_latr_paper(c)
  c.rl.temperature, c.rl.top_k = 0.7, 50
  c.rl.group_size = 8
  c.rl.num_prompts = 8  # 4 per device x 16 accumulated = 64 completions
  c.rl.max_new = 1024
  c.rl.steps = 1250
  c.rl.param_groups = ((".*", 5e-6),)
  c.rl.schedule = "cosine"
  c.rl.warmup_steps = 10
  c.rl.weight_decay = 0.01
  c.rl.clip_norm = 1.0
  c.rl.eval_every = 250
  base.fit_paper_host(c, microbatch=16)  # one GPU: 4 chunks of 16 rows
