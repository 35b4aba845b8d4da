"""LEPO: Gumbel-softmax latent reasoning policy optimization (arXiv 2604.17892).

The first `lepo.latent_len` response positions of every rollout are latent:
the next input is a Gumbel-softmax mixture z^T E of the top-k token embeddings
(temperature lepo.tau), the shown token is the noise-free argmax; after them
ordinary sampling. One teacher-forced pass trains the latent positions with
A * soft cross-entropy (no ratio) and the text with the clipped GRPO term,
averaged per sequence over both (docs/lepo.md). This default runs a CoT-SFT
warm-up of the tiny model on `arith` and then LEPO, on a CPU, with no flags:

    python -m lrjax.main --config=configs/lepo.py --workdir=runs/lepo

Tiny default: tau 0.3 (the paper's Qwen2.5-3B value; the paper uses 0.3-0.5)
and L = 16 latent positions, about a third of an arith response (37-62
characters, two of its three or four `<<a+b=c>>` steps' worth), so latent
positions are a real part of every rollout. The sampling temperature is the
shared RL default (`rl.temperature` 1.0, as in the paper). tau and L were
not swept. Measured from the default warm-ups (seeds 0/1/2, greedy on 1000
held-out problems), RL steps 0 / 100 / 200: 0.528 / 0.558 / 0.564,
0.413 / 0.405 / 0.437, 0.291 / 0.302 / 0.317 (pass@1 +4.0, +1.3, +2.3),
16 latent steps at every evaluation: as much as HRPO and token GRPO gain.

`--config=configs/lepo.py:paper` gives the paper's hyper-parameters
(Qwen2.5-3B base shape, L 64, tau 0.3, top-k 30, top-p 0.95, lr 1e-6, group 8;
set --config.init to the local checkpoint). Its prompt is the official code's
(YuyanZhou/lepo src/data/datasets.py, `get_prompt_shot` with 0 shots): the chat
template with the system prompt "Please reason step by step, and put your final answer
within \\boxed{}." and the question followed by the same sentence as the user turn;
the reward checks the last \\boxed{} (`boxed_math`, math-verify as the official code).
"""
from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/lepo.py", own=("paper",))
  c = base.get_config(arg)
  c.name = "lepo"
  c.mode = "sft,rl"
  c.sft.method = "cot"
  base.use_rule(c, "gumbel_soft", latent_len=16)  # the paper's tau 0.3, top_k 30, top_p 0.95
  c.rl.loss = "ppo_clip"  # the text positions; the latent ones are direct terms (no ratio)
  c.rl.aggregation = "seq_mean"  # per-sequence mean over latent + text positions
  c.rl.beta = 0.0
  if arg == "paper":
    _paper(c)
  return c


def _paper(c):
  """LEPO's Qwen2.5-3B setting (configs/lepo/qwen2_3b_latent64_gumbel030.yaml of
  the official code). The paper trains on DAPO-Math and evaluates on MATH500 /
  AIME with math-verify on `\\boxed{}`; lrjax has no DAPO-Math loader, so the
  preset reads MATH (`data.task = "math"`, reward `boxed_math`)."""
  c.name = "lepo-paper"
  c.mode = "rl"  # from the base model: no latent SFT
  base.use_paper_prompt(c, "lepo", chat_template="auto")
  c.rl.reward = "boxed_math"
  c.model.preset = "qwen2.5-3b"
  c.model.dtype = "bfloat16"
  c.data.task = "math"
  c.data.sft_size = 0  # every worked solution (only used by an SFT phase)
  c.lepo.latent_len = 64  # the paper's (tau, top_k, top_p are the defaults)
  c.rl.temperature = 1.0
  c.rl.group_size = 8
  # 8 GPUs x gradient accumulation 256 at batch 1, each completion seen twice
  # (num_iterations 2): 1024 distinct completions per optimizer step, all on-policy
  c.rl.num_prompts = 128
  c.rl.max_new = 2048
  c.rl.steps = 100  # the official script runs one epoch: set rl.steps to fit the data
  c.rl.warmup_steps = 3  # 3 % of rl.steps
  c.rl.param_groups = ((".*", 1e-6),)
  c.rl.b1, c.rl.b2 = 0.9, 0.99
  c.rl.weight_decay = 0.1
  c.rl.schedule = "cosine"
  c.rl.clip_norm = 1.0
  c.rl.clip_eps = 0.2
  c.eval.max_new = 2048
  c.eval.batch_size = 64
  c.eval.num_samples = 8  # avg@8 with the noise on = pass@1 over 8 samples
  c.eval.pass_k = (1, 8)
  c.eval.temperature = 1.0
  base.fit_paper_host(c, microbatch=16)  # 8 GPUs: 2 rows x 2304 positions per device per chunk
