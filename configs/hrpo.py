"""HRPO: hybrid latent reasoning via RL (Yue et al., arXiv 2505.18454).

During the think span (until '####' is generated) the next input mixes the
sampled token's embedding with a soft embedding of the whole distribution
through a learned gate a = exp(-c * softplus(-Lambda) * r); the policy is
trained with HRPO's on-policy REINFORCE-form GRPO loss and a k3 KL to the
frozen starting model. This default runs a CoT-SFT warm-up of the tiny model
on `arith` and then HRPO, on a CPU, with no flags:

    python -m lrjax.main --config=configs/hrpo.py --workdir=runs/hrpo

`--config=configs/hrpo.py:paper` gives the paper's hyper-parameters
(Qwen2.5-1.5B-Instruct on GSM8K with LoRA r32/α64; set --config.init to the local
HF folder of the checkpoint, e.g. one `huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct`
wrote; `:qwen2.5-1.5b` is the same preset). Its prompt is the official code's
(Yueeeeeeee/HRPO utils.py): the checkpoint's chat template with HRPO's system prompt
("... The final answer is provided after the #### tag, i.e., {reasoning process} ####
{answer}.") and the question as the user turn; the reward is the official one
(`hash_exact`: exactly one '####', the answer after it correct).
"""
from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/hrpo.py", own=("paper", "qwen2.5-1.5b"))
  c = base.get_config(arg)
  c.name = "hrpo"
  c.mode = "sft,rl"
  c.sft.method = "cot"
  base.use_rule(c, "hybrid")  # gate_c 8, r_min 0.99 (the paper's), top_k 50
  c.rl.loss = "reinforce_onpolicy"
  c.rl.aggregation = "seq_mean"
  c.rl.beta = 0.005
  c.rl.kl_reference = "token_inputs"  # the paper's reference: the starting model on tokens
  c.rl.param_groups = hrpo_groups(backbone=3e-5, gate=1e-3, lam=1e-2)
  if arg in ("paper", "qwen2.5-1.5b"):  # the second: the preset's earlier name
    _paper(c)
  return c


def hrpo_groups(backbone, gate, lam):
  """HRPO's three learning rates as `rl.param_groups`: the Lambda vector, the
  gate Linears (every other rule parameter), and the rest (backbone, heads)."""
  return (("rule/lambda", lam), ("rule/.*", gate), (".*", backbone))


def _paper(c):
  """HRPO's GSM8K setting: LoRA r32/α64 on every projection at lr 5e-6, the base frozen
  (the KL reference is the base with the adapters off)."""
  c.name = "hrpo-paper"
  c.mode = "rl"
  base.use_paper_prompt(c, "hrpo", chat_template="auto")
  c.rl.reward = "hash_exact"
  c.model.preset = "qwen2.5-1.5b"
  c.model.dtype = "bfloat16"
  c.data.task = "gsm8k"
  c.data.sft_size = 0  # every worked solution (only used by an SFT phase)
  c.rl.temperature = 0.5
  c.rl.group_size = 4
  c.rl.num_prompts = 16  # 64 completions per step
  c.rl.max_new = 512
  c.model.lora.rank, c.model.lora.alpha = 32, 64.0
  c.model.lora.targets = "q,k,v,o,gate,up,down"
  c.rl.param_groups = (("model/lora/.*", 5e-6), ("model/.*", None)) + hrpo_groups(
      backbone=5e-6, gate=1e-4, lam=1e-3)
  c.rl.b1, c.rl.b2 = 0.9, 0.99
  c.rl.weight_decay = 0.1
  c.rl.schedule = "cosine"
  c.rl.clip_norm = 0.1
  c.rl.beta = 0.005
  c.eval.max_new = 512
  c.eval.batch_size = 64
  base.fit_paper_host(c, microbatch=16)  # one GPU: 4 chunks of 16 rows
