"""Latent-GRPO (arXiv 2604.27998) and the Latent-SFT it starts from (arXiv 2510.15522).

    rule.py        the `topk_gumbel` rule and its objective (docs/latent_grpo.md)
    sft_phase.py   the `latent_sft` phase (docs/latent_sft.md), its settings in
                   sft_options.py (the `latent_sft` section)
    latent_sft/    Latent-SFT's rows, masks and losses
"""
from __future__ import annotations

from lrjax.method import Method
from lrjax.methods.latent_grpo.rule import NAME, SECTION, TOPK_GUMBEL, LatentGRPOOptions, readable
from lrjax.methods.latent_grpo.sft_options import SECTION as SFT_SECTION, LatentSFTOptions

PHASE = "latent_sft"


def _run_latent_sft(run) -> None:
  from lrjax.methods.latent_grpo.sft_phase import run_latent_sft  # noqa: PLC0415
  run_latent_sft(run)


def _check_latent_sft(run) -> None:
  from lrjax.methods.latent_grpo.sft_phase import check_config  # noqa: PLC0415
  check_config(run.config)


LATENT_GRPO = Method(name="latent_grpo", rules={NAME: TOPK_GUMBEL},
                     phases={PHASE: _run_latent_sft}, prechecks={PHASE: _check_latent_sft},
                     readable={NAME: readable},
                     options={SECTION: LatentGRPOOptions, SFT_SECTION: LatentSFTOptions},
                     prompt="latent_grpo")
