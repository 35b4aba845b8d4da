"""The span probe (`--config.mode=span_probe`, lrjax.phases.span_probe): prompts, decoding,
metrics, and the phase end to end."""
import jax
import numpy as np
import pytest

from lrjax.data import DEFAULT_ALPHABET, build_char_tokenizer
from lrjax.data.tasks import Problem, prompt_text
from lrjax.latent import RuleContext
from lrjax.model import init, logits, preset
from lrjax.phases.span_probe import (FILLS, completions, other_answers, span_metrics,
                                     span_prompts)
from lrjax.rewards import hash_exact
from lrjax.rollout import Sampling, encode_prompts

PROBLEMS = [Problem("a=1+2,a?", ("<<1+2=3>>",), "3"), Problem("a=9+9,a?", ("<<9+9=18>>",), "18"),
            Problem("a=1+2,b=a+0,b?", ("<<1+2=3>>", "<<3+0=3>>"), "3"),
            Problem("a=99*9,a?", ("<<99*9=891>>",), "891")]


def _tok():
  tok = build_char_tokenizer(DEFAULT_ALPHABET)
  tok.add_tokens(["<bot>", "<latent>", "<eot>"], special_tokens=True)
  ids = dict(zip(("bot_id", "latent_id", "eot_id"),
                 tok.convert_tokens_to_ids(["<bot>", "<latent>", "<eot>"])))
  return tok, ids


def test_other_answers_skip_equal_ones_and_span_prompts_hold_the_fill():
  assert other_answers(PROBLEMS) == ["18", "3", "891", "3"]
  assert other_answers(PROBLEMS[:1] * 3) == ["3"] * 3  # nothing else to take
  tok, ids = _tok()
  enc = lambda s: tok.encode(s, add_special_tokens=False)
  got = span_prompts(tok, encode_prompts(tok, PROBLEMS[1:]), ["18", "3", "891"], 2, ids)
  bot, lat, eot = ids["bot_id"], ids["latent_id"], ids["eot_id"]
  assert got[0] == enc(prompt_text(PROBLEMS[1])) + [bot] + enc("18") + [eot]
  assert got[1] == enc(prompt_text(PROBLEMS[2])) + [bot] + enc("3") + [lat] + [eot]
  assert got[2] == enc(prompt_text(PROBLEMS[3])) + [bot] + enc("89") + [eot]  # first T tokens
  assert span_prompts(tok, encode_prompts(tok, PROBLEMS), None, 2, ids) == [
      enc(prompt_text(p)) for p in PROBLEMS]


def test_completions_equal_a_full_forward_greedy_loop():
  """The probe's batched, cached rollout decodes each span prompt like argmax over a full
  forward of the growing sequence (an independent reference), one batch padded by repetition."""
  tok, ids = _tok()
  cfg = preset("tiny", vocab_size=len(tok))
  params = init(cfg, jax.random.key(3))
  max_new = 6
  ctx = RuleContext(cfg, "token", sampling=Sampling(greedy=True), eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id, max_new=max_new)
  step = jax.jit(lambda ids, mask, col: logits(cfg, params, ids, mask)[:, col].argmax(-1))
  for fill in (None, other_answers(PROBLEMS)):
    prompts = span_prompts(tok, encode_prompts(tok, PROBLEMS), fill, 3, ids)
    got = completions(ctx, {"model": params, "rule": {}, "heads": {}}, tok, prompts,
                      jax.random.key(0), batch_size=3)
    width = 24  # every prompt left-padded to end at column width - 1; causal: the
    seq = np.zeros((len(prompts), width + max_new), np.int32)  # columns right of it are unread
    mask = np.zeros_like(seq)
    for i, p in enumerate(prompts):
      seq[i, width - len(p):width], mask[i, width - len(p):width] = p, 1
    for t in range(max_new):
      seq[:, width + t] = np.asarray(step(seq, mask, width - 1 + t))
      mask[:, width + t] = 1
    for i, text in enumerate(got):
      new = seq[i, width:].tolist()
      want = tok.decode(new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new)
      assert text == want, (fill, i)


def test_span_metrics_count_accuracy_gain_and_copies():
  answers, others = ["3", "18", "3", "891"], other_answers(PROBLEMS)
  texts = {"none": ["#### 3", "#### 18", "#### 4", "#### 1"],
           "answer": ["#### 3", "#### 18", "#### 3", "#### 891"],
           "other": ["#### 18", "#### 3", "#### 3", "#### 2"]}  # two copies, one still right
  m = span_metrics(texts, answers, others, hash_exact)
  assert set(m) == {f"probe/accuracy_{f}" for f in FILLS} | {"probe/answer_gain",
                                                               "probe/copies_other"}
  assert m["probe/accuracy_none"] == 0.5 and m["probe/accuracy_answer"] == 1.0
  assert m["probe/accuracy_other"] == 0.25 and m["probe/copies_other"] == 0.5
  assert m["probe/answer_gain"] == pytest.approx(0.75)


def test_the_phase_refuses_a_model_without_span_tokens_or_span_length():
  """(The phase's metrics on a trained pair: tests/test_dlr.py's short run.)"""
  from types import SimpleNamespace
  from configs import dlr as dlr_config
  from lrjax.config_utils import ConfigError
  from lrjax.phases import PHASES
  from lrjax.phases.span_probe import run_span_probe
  from lrjax.validate import validate_config
  c = dlr_config.get_config()
  c.unlock()
  c.mode = "span_probe"
  with pytest.raises(ConfigError, match="config.init must name .* for mode=span_probe"):
    validate_config(c, PHASES)  # probing a fresh model says nothing
  _, ids = _tok()
  run = lambda special, t: SimpleNamespace(config=SimpleNamespace(init="runs/x"),
                                           special=special, num_latent=lambda: t)
  with pytest.raises(ConfigError, match="num_latent >= 1"):
    run_span_probe(run(ids, 0))
  with pytest.raises(ConfigError, match="<bot>/<latent>/<eot> tokens; the tokenizer of runs/x"):
    run_span_probe(run({"eos_id": 1, "pad_id": 0}, 2))  # a plain model's tokenizer
