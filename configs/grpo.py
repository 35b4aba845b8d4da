"""Token-space GRPO (DeepSeekMath, arXiv 2402.03300) after a CoT-SFT warm-up.

The baseline every latent method is compared against: sample `group_size`
token CoTs per prompt, reward 1 iff the answer after the only '####' is right,
group-normalised advantages (unbiased std), PPO clip, one update per batch.

    python -m lrjax.main --config=configs/grpo.py --workdir=runs/grpo
"""
from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/grpo.py")
  c = base.get_config(arg)
  c.name = "grpo"
  c.mode = "sft,rl"
  c.sft.method = "cot"
  c.rule.name = "token"
  c.rl.loss = "ppo_clip"
  c.rl.aggregation = "token_mean"
  c.rl.beta = 0.0
  return c
