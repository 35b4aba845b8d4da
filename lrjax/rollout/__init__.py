"""Jitted rollout engine, trajectories, teacher-forced replay and sampling."""
from lrjax.rollout.sampling import Sampling, process_logits, sample, token_logp  # first: no deps
from lrjax.rollout.trajectory import Trajectory, bucket_length, decode, pad_prompts  # noqa: I001
from lrjax.rollout.engine import rollout, sample_trajectory
from lrjax.rollout.replay import ReplayOut, replay, replay_inputs

__all__ = [
    "ReplayOut", "Sampling", "Trajectory", "bucket_length", "decode", "pad_prompts", "process_logits",
    "replay", "replay_inputs", "rollout", "sample", "sample_trajectory", "token_logp",
]
