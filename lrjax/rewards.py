"""Answer extraction and verification: the reward functions of every task.

Each reward is `fn(completion: str, answer: str) -> float` in [0, 1] and never
raises, whatever the model wrote:

    REWARDS.get("hash_exact")("<<7+5=12>> #### 12<eos>", "12")   # 1.0

- `hash_exact` — HRPO's rule (Yue et al. 2025): 1 iff '####' occurs exactly
  once and the text after it equals the answer (numerically, or as normalised
  text).
- `boxed_math` — MATH: the last \\boxed{...} (else the text after the last
  '####') checked against the answer with `math_verify`, falling back to
  normalised string equality.
- `format_hash` — 1 iff '####' occurs exactly once and is followed by a
  non-empty answer.
"""
from __future__ import annotations

import decimal
import re
import threading
from typing import Callable

from lrjax.registry import Registry

REWARDS: Registry[Callable[[str, str], float]] = Registry("reward")

DELIMITER = "####"
# End-of-text / padding markers stripped from the end of a completion.
EOS_STRINGS = ("<eos>", "<pad>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>",
               "<|end_of_text|>", "</s>")
MATH_VERIFY_TIMEOUT_S = 2  # per math_verify parse / verify call (main thread only)
MAX_VERIFY_CHARS = 1000  # longer answers skip math_verify (string equality only)

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$]+)")
_TEXT_WRAP = re.compile(r"^\\text\{(.*)\}$", re.S)


def strip_eos(text: str) -> str:
  """`text` without surrounding whitespace and trailing eos / pad markers."""
  text = text.strip()
  changed = True
  while changed:
    changed = False
    for eos in EOS_STRINGS:
      if text.endswith(eos):
        text = text[:-len(eos)].rstrip()
        changed = True
  return text


def extract_hash_answer(text: str) -> str | None:
  """The text after the last '####' (whitespace and eos markers stripped); None if absent."""
  if DELIMITER not in text:
    return None
  return strip_eos(text.rsplit(DELIMITER, 1)[1])


def extract_boxed(text: str) -> str | None:
  """The content of the last complete \\boxed{...} (nested braces allowed), or None.

  `\\fbox{...}` counts too, and so does the brace-less `\\boxed 5`.
  """
  # One pass pairs every '{' with its '}' (unbalanced ones stay unpaired).
  close_of: dict[int, int] = {}
  stack: list[int] = []
  for i, ch in enumerate(text):
    if ch == "{":
      stack.append(i)
    elif ch == "}" and stack:
      close_of[stack.pop()] = i
  best: tuple[int, str] | None = None
  for m in _BOXED.finditer(text):
    brace = m.end() - 1
    if brace in close_of:
      best = (m.start(), text[brace + 1:close_of[brace]])
  for m in _BOXED_BARE.finditer(text):
    if best is None or m.start() > best[0]:
      best = (m.start(), m.group(1))
  return None if best is None else best[1].strip()


def normalize_answer(text: str) -> str:
  """Canonical form for string comparison: no spaces, commas, '$', \\text{}, trailing '.';
  numbers lose a zero fractional part ('12.00' -> '12'); lower case."""
  s = strip_eos(text)
  m = _TEXT_WRAP.match(s)
  if m:
    s = m.group(1)
  s = s.replace(",", "").replace("$", "").replace(" ", "").rstrip(".").lower()
  if _NUMBER.fullmatch(s) and "." in s:
    s = s.rstrip("0").rstrip(".") or "0"
  return s


def answers_match(pred: str, gold: str) -> bool:
  """Numeric equality when both are plain numbers, else normalised string equality."""
  p, g = normalize_answer(pred), normalize_answer(gold)
  if not p:
    return False
  if _NUMBER.fullmatch(p) and _NUMBER.fullmatch(g):
    try:
      return decimal.Decimal(p) == decimal.Decimal(g)  # exact, no float overflow
    except (decimal.InvalidOperation, ValueError):
      return False
  return p == g


@REWARDS.register("hash_exact")
def hash_exact(completion: str, answer: str) -> float:
  """1.0 iff '####' occurs exactly once and the text after it equals `answer`."""
  try:
    if completion.count(DELIMITER) != 1:
      return 0.0
    pred = extract_hash_answer(completion)
    return float(pred is not None and answers_match(pred, answer))
  except Exception:  # noqa: BLE001 - a reward never raises
    return 0.0


@REWARDS.register("format_hash")
def format_hash(completion: str, answer: str) -> float:
  """1.0 iff '####' occurs exactly once and is followed by a non-empty answer."""
  del answer
  try:
    return float(completion.count(DELIMITER) == 1 and bool(extract_hash_answer(completion)))
  except Exception:  # noqa: BLE001
    return 0.0


def _math_verify_equal(pred: str, gold: str) -> bool:
  """math_verify's verdict; False on any error or timeout.

  math_verify times out with signal.alarm, which only works in the main
  thread; elsewhere the timeout is off, so the length guard (MAX_VERIFY_CHARS)
  is the only protection there.
  """
  if len(pred) > MAX_VERIFY_CHARS or len(gold) > MAX_VERIFY_CHARS:
    return False
  try:
    import math_verify  # noqa: PLC0415 - slow import, only MATH needs it
    timeout = (MATH_VERIFY_TIMEOUT_S
               if threading.current_thread() is threading.main_thread() else None)
    g = math_verify.parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
    p = math_verify.parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
    if not g or not p:
      return False
    return bool(math_verify.verify(g, p, timeout_seconds=timeout))
  except Exception:  # noqa: BLE001 - math_verify and sympy raise many kinds
    return False


@REWARDS.register("boxed_math")
def boxed_math(completion: str, answer: str) -> float:
  """1.0 iff the last \\boxed{} (else the '####' answer) equals `answer` (math_verify,
  then normalised string equality)."""
  try:
    pred = extract_boxed(completion)
    if pred is None:
      pred = extract_hash_answer(completion)
    if not pred:
      return 0.0
    gold = extract_boxed(answer) or answer
    return float(answers_match(pred, gold) or _math_verify_equal(pred, gold))
  except Exception:  # noqa: BLE001
    return 0.0
