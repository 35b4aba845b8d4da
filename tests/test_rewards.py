"""Rewards: the HRPO '####' rule, \\boxed{} with math_verify, the format reward, robustness."""
import hypothesis
import hypothesis.strategies as st
import pytest

from lrjax import rewards
from lrjax.rewards import (REWARDS, answers_match, boxed_math, extract_boxed, extract_hash_answer,
                           format_hash, hash_exact)


def test_registry():
  assert {"hash_exact", "boxed_math", "format_hash"} <= set(REWARDS.names())
  assert REWARDS.get("hash_exact") is hash_exact


@pytest.mark.parametrize("completion,answer,expected", [
    ("<<7+5=12>> #### 12", "12", 1.0),
    ("#### 12<eos>", "12", 1.0),
    ("#### 12 <eos><pad><pad>", "12", 1.0),
    ("#### 12<|im_end|><|endoftext|>", "12", 1.0),
    ("  ####\n 12 \n", "12", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("#### $18", "18", 1.0),
    ("#### 18.00", "18", 1.0),
    ("#### 18.0", "18", 1.0),
    ("#### 18.", "18", 1.0),
    ("#### 0.50", ".5", 1.0),
    ("#### 12", "13", 0.0),
    ("#### 120", "12", 0.0),
    ("#### 1.5", "15", 0.0),
    ("12", "12", 0.0),  # no delimiter
    ("#### 12 #### 12", "12", 0.0),  # twice
    ("########", "", 0.0),
    ("#### ", "12", 0.0),
    ("#### 12 apples", "12", 0.0),
    ("#### e", "e", 1.0),  # prosqa answers are words
    ("#### E", "e", 1.0),
    ("#### f", "e", 0.0),
    ("#### " + "9" * 5000, "9" * 5000, 1.0),
    ("#### " + "9" * 5000, "9" * 4999, 0.0),
])
def test_hash_exact(completion, answer, expected):
  assert hash_exact(completion, answer) == expected


def test_format_hash():
  assert format_hash("<<1+1=2>> #### 2", "7") == 1.0  # format only, not correctness
  assert format_hash("#### x<eos>", "") == 1.0
  assert format_hash("#### <eos>", "2") == 0.0
  assert format_hash("no answer", "2") == 0.0
  assert format_hash("#### 2 #### 2", "2") == 0.0


def test_extractors():
  assert extract_hash_answer("a #### b #### c<eos>") == "c"
  assert extract_hash_answer("none") is None
  assert extract_boxed(r"so \boxed{\frac{1}{2}} and") == r"\frac{1}{2}"
  assert extract_boxed(r"\boxed{1} then \boxed{{a}+\{b\}}") == r"{a}+\{b\}"
  assert extract_boxed(r"\boxed{2} then \boxed{3") == "2"  # the last *complete* one
  assert extract_boxed(r"\fbox{7}") == "7"
  assert extract_boxed(r"answer: \boxed 5$") == "5"
  assert extract_boxed("no box {}") is None
  assert extract_boxed(r"\boxed{") is None


@pytest.mark.parametrize("completion,answer,expected", [
    (r"The answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", 1.0),
    (r"$\boxed{0.5}$", r"\frac{1}{2}", 1.0),  # math_verify: numeric equivalence
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", 1.0),
    (r"\boxed{x^2+2x}", r"2x+x^2", 1.0),
    (r"\boxed{3}", "4", 0.0),
    (r"\boxed{\text{(B)}}", r"\text{(B)}", 1.0),
    (r"so \boxed{1} no wait \boxed{2}", "2", 1.0),
    (r"so \boxed{2} no wait \boxed{1}", "2", 0.0),
    ("#### 12", "12", 1.0),  # no \boxed: the '####' answer
    ("nothing", "12", 0.0),
    (r"\boxed{9^{9^{9^{9}}}}", "1", 0.0),  # sympy would not finish: the timeout guard
])
def test_boxed_math(completion, answer, expected, monkeypatch):
  monkeypatch.setattr(rewards, "MATH_VERIFY_TIMEOUT_S", 1)
  assert boxed_math(completion, answer) == expected


def test_answers_match_numbers_exactly():
  assert answers_match("1" + "0" * 400, "1" + "0" * 400)
  assert not answers_match("1" + "0" * 400, "1" + "0" * 399 + "1")  # floats would say equal
  assert not answers_match("", "")


_FRAGMENTS = st.sampled_from([
    "####", "#", " ", "\n", "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\frac{", "$", ",",
    ".", "-", "<eos>", "<pad>", "<|endoftext|>", "9" * 400, "1e999", "nan", "inf", "^{",
    "\\text{", "\\sqrt", "x", "=", "0.00", "\x00", "\ud7ff", "😀", "\\", "\\\\"])
_TEXTS = st.one_of(st.text(max_size=200), st.lists(_FRAGMENTS, max_size=40).map("".join))


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(completion=_TEXTS, answer=_TEXTS)
def test_rewards_never_raise_and_are_bounded(completion, answer):
  for name in REWARDS.names():
    r = REWARDS.get(name)(completion, answer)
    assert isinstance(r, float) and 0.0 <= r <= 1.0, (name, r)
  extract_boxed(completion)
  extract_hash_answer(completion)


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(body=st.text(alphabet=st.characters(blacklist_characters="#"), max_size=60),
                  n=st.integers(-10**30, 10**30))
def test_hash_exact_accepts_every_correct_single_delimiter(body, n):
  assert hash_exact(f"{body} #### {n}<eos>", str(n)) == 1.0
  assert hash_exact(f"{body} #### {n + 1}", str(n)) == 0.0
  assert hash_exact(f"{body} #### {n} #### {n}", str(n)) == 0.0
