"""Jitted rollout engine, trajectories and teacher-forced replay.

The rollout drives a thought rule (`lrjax.latent`) one position at a time;
the rules and the rollout share the sampling functions of `lrjax.sampling`
(re-exported here), so `latent/` never imports `rollout/`.
"""
from lrjax.sampling import Sampling, process_logits, sample, token_logp
from lrjax.rollout.trajectory import (PROMPT_BUCKETS, Trajectory, bucket_length, decode,
                                      encode_prompts, pad_prompts)
from lrjax.rollout.engine import rollout, sample_trajectory
from lrjax.rollout.replay import ReplayOut, replay, replay_inputs

__all__ = [
    "PROMPT_BUCKETS", "ReplayOut", "Sampling", "Trajectory", "bucket_length", "decode",
    "encode_prompts", "pad_prompts", "process_logits", "replay", "replay_inputs", "rollout",
    "sample", "sample_trajectory", "token_logp",
]
