"""Supervised fine-tuning: CoT / No-CoT sequences, the SFT loss and a jitted train step
(the SFT phase that runs them is `lrjax.phases.sft`). A method's own SFT rows and
forward (Coconut's curriculum and continuous thoughts) are its `SFTMethod`, under
`lrjax/methods/`."""
from lrjax.sft.sequences import (LATENT_TOKENS, LatentIds, SFTBatch, build_batch,
                                 encode_example, nominal_latents, resolve_latent_ids)
from lrjax.sft.step import (curriculum_stage, make_train_step, masked_cross_entropy,
                            reset_on_stage_switch, sft_loss, stage_switched, train_step)

__all__ = [
    "LATENT_TOKENS", "LatentIds", "SFTBatch", "build_batch", "curriculum_stage",
    "encode_example", "make_train_step", "masked_cross_entropy", "nominal_latents",
    "reset_on_stage_switch", "resolve_latent_ids", "sft_loss", "stage_switched", "train_step",
]
