"""Latent-SFT rows as fixed-shape numpy batches (DJC-GO-SOLO/Latent-SFT `src/stage1/data.py`,
`src/stage2/data.py`).

A worked solution is `prompt | think | tail`: on `arith` the think text is the
reasoning steps (with the separator before '####'), the tail '#### answer' + eos,
so '#' plays `</think>` and the prompt's end plays `<think>` (the `topk_gumbel`
rollout thinks from the first response position until it shows '#'). The think
ids are cut into chunks c_1..c_n of k tokens (the last one shorter):

    encoder   prompt c_1 C c_2 C … c_n C                      (C: the compress input)
    stage 1   prompt L_1 c_2 L_2 c_3 … L_{n-1} c_n L_n tail   (L_i: latent of the i-th C)
    stage 2   prompt L_1 L_2 … L_n tail

Stage 1 drops the first chunk: latent L_i is followed by chunk i+1, the last by
the tail. Targets: stage 1 every text-chunk and tail token, stage 2 the tail.

Masks (bool [T, T], keep[q, k] = query q attends to key k):
  induction (encoder): causal, and no position attends to an earlier C.
  supervision (stage 1): prompt causal; a text chunk sees its preceding latent
  and itself (causal); a latent sees the prompt, earlier latents and itself; the
  tail sees the prompt, every latent and itself (causal), no text chunk.
Padding rows and columns are masked, except a padding row keeps its diagonal
(no row is empty; padding is never a target).

Positions (`dual_track_positions`): the prompt 0..p-1, latent j at p-1+j, each
token after a latent one more than the token before it (restarting at every
latent), so the tail sits where it sits in stage 2's sequential row.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from lrjax.data.tasks import ANSWER_DELIMITER, STEP_SEPARATOR, Problem, nocot_text, prompt_text, steps_text

# kinds of a position in a row
PAD, PROMPT, LATENT, TEXT, TAIL = 0, 1, 2, 3, 4


class Example(NamedTuple):
  """One worked solution as ids: prompt, think (chunked) and tail (answer + eos)."""
  prompt: list[int]
  think: list[int]
  tail: list[int]


def encode_problem(problem: Problem, tokenizer: Any) -> Example:
  """`prompt_text | steps + ' ' | '#### answer' eos`, each tokenized separately."""
  enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
  think = steps_text(problem.steps)
  if not think:
    raise ValueError(f"problem {problem.question!r} has no reasoning steps to compress")
  tail = enc(nocot_text(problem)) + [tokenizer.eos_token_id]
  return Example(enc(prompt_text(problem)), enc(think + STEP_SEPARATOR), tail)


def end_marker(tokenizer: Any) -> int:
  """The id that ends the think span (`</think>`): the first token of '####'."""
  return int(tokenizer.encode(ANSWER_DELIMITER, add_special_tokens=False)[0])


def chunks(ids: Sequence[int], k: int) -> list[list[int]]:
  """ids cut into chunks of k (the last one shorter): `insert_special_token_every_k`."""
  if k < 1:
    raise ValueError(f"compression rate k must be >= 1, got {k}")
  if not ids:
    raise ValueError("no think tokens to compress")
  return [list(ids[i:i + k]) for i in range(0, len(ids), k)]


def num_latents(ex: Example, k: int) -> int:
  return -(-len(ex.think) // k)


def encoder_row(ex: Example, k: int) -> tuple[list[int], list[bool]]:
  """(ids, is_compress): prompt c_1 C … c_n C (C's id is a placeholder, 0)."""
  ids, comp = list(ex.prompt), [False] * len(ex.prompt)
  for c in chunks(ex.think, k):
    ids += c + [0]
    comp += [False] * len(c) + [True]
  return ids, comp


def stage1_row(ex: Example, k: int) -> tuple[list[int], list[int], list[int]]:
  """(ids, kinds, segment): prompt L_1 c_2 L_2 … c_n L_n tail. Latent ids are 0
  (replaced by the mixture); segment[t] = the index of the latent a text token follows."""
  cs = chunks(ex.think, k)
  ids, kinds, seg = list(ex.prompt), [PROMPT] * len(ex.prompt), [-1] * len(ex.prompt)
  for i in range(len(cs)):
    ids.append(0)
    kinds.append(LATENT)
    seg.append(i)
    if i + 1 < len(cs):
      ids += cs[i + 1]
      kinds += [TEXT] * len(cs[i + 1])
      seg += [i] * len(cs[i + 1])
  ids += ex.tail
  kinds += [TAIL] * len(ex.tail)
  seg += [-1] * len(ex.tail)
  return ids, kinds, seg


def stage2_row(ex: Example, n: int) -> tuple[list[int], list[int]]:
  """(ids, kinds): prompt L_1 … L_n tail (latent ids 0)."""
  ids = list(ex.prompt) + [0] * n + list(ex.tail)
  kinds = [PROMPT] * len(ex.prompt) + [LATENT] * n + [TAIL] * len(ex.tail)
  return ids, kinds


def induction_mask(is_compress: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """keep [T, T]: causal, minus earlier compress keys (`build_latent_token_induction_mask`)."""
  t = is_compress.shape[0]
  q, k = np.arange(t)[:, None], np.arange(t)[None, :]
  keep = (k <= q) & ~(is_compress[None, :] & (k < q))
  return _pad(keep, valid)


def supervision_mask(kinds: np.ndarray, seg: np.ndarray) -> np.ndarray:
  """keep [T, T] of a stage-1 row (module doc; `build_latent_token_supervision_mask_vectorized`)."""
  t = kinds.shape[0]
  q, k = np.arange(t)[:, None], np.arange(t)[None, :]
  kq, kk = kinds[:, None], kinds[None, :]
  causal = k <= q
  prompt_rows = (kq == PROMPT) & (kk == PROMPT) & causal
  text_rows = (kq == TEXT) & (((kk == TEXT) & (seg[None, :] == seg[:, None]) & causal)
                              | ((kk == LATENT) & (seg[None, :] == seg[:, None])))
  latent_rows = (kq == LATENT) & ((kk == PROMPT) | ((kk == LATENT) & causal))
  tail_rows = (kq == TAIL) & ((kk == PROMPT) | (kk == LATENT) | ((kk == TAIL) & causal))
  keep = prompt_rows | text_rows | latent_rows | tail_rows
  return _pad(keep, kinds != PAD)


def _pad(keep: np.ndarray, valid: np.ndarray) -> np.ndarray:
  keep = keep & valid[:, None] & valid[None, :]
  return keep | (np.eye(len(valid), dtype=bool) & ~valid[:, None])


def dual_track_positions(kinds: Sequence[int]) -> list[int]:
  """`compute_dual_track_position_ids`: prompt 0..p-1, latent j (1-based) at p-1+j,
  every other token after the first latent one past the previous position,
  restarting from each latent."""
  kinds = list(kinds)
  if LATENT not in kinds:
    return list(range(len(kinds)))
  first = kinds.index(LATENT)
  pos, count, cur = list(range(first)), 0, first - 1
  for kind in kinds[first:]:
    if kind == LATENT:
      count += 1
      cur = first - 1 + count
    else:
      cur += 1
    pos.append(cur)
  return pos


def _width(longest: int, multiple: int, max_len: int, what: str) -> int:
  if longest > max_len:
    raise ValueError(f"a {what} row is {longest} tokens long, more than "
                     f"config.latent_sft.max_len={max_len}")
  return min(max_len, -(-longest // multiple) * multiple)


class Stage1Batch(NamedTuple):
  enc_ids: np.ndarray  # [B, Te] int32 (0 at C)
  enc_compress: np.ndarray  # [B, Te] bool  the input at t is C
  enc_mask: np.ndarray  # [B, Te, Te] bool induction mask
  enc_pos: np.ndarray  # [B, Te] int32 sequential
  comp_cols: np.ndarray  # [B, N] int32 columns of C in the encoder row (0 past n)
  ids: np.ndarray  # [B, T] int32 decoder ids (0 at latents)
  mask: np.ndarray  # [B, T, T] bool supervision mask
  pos: np.ndarray  # [B, T] int32 dual-track positions
  latent_cols: np.ndarray  # [B, N] int32 columns of L_i (T, out of range, past n)
  labels: np.ndarray  # [B, T] int32 labels[b, t] = ids[b, t + 1]
  loss_mask: np.ndarray  # [B, T] float32 1 where labels[b, t] is a text-chunk or tail token


POSITIONS = ("dual_track", "sequential")


def stage1_batch(examples: Sequence[Example], k: int, pad_id: int, max_len: int,
                 multiple: int = 16, positions: str = "dual_track") -> Stage1Batch:
  """A right-padded stage-1 batch; N = the most latents of any row (rounded up to
  `multiple`, so few shapes compile). positions: 'dual_track' (the newest official
  code) or 'sequential' 0..T-1 (its first version)."""
  if positions not in POSITIONS:
    raise ValueError(f"config.latent_sft.positions={positions!r} must be one of {POSITIONS}")
  enc_rows = [encoder_row(e, k) for e in examples]
  dec_rows = [stage1_row(e, k) for e in examples]
  te = _width(max(len(r[0]) for r in enc_rows), multiple, max_len, "Latent-SFT encoder")
  t = _width(max(len(r[0]) for r in dec_rows), multiple, max_len, "Latent-SFT stage-1")
  n = -(-max(num_latents(e, k) for e in examples) // multiple) * multiple
  b = len(examples)
  out = dict(enc_ids=np.full((b, te), pad_id, np.int32), enc_compress=np.zeros((b, te), bool),
             enc_mask=np.zeros((b, te, te), bool), enc_pos=np.tile(np.arange(te, dtype=np.int32), (b, 1)),
             comp_cols=np.zeros((b, n), np.int32), ids=np.full((b, t), pad_id, np.int32),
             mask=np.zeros((b, t, t), bool), pos=np.zeros((b, t), np.int32),
             latent_cols=np.full((b, n), t, np.int32), labels=np.full((b, t), pad_id, np.int32),
             loss_mask=np.zeros((b, t), np.float32))
  for i, ((eids, comp), (ids, kinds, seg)) in enumerate(zip(enc_rows, dec_rows)):
    out["enc_ids"][i, :len(eids)] = eids
    out["enc_compress"][i, :len(comp)] = comp
    valid = np.arange(te) < len(eids)
    out["enc_mask"][i] = induction_mask(out["enc_compress"][i], valid)
    cc = np.flatnonzero(comp)
    out["comp_cols"][i, :len(cc)] = cc
    out["ids"][i, :len(ids)] = ids
    kind_row = np.full(t, PAD, np.int32)
    kind_row[:len(kinds)] = kinds
    seg_row = np.full(t, -1, np.int32)
    seg_row[:len(seg)] = seg
    out["mask"][i] = supervision_mask(kind_row, seg_row)
    out["pos"][i, :len(ids)] = (dual_track_positions(kinds) if positions == "dual_track"
                                else np.arange(len(ids)))
    lc = np.flatnonzero(kind_row == LATENT)
    out["latent_cols"][i, :len(lc)] = lc
    target = (kind_row == TEXT) | (kind_row == TAIL)  # the token at t + 1 is a target
    out["loss_mask"][i, :-1] = target[1:]
  out["labels"][:, :-1] = out["ids"][:, 1:]
  return Stage1Batch(**out)


class Stage2Batch(NamedTuple):
  ids: np.ndarray  # [B, T] int32 (0 at latents)
  mask: np.ndarray  # [B, T] int32 1 on real positions (causal attention)
  latent_cols: np.ndarray  # [B, N] int32 columns of L_i (T past n)
  latent_valid: np.ndarray  # [B, N] bool
  labels: np.ndarray  # [B, T] int32
  loss_mask: np.ndarray  # [B, T] float32 1 where labels[b, t] is a tail token
  label_ids: np.ndarray  # [B, N, K] int32 soft-label ids
  label_probs: np.ndarray  # [B, N, K] float32 soft-label probabilities


def stage2_batch(examples: Sequence[Example], n_latents: Sequence[int], label_ids: np.ndarray,
                 label_probs: np.ndarray, pad_id: int, max_len: int,
                 multiple: int = 16) -> Stage2Batch:
  """A right-padded stage-2 batch; label_ids / label_probs [B, N_stored, K]."""
  rows = [stage2_row(e, int(n)) for e, n in zip(examples, n_latents)]
  t = _width(max(len(r[0]) for r in rows), multiple, max_len, "Latent-SFT stage-2")
  n = -(-max(int(x) for x in n_latents) // multiple) * multiple
  b, kk = len(rows), label_ids.shape[-1]
  ids = np.full((b, t), pad_id, np.int32)
  mask = np.zeros((b, t), np.int32)
  cols = np.full((b, n), t, np.int32)
  valid = np.zeros((b, n), bool)
  loss_mask = np.zeros((b, t), np.float32)
  lid = np.zeros((b, n, kk), np.int32)
  lpr = np.zeros((b, n, kk), np.float32)
  lpr[..., 0] = 1.0  # padding latents: any normalised distribution (never read)
  for i, (r, kinds) in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
    kind_row = np.array(kinds)
    lc = np.flatnonzero(kind_row == LATENT)
    cols[i, :len(lc)] = lc
    valid[i, :len(lc)] = True
    loss_mask[i, :len(r) - 1] = kind_row[1:] == TAIL
    lid[i, :len(lc)] = label_ids[i, :len(lc)]
    lpr[i, :len(lc)] = label_probs[i, :len(lc)]
  labels = np.full((b, t), pad_id, np.int32)
  labels[:, :-1] = ids[:, 1:]
  return Stage2Batch(ids, mask, cols, valid, labels, loss_mask, lid, lpr)
