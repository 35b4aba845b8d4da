"""LatR SFT: Coconut-style continuous thoughts trained LatR's way (Özeren &
Aßenmacher, arXiv 2512.11816; official code enesozeren/latent-space-thinking-model).

Like Coconut, each latent thought is the previous position's last hidden
state, and a curriculum replaces reasoning steps by thoughts; unlike Coconut:

* no gradient through the thought chain (`sft.latent_grad = False`): the
  thoughts are computed, then fed to the training forward as constants;
* `<bot>` and `<eot>` are targets (`sft.label_markers = True`);
* the curriculum counts latents (`sft.start_latents`, `sft.latents_per_step`,
  `sft.max_latents`): stage s has min(start + s*c, max) thoughts in every row,
  replacing (thoughts // c) steps; at the maximum every step is latent.

LatR on GSM8K-Aug: c = 2, start 4, max 6, one epoch per stage, AdamW lr 5e-5,
wd 0.01. This tiny default follows configs/coconut.py's calibrated schedule
(every worked solution, batch 32; 800 CoT steps with the markers, then one
thought per stage for 150 steps each, then all-latent with 3 thoughts until
step 1800), at the SFT lr of the other tiny configs:

    python -m lrjax.main --config=configs/latr_sft.py --workdir=runs/latr_sft
"""
from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/latr_sft.py")
  c = base.get_config(arg)
  c.name = "latr_sft"
  c.mode = "sft"
  set_latr_sft(c)
  return c


def set_latr_sft(c):
  """LatR's SFT choices at tiny scale (shared with configs/latr.py)."""
  c.sft.method = "coconut"
  c.data.sft_size = 0
  c.sft.batch_size = 32
  c.sft.latent_grad = False
  c.sft.label_markers = True
  c.sft.latents_per_step = 1
  c.sft.start_latents = 0
  c.sft.max_latents = 3
  c.sft.num_stages = 3  # stages 0, 1, 2 (0, 1, 2 thoughts); stage 3: 3 thoughts, all latent
  c.sft.stage_steps = (800, 150, 150)
  c.sft.steps = 1800
  c.sft.eval_every = 450
  c.rule.name = "hidden"
  c.rule.num_latent = 0  # the chain length stored with the SFT model (3)


def set_latr_paper(c):
  """LatR's published setting (enesozeren/latent-space-thinking-model,
  src/configs/latr/latent_reasoner_sft.yaml): Qwen2.5-1.5B base, GSM8K-Aug (300k
  examples), c = 2 latents per step from 4 up to 6, one epoch per stage at batch 128
  (1 x 128 accumulated: 2344 steps), AdamW lr 5e-5, wd 0.01 (the official StepLR decay,
  x0.8 every 50 steps, is not modelled: constant lr). The prompt is the official raw
  text, no chat template (prompts/prompts.py SYSTEM_PROMPT_LATENT_REASONER_NO_THINK,
  then '\\nUser:' question '\\nAssistant:'); targets end `<answer>\\boxed{..}</answer>`
  and the reward checks the box (`boxed_math`)."""
  c.model.preset = "qwen2.5-1.5b"
  c.model.dtype = "bfloat16"
  c.data.task = "gsm8k_aug"
  c.data.sft_size = 0
  base.use_paper_prompt(c, "latr", chat_template="none")
  c.rl.reward = "boxed_math"
  c.sft.batch_size = 128
  c.sft.lr = 5e-5
  c.sft.weight_decay = 0.01
  c.sft.warmup_steps = 0
  c.sft.schedule = "constant"
  c.sft.max_len = 512
  c.sft.latents_per_step = 2
  c.sft.start_latents = 4
  c.sft.max_latents = 6
  c.sft.num_stages = 1  # stage 0: 4 latents; stage 1: 6, every step latent
  c.sft.stage_steps = (2344,)
  c.sft.steps = 2 * 2344
  c.sft.eval_every = 1000
  c.eval.max_new = 1024
  c.eval.batch_size = 64
  c.eval.num_samples = 4  # the paper: 4 samples at T 0.2, pass@1 and pass@4
  c.eval.pass_k = (1, 4)
  c.eval.temperature = 0.2
