"""Latent-SFT (arXiv 2510.15522): the CoT warm-up of the tiny model on `arith`, then
stage 1 (encoder, decoder, both), the soft labels and stage 2, on a CPU:

    python -m lrjax.main --config=configs/latent_sft.py --workdir=runs/latent_sft

The decoder is evaluated with the greedy `topk_gumbel` rollout (top-10 mixtures of
its own distribution until it shows '#'), the one Latent-GRPO continues from
(docs/latent_sft.md). `:paper` gives the official GSM8K scripts' settings
(LLaMA-3.2-1B shape; set --config.init to a CoT-SFT model).
"""
from configs import base


def add_section(c) -> None:
  """config.latent_sft with the tiny default's settings (`LatentSFTOptions`,
  lrjax/methods/latent_grpo/sft_options.py; docs/latent_sft.md)."""
  base.use_options(c, "latent_sft")


def set_rule(c) -> None:
  """The `topk_gumbel` rule the decoder is evaluated (and Latent-GRPO rolls out) with, at
  its defaults: K 10, top_p 0.95, tau_gs 1, noise 1, end token '####'."""
  base.use_rule(c, "topk_gumbel")


def get_config(arg=None):
  base.check_arg(arg, "configs/latent_sft.py", own=("paper",))
  c = base.get_config(None if arg == "paper" else arg)
  c.name = "latent_sft"
  c.mode = "sft,latent_sft"
  c.sft.method = "cot"
  add_section(c)
  set_rule(c)
  if arg == "paper":
    _paper(c)
  return c


def _paper(c):
  """The official GSM8K scripts (`script/run_distill_stage*_gsm8k.sh`): k 2, top-10,
  lr 1e-4 (stage 1, 10 epochs per step) / 3e-4 (stage 2, 70 epochs), cosine, warmup 0.05,
  wd 0.01, 512 sequences per update (8 x 8 GPUs x 8 accumulation), Gumbel noise 1 / T 1."""
  c.name = "latent_sft-paper"
  c.mode = "latent_sft"  # from a CoT-SFT model (--config.init)
  c.model.preset = "llama-3.2-1b"
  c.model.dtype = "bfloat16"
  c.data.task = "gsm8k"
  s = c.latent_sft
  s.compression_rate = 2
  # 10 epochs per stage-1 step, 70 in stage 2, of GSM8K-Aug (~385k solutions) at 512
  s.encoder_steps = s.decoder_steps = s.union_steps = 7530
  s.stage2_steps = 52710
  s.lr, s.stage2_lr = 1e-4, 3e-4
  s.batch_size = 512
  s.max_len = 2048
  c.eval.max_new = 512
  base.fit_paper_host(c, microbatch=0)  # remat and the mesh (no RL phase)
