"""Character tokenizer for the synthetic tasks, and the latent tokens of every method.

`build_char_tokenizer` makes a `transformers.PreTrainedTokenizerFast` where
every character is one token (exact round trip, spaces included), with
`<pad>` = 0, `<eos>` = 1, `<unk>` = 2, then the characters. `DEFAULT_ALPHABET`
covers both built-in tasks and leaves room for the three latent tokens in the
`tiny` preset's 64-row vocabulary, so arith and prosqa share one tokenizer.

`add_latent_tokens` adds `<bot>`, `<latent>`, `<eot>` (Coconut, Hao et al.
2024) and grows the embedding / LM head when the model has no spare rows; new
rows start as a copy of the row of `copy_from` (Coconut copies '<<').
"""
from __future__ import annotations

import functools
import os
import string
from typing import Iterable

import jax
import jax.numpy as jnp
import tokenizers
import transformers

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
LATENT_TOKENS = ("<bot>", "<latent>", "<eot>")
# Digits, lower case and the punctuation of the arith / prosqa formats: 57 characters,
# so with <pad>, <eos>, <unk> and the 3 latent tokens the vocabulary is 63 <= 64.
DEFAULT_ALPHABET = string.digits + string.ascii_lowercase + " \n!#$%()*+,-./:;<=>?|"


def build_char_tokenizer(texts_or_alphabet: str | Iterable[str]
                         ) -> transformers.PreTrainedTokenizerFast:
  """A character-level tokenizer.

  Args:
    texts_or_alphabet: a string (its characters are the alphabet) or an
      iterable of texts (the alphabet is every character they use).
  Characters outside the alphabet encode as `<unk>`.
  """
  if isinstance(texts_or_alphabet, str):
    chars = set(texts_or_alphabet)
  else:
    chars = set().union(*map(set, texts_or_alphabet))
  vocab = {PAD: 0, EOS: 1, UNK: 2}
  for ch in sorted(chars):
    vocab[ch] = len(vocab)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(
      tokenizers.Regex(r"[\s\S]"), behavior="isolated")  # every character, newlines too
  tok.decoder = tokenizers.decoders.Fuse()  # concatenate, no spaces added
  tok.add_special_tokens([PAD, EOS, UNK])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
      clean_up_tokenization_spaces=False)


def save_tokenizer(tok: transformers.PreTrainedTokenizerBase, directory: str) -> None:
  """Writes `tokenizer.json` (+ its config) to `directory`, loadable by AutoTokenizer."""
  os.makedirs(directory, exist_ok=True)
  tok.save_pretrained(directory)


def load_tokenizer(directory: str) -> transformers.PreTrainedTokenizerBase:
  """The tokenizer saved in `directory` (by `save_tokenizer` or any HF checkpoint).

  A directory with `tokenizer.json` loads as `PreTrainedTokenizerFast` (which
  reads its special tokens from `tokenizer_config.json`); others go through
  `AutoTokenizer`, whose first call imports torch (~10 s on a laptop CPU).
  """
  if os.path.isfile(os.path.join(directory, "tokenizer.json")):
    return transformers.PreTrainedTokenizerFast.from_pretrained(directory)
  return transformers.AutoTokenizer.from_pretrained(directory)


def _grow(table: jnp.ndarray, axis: int, new_size: int, rows: list[int], src: int) -> jnp.ndarray:
  """`table` with `axis` grown to `new_size` and `rows` (plus the new ones) set to row `src`."""
  return _grow_jit(table, axis, new_size, tuple(rows), src)  # numpy or jax arrays alike


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _grow_jit(table: jnp.ndarray, axis: int, new_size: int, rows: tuple[int, ...],
              src: int) -> jnp.ndarray:
  row = jnp.take(table, src, axis=axis)
  extra = new_size - table.shape[axis]
  if extra > 0:
    pad = jnp.repeat(jnp.expand_dims(row, axis), extra, axis=axis)
    table = jnp.concatenate([table, pad], axis=axis)
  if rows:
    idx = jnp.asarray(rows)
    if axis == 0:
      table = table.at[idx].set(row)
    else:
      table = table.at[:, idx].set(row[:, None])
  return table


def add_latent_tokens(tokenizer, model_cfg, params: dict, copy_from: str = "<<"):
  """Adds `<bot>`, `<latent>`, `<eot>` to the tokenizer and the model.

  Args:
    tokenizer: a HF tokenizer; the missing latent tokens are added to it in place.
    model_cfg: the `ModelConfig` of `params`.
    params: the model parameter tree (`params['embed']['embedding']` [V, H]
      and, when untied, `params['lm_head']['kernel']` [H, V]).
    copy_from: new rows start as a copy of this text's (first) token's row.
  Returns:
    (tokenizer, model_cfg, params, ids): model_cfg has the new vocab_size when
    the tables grew; spare rows (vocab_size > len(tokenizer), as Qwen
    checkpoints have) are used without growing; ids maps token -> id.
  """
  missing = [t for t in LATENT_TOKENS if t not in tokenizer.get_vocab()]
  if missing:
    tokenizer.add_tokens(missing, special_tokens=True)
  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS}
  src_ids = tokenizer.encode(copy_from, add_special_tokens=False)
  if not src_ids:
    raise ValueError(f"copy_from={copy_from!r} encodes to no token")
  src = src_ids[0]
  embedding = params["embed"]["embedding"]
  old_v = embedding.shape[0]
  if src >= old_v:
    raise ValueError(f"copy_from={copy_from!r} is token {src}, outside the model's {old_v} rows")
  new_v = max(old_v, len(tokenizer))
  rows = sorted(ids[t] for t in missing if ids[t] < old_v)  # spare rows taken by new tokens
  params = dict(params)
  params["embed"] = {**params["embed"], "embedding": _grow(embedding, 0, new_v, rows, src)}
  if not model_cfg.tie_word_embeddings:
    kernel = params["lm_head"]["kernel"]
    params["lm_head"] = {**params["lm_head"], "kernel": _grow(kernel, 1, new_v, rows, src)}
  if new_v != model_cfg.vocab_size:
    model_cfg = model_cfg.replace(vocab_size=new_v)
  return tokenizer, model_cfg, params, ids


def fit_vocab(tokenizer, model_cfg, params: dict):
  """(model_cfg, params) with the embedding / LM head grown to len(tokenizer) rows when
  the tokenizer outgrew them (e.g. an added pad token); new rows copy row 0, which a
  suppressed pad never reads from the output side."""
  old_v = params["embed"]["embedding"].shape[0]
  if len(tokenizer) <= old_v:
    return model_cfg, params
  params = dict(params)
  params["embed"] = {**params["embed"],
                     "embedding": _grow(params["embed"]["embedding"], 0, len(tokenizer), [], 0)}
  if not model_cfg.tie_word_embeddings:
    params["lm_head"] = {**params["lm_head"],
                         "kernel": _grow(params["lm_head"]["kernel"], 1, len(tokenizer), [], 0)}
  return model_cfg.replace(vocab_size=len(tokenizer)), params
