"""Coconut's SFT curriculum (Hao et al., arXiv 2412.06769), and LatR's variant of it
(arXiv 2512.11816): the rows of the `coconut` SFT method. At stage s the first k
reasoning steps of a row are replaced by k*c latent thoughts between `<bot>` and
`<eot>` (the row layouts are in `lrjax.sft.sequences`' module docstring); the SFT loss
reads them with the latent forward of `lrjax.methods.coconut.forward`.
"""
from __future__ import annotations

from typing import Any

from lrjax.data.prompts import Prompter
from lrjax.data.tasks import Problem
from lrjax.sft.sequences import LatentIds


def coconut_counts(n_steps: int, stage: int, max_latent_stage: int | None = None,
                   pad_latents: bool = False) -> tuple[int, int]:
  """(steps skipped, latent steps k) of one problem at Coconut curriculum stage `stage`
  (`lrjax.sft.sequences`' module docstring)."""
  if stage < 0:
    raise ValueError(f"stage must be >= 0, got {stage}")
  if max_latent_stage is not None and stage > max_latent_stage:
    return n_steps, (max_latent_stage if pad_latents else min(n_steps, max_latent_stage))
  return min(stage, n_steps), (stage if pad_latents else min(stage, n_steps))


def latr_counts(n_steps: int, stage: int, c: int, start_latents: int,
                max_latents: int) -> tuple[int, int]:
  """(steps skipped, latents) of one problem in LatR's curriculum (arXiv 2512.11816;
  `process_data.py` of its official code): stage s has n = min(start + s*c, max)
  latents in every row; they replace the first n // c reasoning steps, and at
  n = max every step (the all-latent stage)."""
  if stage < 0:
    raise ValueError(f"stage must be >= 0, got {stage}")
  n = min(start_latents + stage * c, max_latents)
  return (n_steps if n >= max_latents else min(n // c, n_steps)), n


def encode_latent_curriculum(problem: Problem, tokenizer: Any, stage: int = 0, c: int = 1,
                             latent_ids: LatentIds | None = None,
                             max_latent_stage: int | None = None, pad_latents: bool = False,
                             start_latents: int = 0, max_latents: int = 0,
                             prompter: Prompter | None = None) -> tuple[list[int], int, int, int]:
  """A latent-curriculum row (Coconut's stage s, or LatR's schedule): see
  `lrjax.sft.sequences`' module docstring."""
  if latent_ids is None:
    raise ValueError("a latent SFT method needs latent_ids")
  pr = prompter or Prompter(tokenizer)
  prompt = pr.ids(problem.question)
  if max_latents > 0:
    skip, n = latr_counts(len(problem.steps), stage, c, start_latents, max_latents)
  else:
    skip, k = coconut_counts(len(problem.steps), stage, max_latent_stage, pad_latents)
    n = k * c
  head = prompt + [latent_ids.bot] + [latent_ids.latent] * n + [latent_ids.eot]
  ids = head + list(tokenizer.encode(pr.cot(problem, skip), add_special_tokens=False)) + pr.end_ids
  return ids, len(head), len(prompt), n
