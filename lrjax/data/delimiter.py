"""Detecting the answer delimiter ('####') on token ids, inside jit.

HRPO's think span ends once '####' has been generated. A BPE tokenizer can
write it in many ways ('####', '##' + '##', ' ###' + '#', '#' + '###\\n'...),
so the check runs a string-matching automaton (Knuth-Morris-Pratt) over the
delimiter's characters, one token at a time, with per-token tables built
once from each token's decoded text:

    tables = delimiter_tables(tokenizer)                # numpy, [V, m]
    run, done = zeros([B], int32), zeros([B], bool)
    for each generated token [B]:
      run, completed = delimiter_step(tables, run, token)
      done |= completed

`run` is the automaton state: the length of the longest suffix of the text so
far that is a prefix of the delimiter (for '####': the trailing '#' count,
at most 3). `completed` is true when a delimiter occurrence ends inside this
token's text: (text before + this token) holds more (overlapping)
occurrences than the text before. Its first true is the first token after
which `delimiter in text`; later occurrences ('#####') are true again, so
callers keep a sticky flag (`done |= completed`).
"""
from __future__ import annotations

import weakref

import jax.numpy as jnp
import numpy as np

# tokenizer -> {(len(tokenizer), delimiter, vocab_size): tables}: every evaluation and the
# RL phase ask for the same tables, and decoding a 150k vocabulary takes seconds
_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _failure(delim: str) -> list[int]:
  """KMP failure function: fail[k] = longest proper border of delim[:k]."""
  fail = [0] * (len(delim) + 1)
  k = 0
  for i in range(1, len(delim)):
    while k and delim[i] != delim[k]:
      k = fail[k]
    if delim[i] == delim[k]:
      k += 1
    fail[i + 1] = k
  return fail


def _advance(delim: str, fail: list[int], state: int, text: str) -> tuple[int, bool]:
  """Runs the automaton over `text` from `state`: (new state < m, whether a match ended)."""
  hit = False
  for ch in text:
    while state and ch != delim[state]:
      state = fail[state]
    if ch == delim[state]:
      state += 1
    if state == len(delim):
      hit, state = True, fail[state]
  return state, hit


def token_strings(tokenizer, vocab_size: int | None = None) -> list[str]:
  """The decoded text of every token id (ids past the tokenizer decode to '').

  Each id is decoded after an anchor token and the anchor's text removed, so
  tokenizers whose single-id decode drops a leading space (SentencePiece's
  '▁') still give the text the token adds in context; where that does not
  apply, the single-id decode is used (byte-level BPE).
  """
  n = len(tokenizer)
  backend = tokenizer.backend_tokenizer
  single = backend.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
  anchor_ids = tokenizer.encode("a", add_special_tokens=False)
  out = single
  if anchor_ids:
    a = anchor_ids[-1]
    prefix = backend.decode([a], skip_special_tokens=False)
    paired = backend.decode_batch([[a, i] for i in range(n)], skip_special_tokens=False)
    out = [p[len(prefix):] if p.startswith(prefix) else s for p, s in zip(paired, single)]
  return out + [""] * max(0, (vocab_size or 0) - n)


def delimiter_tables(tokenizer, delimiter: str = "####",
                     vocab_size: int | None = None) -> dict[str, np.ndarray]:
  """Per-token automaton tables for `delimiter_step`.

  Args:
    tokenizer: a HF fast tokenizer.
    delimiter: the text that ends the think span.
    vocab_size: rows of the tables (default len(tokenizer)); give the model's
      vocab_size when it has padded rows, so every sampleable id is covered.
  Returns:
    {'next': int32 [V, m], 'completed': bool [V, m]}: the state after token v
    from state s, and whether a delimiter occurrence ends inside token v. Read-only
    arrays, built once per tokenizer (and its length), delimiter and vocab_size.
  """
  if not delimiter:
    raise ValueError("the delimiter must be a non-empty string")
  key = (len(tokenizer), delimiter, vocab_size)
  cached = _TABLES.setdefault(tokenizer, {})
  if key not in cached:
    cached[key] = _build_tables(tokenizer, delimiter, vocab_size)
  return dict(cached[key])


def _build_tables(tokenizer, delimiter: str, vocab_size: int | None) -> dict[str, np.ndarray]:
  texts = token_strings(tokenizer, vocab_size)
  m, chars, fail = len(delimiter), set(delimiter), _failure(delimiter)
  nxt = np.zeros((len(texts), m), np.int32)  # a token without delimiter characters resets
  done = np.zeros((len(texts), m), bool)
  for v, text in enumerate(texts):
    if not text:
      nxt[v] = np.arange(m)  # empty text: the state is unchanged
    elif not chars.isdisjoint(text):
      for s in range(m):
        nxt[v, s], done[v, s] = _advance(delimiter, fail, s, text)
  nxt.setflags(write=False)
  done.setflags(write=False)
  return {"next": nxt, "completed": done}


def delimiter_step(tables: dict, run: jnp.ndarray, token: jnp.ndarray
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One token through the automaton (pure jnp; jit- and scan-friendly).

  Args:
    tables: from `delimiter_tables` (numpy or jnp arrays).
    run: int32 [B] state: trailing characters matching a delimiter prefix.
    token: int32 [B] the token just emitted.
  Returns:
    (new_run int32 [B], completed bool [B]).
  """
  nxt = jnp.asarray(tables["next"])  # V m
  done = jnp.asarray(tables["completed"])  # V m
  return nxt[token, run], done[token, run]
