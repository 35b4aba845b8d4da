"""SFT sequences: CoT, No-CoT and the Coconut curriculum, as fixed-shape numpy batches.

One row is `prompt ids + response ids + eos`, right-padded to a fixed length T
(one jit compile per (B, T, n_latent_max) bucket). The prompt and the response
are tokenized **separately** and concatenated, exactly as at generation time
(the model reads the tokenized prompt, then emits response tokens).

    mode 'cot'      prompt_text(p) | cot_text(p) eos
    mode 'nocot'    prompt_text(p) | nocot_text(p) eos           ('#### answer')
    mode 'coconut'  prompt_text(p) <bot> <latent>*(k*c) <eot> | cot_text(p, skip) eos

(`|` marks where the loss starts.) These are the raw format's texts; with a
`lrjax.data.prompts.Prompter` the prompt and the response follow its format and
the row ends with its `end_ids` (a chat template's end-of-turn token). Each mode is an `SFTMethod` registered in
`SFT_METHODS` (`sft.method`): its row encoder and what the rest of lrjax needs
to know about it (latent rows, special tokens, the thought rule its models are
evaluated with). Coconut (Hao et al., arXiv 2412.06769;
facebookresearch/coconut `dataset.py`) at curriculum stage s replaces the
first k reasoning steps by k*c latent thoughts, per row:

    s <= max_latent_stage (or max_latent_stage is None):
        skip = k = min(s, len(steps))           # a short problem: all its steps go latent
    s >  max_latent_stage  (the final all-latent stage):
        skip = len(steps), k = min(len(steps), max_latent_stage)

With `pad_latents=True`, k is not clipped to len(steps) (k = s, resp.
max_latent_stage), which is what Coconut's training collator does for
s <= max_latent_stage. Stage 0 keeps the `<bot><eot>` markers (as Coconut
does), so its text after `<eot>` is byte-for-byte `cot_text(p)`.

Label alignment (next-token): `labels[b, t] = ids[b, t + 1]` is the target of
the logits at position t, and `loss_mask[b, t] = 1` iff ids[b, t + 1] is a
response token (the answer text and eos; for Coconut the text after `<eot>`,
so the question, `<bot>`, the latents and `<eot>` are never targets, as in
Coconut). The last column has no target (loss_mask 0).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import numpy as np

from lrjax.data.prompts import Prompter
from lrjax.data.tasks import Problem
from lrjax.data.tokenizer import LATENT_TOKENS
from lrjax.registry import Registry


class SFTMethod(NamedTuple):
  """An SFT method (`sft.method`).

  encode(problem, tokenizer, stage, c, latent_ids, max_latent_stage, pad_latents,
         start_latents, max_latents, prompter)
      -> (ids, response start column, `<bot>` column or 0, number of latents).
  latent: rows hold latent thoughts (the Coconut curriculum, `LatentIds`).
  forward(cfg, params, batch, latent_grad) -> (hidden [B, T, H], logits [B, T, V]):
      the SFT loss's forward of the method's rows (e.g. Coconut's continuous
      thoughts); None: the teacher-forced forward of the token embeddings.
  special_tokens: tokens the method needs in the vocabulary.
  eval_rule: the thought rule its models are evaluated with (a name in
      `lrjax.latent.RULES`), with the stage's latent count.
  """
  encode: Callable[..., tuple[list[int], int, int, int]]
  latent: bool = False
  special_tokens: tuple[str, ...] = ()
  eval_rule: str = "token"
  forward: Callable[..., tuple[Any, Any]] | None = None


SFT_METHODS: Registry[SFTMethod] = Registry("SFT method")


class LatentIds(NamedTuple):
  """Token ids of the Coconut markers."""
  bot: int
  latent: int
  eot: int


class SFTBatch(NamedTuple):
  """A right-padded SFT batch (numpy arrays; a pytree, so it passes through jit).

  `n_latent_max` (static, the scan length of the Coconut forward) is the second
  dimension of `latent_pos`, so it is part of the compiled shape.
  """
  ids: np.ndarray  # [B, T] int32 input token ids (`<latent>` at latent positions), pad after
  mask: np.ndarray  # [B, T] int32 1 on real tokens, 0 on right padding
  labels: np.ndarray  # [B, T] int32 labels[b, t] = ids[b, t + 1] (pad at the end)
  loss_mask: np.ndarray  # [B, T] float32 1 where labels[b, t] is a response token
  latent_mask: np.ndarray  # [B, T] bool  the INPUT at t is a latent thought
  bot_pos: np.ndarray  # [B] int32 column of `<bot>` (0 in cot/nocot batches)
  n_latents: np.ndarray  # [B] int32 latent thoughts in the row (<= n_latent_max)
  latent_pos: np.ndarray  # [B, n_latent_max] int32 columns of the latents, -1 past n_latents

  @property
  def n_latent_max(self) -> int:
    return int(self.latent_pos.shape[1])


def resolve_latent_ids(tokenizer: Any, latent_ids: Any = None) -> LatentIds:
  """`LatentIds` from a (bot, latent, eot) triple, a mapping or the tokenizer's vocab.

  Accepts a `LatentIds`/3-sequence, an object with `.bot/.latent/.eot`, a
  mapping keyed by '<bot>'... or 'bot'..., or None (look the three tokens up
  with `tokenizer.convert_tokens_to_ids`).
  """
  if latent_ids is None:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS]
    unk = getattr(tokenizer, "unk_token_id", None)
    if any(i is None or i == unk for i in ids):
      raise ValueError(f"the tokenizer has no {LATENT_TOKENS} tokens; add them "
                       "(lrjax.data.tokenizer.add_latent_tokens) or pass latent_ids")
    return LatentIds(*map(int, ids))
  if isinstance(latent_ids, Mapping):
    get = lambda n: latent_ids[f"<{n}>"] if f"<{n}>" in latent_ids else latent_ids[n]
    return LatentIds(*(int(get(n)) for n in LatentIds._fields))
  if all(hasattr(latent_ids, n) for n in LatentIds._fields) and not isinstance(latent_ids, tuple):
    return LatentIds(*(int(getattr(latent_ids, n)) for n in LatentIds._fields))
  return LatentIds(*map(int, latent_ids))


def nominal_latents(stage: int, c: int, max_latent_stage: int | None = None,
                    start_latents: int = 0, max_latents: int = 0) -> int:
  """n_latent_max of every batch at this stage: the most latents any row can have
  (max_latents > 0: LatR's curriculum, `lrjax.methods.coconut.curriculum.latr_counts`)."""
  if max_latents > 0:
    return min(start_latents + stage * c, max_latents)
  k = stage if max_latent_stage is None else min(stage, max_latent_stage)
  return k * c


def _encode(tokenizer: Any, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_text(kind: str) -> Callable:
  def encode(problem: Problem, tokenizer: Any, stage: int = 0, c: int = 1, latent_ids=None,
             max_latent_stage=None, pad_latents=False, start_latents=0, max_latents=0,
             prompter: Prompter | None = None):
    pr = prompter or Prompter(tokenizer)
    prompt = pr.ids(problem.question)
    text = pr.cot(problem) if kind == "cot" else pr.nocot(problem)
    ids = prompt + _encode(tokenizer, text) + pr.end_ids
    return ids, len(prompt), 0, 0
  return encode


SFT_METHODS.register("cot")(SFTMethod(_encode_text("cot")))
SFT_METHODS.register("nocot")(SFTMethod(_encode_text("nocot")))
# Coconut's curriculum (`encode_latent_curriculum`, with its latent forward) is
# registered by its method, lrjax/methods/coconut/.


def sft_method(mode: str) -> SFTMethod:
  """The registered `SFTMethod`; ValueError naming the known ones otherwise."""
  if mode not in SFT_METHODS:
    raise ValueError(f"unknown SFT mode {mode!r}; expected one of {tuple(SFT_METHODS.names())}")
  return SFT_METHODS.get(mode)


def encode_example(problem: Problem, tokenizer: Any, mode: str, stage: int = 0, c: int = 1,
                   latent_ids: LatentIds | None = None, max_latent_stage: int | None = None,
                   pad_latents: bool = False, start_latents: int = 0,
                   max_latents: int = 0, prompter: Prompter | None = None
                   ) -> tuple[list[int], int, int, int]:
  """One row: (ids, response start column, `<bot>` column or 0, number of latents);
  `prompter` writes the prompt and the target (None: the raw format, eos-terminated)."""
  return sft_method(mode).encode(problem, tokenizer, stage, c, latent_ids, max_latent_stage,
                                 pad_latents, start_latents, max_latents, prompter)


def _hint(problem: Problem, tokenizer: Any, span: int, lat: LatentIds) -> list[int]:
  ids = _encode(tokenizer, problem.answer)[:span]
  return ids + [lat.latent] * (span - len(ids))


def with_span(row: tuple[list[int], int, int, int], lat: LatentIds, span: int,
              hint: list[int] | None = None) -> tuple[list[int], int, int, int]:
  """A 'cot'/'nocot' row with `<bot> <latent>*span <eot>` (or `<bot> hint <eot>`)
  between prompt and response."""
  ids, start, _, _ = row
  head = ids[:start] + [lat.bot] + (hint or [lat.latent] * span) + [lat.eot]
  return head + ids[start:], len(head), start, span


def build_batch(problems: Sequence[Problem], tokenizer: Any, mode: str, stage: int = 0,
                c: int = 1, max_len: int = 256, latent_ids: Any = None,
                max_latent_stage: int | None = None, pad_latents: bool = False,
                pad_to_multiple: int | None = None, start_latents: int = 0,
                max_latents: int = 0, label_markers: bool = False, span: int = 0,
                span_rows: Sequence[bool] | None = None,
                span_hints: Sequence[bool] | None = None,
                prompter: Prompter | None = None) -> SFTBatch:
  """Tokenizes `problems` into a right-padded `SFTBatch` of fixed shape.

  Args:
    mode: 'cot', 'nocot' or 'coconut' (module doc for the sequences).
    stage, c, max_latent_stage, pad_latents: the Coconut curriculum (ignored
      otherwise); stage > max_latent_stage is the final all-latent stage.
    max_len: the padded length T. A longer row raises a ValueError naming the
      problem's index and length (rows are never truncated: that would cut
      the answer).
    latent_ids: see `resolve_latent_ids` (coconut only).
    pad_to_multiple: if set, T is the longest row rounded up to a multiple of
      it (capped at max_len) instead of max_len: a few length buckets, one
      compile each.
    start_latents, max_latents: max_latents > 0 selects LatR's curriculum
      (`lrjax.methods.coconut.curriculum.latr_counts`: min(start + stage*c, max) latents
      per row) instead of
      Coconut's.
    label_markers: `<bot>` and `<eot>` are targets too (LatR's labels; Coconut
      never predicts them). The latent positions are never targets.
    span, span_rows: 'cot'/'nocot' only: the rows with span_rows[i] (all rows when
      None) read `prompt <bot> <latent>*span <eot> | response eos` (`lrjax.sft.span`:
      latent_mask marks the span, bot_pos its `<bot>`, n_latents = span; n_latent_max
      stays 0, so the Coconut forward is not run). span_hints[i]: the span of row i holds
      the answer's first tokens instead (`with_span`).

  Returns:
    an `SFTBatch` with n_latent_max = `nominal_latents(stage, c, max_latent_stage)`
    in coconut mode (0 otherwise), so every batch of a stage has one shape.
  """
  method = sft_method(mode)
  if not problems:
    raise ValueError("build_batch needs at least one problem")
  if c < 1:
    raise ValueError(f"c (latents per step) must be >= 1, got {c}")
  lat = resolve_latent_ids(tokenizer, latent_ids) if method.latent else None
  n_max = (nominal_latents(stage, c, max_latent_stage, start_latents, max_latents)
           if method.latent else 0)
  pad = tokenizer.pad_token_id
  if pad is None:
    raise ValueError("the tokenizer has no pad_token_id")
  rows = [encode_example(p, tokenizer, mode, stage, c, lat, max_latent_stage, pad_latents,
                         start_latents, max_latents, prompter) for p in problems]
  if span:
    if method.latent:
      raise ValueError(f"span={span} needs a method without latents, not {mode!r}")
    lat = resolve_latent_ids(tokenizer, latent_ids)
    on = [True] * len(rows) if span_rows is None else [bool(x) for x in span_rows]
    hint = [False] * len(rows) if span_hints is None else [bool(x) for x in span_hints]
    rows = [with_span(r, lat, span, _hint(p, tokenizer, span, lat) if h else None) if o else r
            for r, o, h, p in zip(rows, on, hint, problems)]
  for i, (row, *_) in enumerate(rows):
    if len(row) > max_len:
      raise ValueError(f"problem {i} is {len(row)} tokens long in mode {mode!r} "
                       f"(stage {stage}), more than max_len={max_len}")
  longest = max(len(r[0]) for r in rows)
  t = max_len
  if pad_to_multiple:
    t = min(max_len, -(-longest // pad_to_multiple) * pad_to_multiple)
  b = len(rows)
  ids = np.full((b, t), pad, np.int32)
  mask = np.zeros((b, t), np.int32)
  loss_mask = np.zeros((b, t), np.float32)
  latent_mask = np.zeros((b, t), bool)
  bot_pos = np.zeros((b,), np.int32)
  n_latents = np.zeros((b,), np.int32)
  latent_pos = np.full((b, n_max), -1, np.int32)
  for i, (row, start, bot, n) in enumerate(rows):
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
    loss_mask[i, start - 1:len(row) - 1] = 1.0  # targets ids[start:len(row)]
    if label_markers and method.latent:
      loss_mask[i, bot - 1] = 1.0  # target ids[bot] = <bot>
      loss_mask[i, start - 2] = 1.0  # target ids[start - 1] = <eot>
    bot_pos[i], n_latents[i] = bot, n
    latent_mask[i, bot + 1:bot + 1 + n] = True
    latent_pos[i, :min(n, n_max)] = np.arange(bot + 1, bot + 1 + min(n, n_max))
  labels = np.full((b, t), pad, np.int32)
  labels[:, :-1] = ids[:, 1:]  # B T: the next token
  return SFTBatch(ids, mask, labels, loss_mask, latent_mask, bot_pos, n_latents, latent_pos)
