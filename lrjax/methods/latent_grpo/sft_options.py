"""Latent-SFT's settings, the `latent_sft` config section read by the `latent_sft` phase
(docs/latent_sft.md): the defaults are the tiny CPU model's; `configs/latent_sft.py:paper`
sets the official GSM8K scripts'. The phase's precheck (`sft_phase.check_config`) checks
them, with the fields they depend on."""
from __future__ import annotations

import dataclasses

from lrjax.method import Options

SECTION = "latent_sft"


@dataclasses.dataclass(frozen=True)
class LatentSFTOptions(Options):
  compression_rate: int = 4  # k think tokens per latent (official GSM8K: 2 BPE tokens)
  top_k: int = 10  # mixture over the top-K of h·Eᵀ (topk_interpolation); 0 = whole vocabulary
  encoder_steps: int = 300  # stage 1, step 1: the encoder (decoder frozen)
  decoder_steps: int = 300  # stage 1, step 2: the decoder (encoder frozen)
  union_steps: int = 300  # stage 1, step 3: both
  stage2_steps: int = 600  # the decoder alone on the soft labels
  batch_size: int = 16
  lr: float = 3e-4  # stage 1 (official 1e-4 with LoRA r64)
  stage2_lr: float = 3e-4  # stage 2 (official 3e-4 with LoRA r64)
  weight_decay: float = 0.01
  warmup_frac: float = 0.05
  schedule: str = "cosine"
  end_lr_frac: float = 0.0
  clip_norm: float = 1.0
  ce_weight: float = 1.0
  kl_weight: float = 1.0
  # stage 2's clamped Gumbel perturbation of the stored labels (add_gumbel_noise)
  gumbel: bool = True
  gumbel_temperature: float = 1.0
  noise_scale: float = 1.0
  positions: str = "dual_track"  # stage 1's decoder positions: dual_track | sequential
  train_embeddings: bool = False  # the decoder's embeddings / LM head stay fixed (as LoRA)
  max_len: int = 256
  eval_every: int = 200
  log_every: int = 50
