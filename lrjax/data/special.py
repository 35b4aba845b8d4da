"""Special ids of a tokenizer as it ships: padding, every end-of-sequence id, BOS.

Checkpoints differ in what they declare:

* padding: Llama 3.x ships no pad token; Qwen2.5 pads with `<|endoftext|>`, which
  its `generation_config.json` also lists as an eos. lrjax pads with an id the
  model never emits and that never ends a row: the tokenizer's own pad when it is
  not an eos, else a reserved token already in the vocabulary
  (`<|finetune_right_pad_id|>` in Llama 3.x), else `PAD_TOKEN`, added. A reserved
  pad is *suppressed* (its logit pinned, `ModelConfig.suppress_ids`): it is never
  sampled and never a target.
* end of sequence: `tokenizer.eos_token_id` plus every id in the folder's
  `generation_config.json` and `config.json` `eos_token_id` (an int or a list);
  Qwen2.5-Instruct ends turns with `<|im_end|>` and text with `<|endoftext|>`,
  Llama-3.2-Instruct with `<|eot_id|>`, `<|eom_id|>` and `<|end_of_text|>`. Any of
  them ends a rollout row (`RuleContext.extra_eos`).
* BOS: `bos_ids(tokenizer)` is `[bos]` when the tokenizer's own `encode` adds one
  (Llama), else `[]` (Qwen, the character tokenizer); prompts start with it
  exactly once (`lrjax.data.prompts`).

`write_generation_config` stores the same ids with an export, so that
`transformers`' `generate` stops and suppresses as lrjax does.
"""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

PAD_TOKEN = "<|lrjax_pad|>"
# tokens a checkpoint reserves for padding and never trains on (suppressed when used)
RESERVED_PADS = ("<|finetune_right_pad_id|>", PAD_TOKEN)


class Special(NamedTuple):
  pad_id: int
  eos_ids: tuple[int, ...]  # the first is the tokenizer's eos
  suppress_ids: tuple[int, ...]  # the reserved pad, or ()


def _ids(value: Any) -> list[int]:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [int(v) for v in value if v is not None]
  return [int(value)]


def folder_eos_ids(folder: str) -> list[int]:
  """The `eos_token_id`(s) of `folder`'s generation_config.json and config.json."""
  out = []
  for name in ("generation_config.json", "config.json"):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      with open(path) as f:
        try:
          out += _ids(json.load(f).get("eos_token_id"))
        except (json.JSONDecodeError, ValueError, TypeError) as e:
          raise ValueError(f"{path}: unreadable eos_token_id ({e})") from e
  return out


def resolve_special(tokenizer: Any, folder: str = "") -> Special:
  """The pad, eos and suppressed ids of `tokenizer` (+ the ids `folder` declares).

  May add `PAD_TOKEN` to the tokenizer (in place) and sets `tokenizer.pad_token`
  to the chosen pad; the model's tables must then hold len(tokenizer) rows.
  """
  eos = []
  for i in _ids(tokenizer.eos_token_id) + (folder_eos_ids(folder) if folder else []):
    if i not in eos:
      eos.append(i)
  if not eos:
    raise ValueError(f"the tokenizer of {folder or 'this run'} has no eos token, and no "
                     "generation_config.json / config.json eos_token_id")
  pad = tokenizer.pad_token_id
  vocab = tokenizer.get_vocab()
  if pad is None or pad in eos:
    name = next((t for t in RESERVED_PADS if t in vocab), None)
    if name is None:
      tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
      name = PAD_TOKEN
    tokenizer.pad_token = name
    pad = tokenizer.convert_tokens_to_ids(name)
  suppress = (pad,) if tokenizer.pad_token in RESERVED_PADS else ()
  return Special(int(pad), tuple(eos), suppress)


def bos_ids(tokenizer: Any) -> list[int]:
  """[bos] when the tokenizer's `encode` adds a BOS of its own, else []."""
  bos = getattr(tokenizer, "bos_token_id", None)
  if bos is None:
    return []
  probe = tokenizer.encode("a", add_special_tokens=True)
  return [bos] if probe and probe[0] == bos else []


def write_generation_config(folder: str, special: Special, bos_id: int | None) -> None:
  """generation_config.json: every eos id, the pad, the suppressed ids."""
  cfg = {"eos_token_id": list(special.eos_ids), "pad_token_id": special.pad_id}
  if bos_id is not None:
    cfg["bos_token_id"] = bos_id
  if special.suppress_ids:
    cfg["suppress_tokens"] = list(special.suppress_ids)
  with open(os.path.join(folder, "generation_config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
