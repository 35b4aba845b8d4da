"""Latent RL on a LatR model (Özeren & Aßenmacher, arXiv 2512.11816): a value head
rates the continuous thoughts, and the backbone learns to produce thoughts it
rates highly.

Three phases (`config.mode = "sft,value,rl"`):

* `sft`: the LatR SFT model of configs/latr_sft.py (or `--config.init=<a latr or
  latr_sft workdir>` with `--config.mode=value,rl` to start from one);
* `value` (stage 1): the head V (MLP H -> 128 -> 32 -> 8 -> 1, ReLU, dropout 0.1)
  learns, from sampled rollouts of the starting model, which thought states
  belong to correct responses: class-weighted BCE (pos_weight n_neg / n_pos of
  the data; the paper used 20), split by problem, best epoch by held-out
  ROC-AUC (`value/roc_auc`);
* `rl` (stage 2): one greedy rollout per prompt, no groups and no advantages;
  the backbone minimises −mean σ(V(h_t)) over the thought positions (objective
  `latent_value`, head frozen in it) while the head keeps learning online from
  the outcomes (auxiliary loss `value_bce`, backbone frozen in it) at its own
  learning rate (`rl.param_groups`).

    python -m lrjax.main --config=configs/latent_rl.py --workdir=runs/latent_rl
    python -m lrjax.main --config=configs/latent_rl.py --workdir=runs/latent_rl2 \\
        --config.init=runs/latr/sft/export --config.mode=value,rl

Measured (arith, seeds 0/1/2, greedy on 1000 held-out problems): the head's
held-out ROC-AUC 0.606 / 0.542 / 0.696; Latent RL from the LatR SFT model
0.068 -> 0.037, 0.066 -> 0.063, 0.086 -> 0.089 in 200 steps while the thoughts
reach states the pre-trained head rates 0.99 (GRPO on LatR: +2.1 / +0.1 /
+1.3); 11.5 min for the whole seed-1 run. docs/latent_rl.md has the curves.

`--config=configs/latent_rl.py:paper`: LatR's SFT (`configs.latr_sft.set_latr_paper`),
then the official value-model and Latent RL settings
(src/configs/value_model/*.yaml, src/configs/latent_rl/latent_reasoner_sft_latent_rl.yaml):
the head pre-trained on 20000 problems sampled at T 0.2 / top-p 0.95, BCE pos_weight 20,
lr 5e-4, batch 1024, 20 % held out; stage 2 greedy with 4 prompts per step, backbone and
head at lr 5e-6 cosine after 10 warm-up steps, wd 0.01, 1024 new tokens, one epoch of
10000 problems (2500 steps). As for `configs/latr.py:paper`, the official RL data
(OpenR1-Math-220k) is not loaded: the preset reads GSM8K-Aug.
"""
from configs import base
from configs.latr_sft import set_latr_paper, set_latr_sft


def get_config(arg=None):
  base.check_arg(arg, "configs/latent_rl.py", own=("paper",))
  c = base.get_config(None if arg == "paper" else arg)
  c.name = "latent_rl"
  c.mode = "sft,value,rl"
  set_latr_sft(c)
  # stage 1: sampled rollouts at GRPO-on-LatR's settings (the paper's T 0.7, top-k 50)
  c.rl.temperature, c.rl.top_k = 0.7, 50
  # stage 2: greedy, one rollout per prompt, the value objective and the online BCE
  c.rl.greedy = True
  c.rl.group_size = 1
  c.rl.num_prompts = 32
  c.rl.advantage = "constant"
  c.rl.objective = "latent_value"
  c.rl.aux_losses = (("value_bce", 1.0),)
  c.rl.beta = 0.0
  c.rl.aggregation = "token_mean"
  # Latent RL's own section (lrjax/methods/latr/options.py: its fields and defaults)
  base.use_options(c, "latent_rl", prompts=4096, samples=1)  # one greedy response per problem
  # the pre-trained head "value_start" (a yardstick) and the input standardisation stay
  # fixed; the online head learns at 1e-4; the backbone at the shared RL lr
  c.rl.param_groups = (("heads/value_start/.*", None), ("heads/value/input_norm/.*", None),
                       ("heads/value/.*", 1e-4), (".*", 3e-5))
  c.rl.log_param_change = True
  if arg == "paper":
    _paper(c)
  return c


def _paper(c):
  """LatR SFT, the value head, then Latent RL at the official settings (module doc)."""
  c.name = "latent_rl-paper"
  set_latr_paper(c)
  c.rl.temperature, c.rl.top_k, c.rl.top_p = 0.2, 0, 0.95  # stage 1's sampled rollouts
  c.latent_rl.prompts = 20000
  c.latent_rl.samples = 1
  c.latent_rl.pos_weight = 20.0
  c.latent_rl.lr = 5e-4
  c.latent_rl.batch_size = 1024
  c.latent_rl.holdout = 0.2
  c.latent_rl.epochs = 500
  c.rl.num_prompts = 4
  c.rl.max_new = 1024
  c.rl.steps = 2500
  c.rl.param_groups = (("heads/value_start/.*", None), ("heads/value/input_norm/.*", None),
                       ("heads/value/.*", 5e-6), (".*", 5e-6))
  c.rl.schedule = "cosine"
  c.rl.warmup_steps = 10
  c.rl.weight_decay = 0.01
  c.rl.clip_norm = 1.0
  c.rl.eval_every = 500
  base.fit_paper_host(c, microbatch=0)  # one GPU: 4 rows, no accumulation
