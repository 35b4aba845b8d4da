"""Latent-GRPO: GRPO in latent space with one-sided Gumbel exploration (arXiv 2604.27998).

From the first response position until the shown token is the end-of-thinking
token (the first token of `latent_grpo.end_token`; arith's '####' gives '#'), the next
input is a soft mixture of the top-K token embeddings of log-probs perturbed by
one-sided clamped Gumbel noise; the answer after it is sampled. Latent steps
are scored by a Gumbel-density surrogate inside the PPO ratio (dual clip 3),
invalid (truncated) samples get advantage 0, only one positive first token per
group keeps its advantage, and the input embeddings / LM head are frozen
(docs/latent_grpo.md). This default runs a CoT-SFT warm-up of the tiny model on
`arith`, Latent-SFT from it (`configs/latent_sft.py`, docs/latent_sft.md), then
Latent-GRPO, on a CPU, with no flags:

    python -m lrjax.main --config=configs/latent_grpo.py --workdir=runs/latent_grpo

The start: the paper starts from a Latent-SFT model (top-K soft-embedding SFT,
arXiv 2510.15522) and reports that the latent span collapses from a plain one;
so does this default (`mode=sft,latent_sft,rl`; `--config.init=<a latent_sft
workdir> --config.mode=rl` starts from a trained one). The ablation from the
CoT warm-up is `--config.mode=sft,rl`. K 10, tau_gs 1 and noise 1 are the
paper's; answers are sampled at the paper's T 0.6 / top-k 30 / top-p 0.95.

Measured from the CoT-SFT start (docs/latent_grpo.md): the latent span does
not shrink (~43 latent steps, the whole reasoning, at every evaluation), but
RL does not improve held-out accuracy either: at lr 3e-6 it stays flat, at
1e-5 it declines, at 3e-5 the model loses the end token.

`--config=configs/latent_grpo.py:paper` gives the paper's GSM8K hyper-parameters
(LLaMA-3.2-1B shape, GSM8K-Aug; set --config.init to a Latent-SFT checkpoint). Its
prompt is the official code's (DJC-GO-SOLO/Latent-GRPO data_preprocess_code/gsm8k_aug.py,
eval/eval_low_tasks_sglang.py): one user turn "Please reason step by step, and put your
final answer within \\boxed{}.\\n{question}" in the chat template, no system prompt,
`<think>` after the generation prompt (the official README: the template must enter
reasoning mode); the latent span ends at `</think>` and the reward checks the last
\\boxed{} (`boxed_math`).
"""
from configs import base, latent_sft

FROZEN = (("model/embed/.*", None), ("model/lm_head/.*", None))  # input embeddings, LM head


def get_config(arg=None):
  base.check_arg(arg, "configs/latent_grpo.py", own=("paper",))
  c = base.get_config(arg)
  c.name = "latent_grpo"
  c.mode = "sft,latent_sft,rl"  # the CoT-start ablation: --config.mode=sft,rl
  c.sft.method = "cot"
  latent_sft.add_section(c)
  latent_sft.set_rule(c)
  c.rl.temperature, c.rl.top_k, c.rl.top_p = 0.6, 30, 0.95  # the answer tokens
  c.rl.loss = "ppo_clip"
  c.rl.clip_eps = 0.2
  c.rl.dual_clip = 3.0
  c.rl.aggregation = "token_mean"
  c.rl.beta = 0.0
  c.rl.mask_truncated = True
  c.rl.truncated_in_stats = True  # the GSM script (MATH: False)
  c.rl.first_token_selection = True
  c.rl.updates_per_batch = 2  # 8 prompts in 2 mini-batches of 4 groups (GSM: 64 in 4)
  # 3e-6, a tenth of the shared RL default: from the seed-0 warm-up (greedy 0.519 at RL
  # step 0 with this rule), RL steps 100 / 200 gave 0.296 / 0.006 at 3e-5 (the end token
  # is lost: format rate 0.17, 64 latent steps), 0.481 / 0.454 at 1e-5 (0.509 / 0.491 at
  # steps 50 / 100 with 32 prompts), 0.512 / 0.511 at 3e-6 (docs/latent_grpo.md).
  c.rl.param_groups = FROZEN + ((".*", 3e-6),)
  if arg == "paper":
    _paper(c)
  return c


def _paper(c):
  """Latent-GRPO's GSM8K-Aug setting (the official GSM script on verl): LLaMA-3.2-1B
  from a Latent-SFT checkpoint, 64 prompts x 8, mini-batch 16 (4 updates per
  rollout), lr 1e-6 constant, wd 0.01, no KL, dynamic sampling."""
  c.name = "latent_grpo-paper"
  c.mode = "rl"  # from a Latent-SFT checkpoint (--config.init)
  base.use_paper_prompt(c, "latent_grpo", chat_template="auto")
  c.rl.reward = "boxed_math"
  c.model.preset = "llama-3.2-1b"
  c.model.dtype = "bfloat16"
  c.data.task = "gsm8k_aug"
  c.data.sft_size = 0
  c.latent_grpo.end_token = "</think>"
  c.rl.group_size = 8
  c.rl.num_prompts = 64
  c.rl.updates_per_batch = 4
  c.rl.max_new = 512
  c.rl.steps = 200
  c.rl.dynamic_sampling_tries = 50
  c.rl.param_groups = FROZEN + ((".*", 1e-6),)
  c.rl.weight_decay = 0.01
  c.rl.schedule = "constant"
  c.rl.clip_norm = 1.0
  c.eval.max_new = 512
  c.eval.batch_size = 64
  c.eval.temperature = 0.6
  base.fit_paper_host(c, microbatch=32)  # 8 GPUs: 4 rows per device per chunk
