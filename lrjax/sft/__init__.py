"""Supervised fine-tuning: CoT / No-CoT sequences, the Coconut curriculum and forward,
the SFT loss and a jitted train step (the SFT phase that runs them is `lrjax.phases.sft`)."""
from lrjax.sft.coconut import coconut_forward, latent_inputs, substitute_latents
from lrjax.sft.sequences import (LATENT_TOKENS, LatentIds, SFTBatch, build_batch,
                                 coconut_counts, encode_example, latr_counts, nominal_latents,
                                 resolve_latent_ids)
from lrjax.sft.step import (curriculum_stage, make_train_step, masked_cross_entropy,
                            reset_on_stage_switch, sft_loss, stage_switched, train_step)

__all__ = [
    "LATENT_TOKENS", "LatentIds", "SFTBatch", "build_batch",
    "coconut_counts", "coconut_forward", "curriculum_stage", "encode_example",
    "latent_inputs", "latr_counts", "make_train_step",
    "masked_cross_entropy", "nominal_latents", "reset_on_stage_switch", "resolve_latent_ids",
    "sft_loss", "stage_switched", "substitute_latents", "train_step",
]
