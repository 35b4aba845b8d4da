"""The rollout output (`Trajectory`), prompt encoding and bucketing, text decoding.

Response index t holds the emitted id y_t, its span kind, whether it was
sampled (its behaviour log-prob belongs in the policy loss), that log-prob and
the rule's record_t. Finished rows are padded: ids = pad, span DONE, logp 0,
sampled False, records 0. Shape legend: B batch, P (bucketed) prompt length,
N = max_new, V vocab, H hidden.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lrjax.data.prompts import Prompter
from lrjax.data.tasks import Problem
from lrjax.latent.base import DONE, LATENT, RuleContext

# prompt lengths the rollout is compiled for (`bucket_length`): training and evaluation
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512)


@flax.struct.dataclass
class Trajectory:
  prompt_ids: jax.Array  # B P int32, left-padded
  prompt_mask: jax.Array  # B P, 1 on real prompt tokens
  ids: jax.Array  # B N int32, y_0 .. y_{N-1}
  span: jax.Array  # B N int8: LATENT, ANSWER or DONE
  sampled: jax.Array  # B N bool
  logp: jax.Array  # B N float32, log_softmax(l_t/τ)[y_t] (0 where not sampled)
  records: dict  # name -> [B, N, ...]
  lengths: jax.Array  # B int32, response positions incl. eos
  truncated: jax.Array  # B bool, no eos within max_new
  logits: jax.Array | None = None  # B N V float32, only with ctx.return_logits

  @property
  def response_mask(self) -> jax.Array:
    """B N bool: positions the row actually produced (not DONE)."""
    return self.span != DONE

  @property
  def latent_mask(self) -> jax.Array:
    """B N bool: positions in the think / latent span."""
    return self.span == LATENT

  @property
  def prompt_lengths(self) -> jax.Array:
    return jnp.sum(self.prompt_mask.astype(jnp.int32), axis=-1)  # B


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length; past the largest, the next multiple of it."""
  buckets = sorted(buckets)
  if not buckets:
    raise ValueError("no prompt-length buckets given")
  for b in buckets:
    if length <= b:
      return b
  return buckets[-1] * math.ceil(length / buckets[-1])


def encode_prompts(prompter: Any, problems: Sequence[Problem], suffix_ids: Sequence[int] = ()):
  """Each problem's prompt ids (`lrjax.data.prompts.Prompter.ids`; a bare tokenizer
  means the raw format), then the rule's prompt suffix (`prompt_suffix`)."""
  if not isinstance(prompter, Prompter):
    prompter = Prompter(prompter)
  return [prompter.ids(p.question) + list(suffix_ids) for p in problems]


def pad_prompts(prompts: Sequence[Sequence[int]], bucket: int,
                pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads id lists to `bucket`: (ids [B, bucket] int32, mask [B, bucket] int32)."""
  if pad_id is None:
    raise ValueError("pad_prompts needs a pad id; the run's tokenizer has none "
                     "(lrjax.data.special.resolve_special picks one)")
  ids = np.full((len(prompts), bucket), pad_id, np.int32)
  mask = np.zeros((len(prompts), bucket), np.int32)
  for row, p in enumerate(prompts):
    if len(p) > bucket:
      raise ValueError(f"prompt {row} has {len(p)} tokens, more than the bucket {bucket}")
    if len(p) == 0:
      raise ValueError(f"prompt {row} is empty")
    ids[row, bucket - len(p):] = np.asarray(p, np.int32)
    mask[row, bucket - len(p):] = 1
  return ids, mask


def decode(tokenizer: Any, traj: Trajectory, ctx: RuleContext) -> list[str]:
  """Response texts up to (not including) eos, outside jit.

  Positions holding ctx.latent_id are shown as `<latent>` (what a thought stands
  for, e.g. its nearest tokens, is `lrjax.latent.readable`'s).
  """
  ids = np.asarray(traj.ids)
  span = np.asarray(traj.span)
  texts = []
  for b in range(ids.shape[0]):
    parts, run = [], []
    for t in range(ids.shape[1]):
      tok = int(ids[b, t])
      if span[b, t] == DONE or tok == ctx.eos_id or tok in ctx.extra_eos:
        break
      if ctx.latent_id >= 0 and tok == ctx.latent_id:
        if run:
          parts.append(tokenizer.decode(run))
          run = []
        parts.append("<latent>")
      else:
        run.append(tok)
    if run:
      parts.append(tokenizer.decode(run))
    texts.append("".join(parts))
  return texts
