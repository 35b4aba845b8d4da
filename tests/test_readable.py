"""Readable latent thoughts (`lrjax.latent.readable`), the samples file every
evaluation writes, and `lrjax.inspect`'s transcript: each rule's description
against a NumPy re-derivation on hand-made records.
"""
import types

import jax
import numpy as np
import pytest

from lrjax import inspect as inspect_lib
from lrjax.latent import ANSWER, LATENT, RuleContext
from lrjax.methods.hrpo import init_params as hybrid_init
from lrjax.latent.readable import readable
from lrjax.model import preset
from lrjax.phases.held_out import truncate_samples, write_samples

CFG = preset("tiny")


class Tok:
  def convert_ids_to_tokens(self, i):
    return f"t{i}"


def _traj(**records):
  span = np.array([[LATENT, LATENT, ANSWER, ANSWER]], np.int8)
  return types.SimpleNamespace(span=span, ids=np.array([[5, 6, 7, 1]]), records=records)


def test_soft_mixtures_sorted_by_weight():
  ids = np.array([[[3, 9, 4], [2, 8, 1], [0, 0, 0], [0, 0, 0]]])
  z = np.array([[[0.1, 0.7, 0.2], [0.5, 0.0, 0.5], [0, 0, 0], [0, 0, 0]]], np.float32)
  ctx = RuleContext(CFG, "gumbel_soft")
  out = readable(ctx, {}, _traj(ids=ids, z=z), 0, Tok())
  assert [p["t"] for p in out] == [0, 1]
  assert out[0]["mix"] == [["t9", 0.7], ["t4", 0.2], ["t3", 0.1]]
  assert out[1]["mix"] == [["t2", 0.5], ["t1", 0.5]]  # zero weights are left out
  # Latent-GRPO: weights softmax(scores / tau) at the soft positions
  scores = np.array([[[2.0, 0.0, 1.0]] * 4], np.float32)
  soft = np.array([[True, False, False, False]])
  ctx = RuleContext(CFG, "topk_gumbel", rule_cfg={"tau": 0.5})
  out = readable(ctx, {}, _traj(ids=ids, scores=scores, soft=soft), 0, Tok())
  e = np.exp(np.array([2.0, 0.0, 1.0]) / 0.5)
  w = e / e.sum()
  assert [p["t"] for p in out] == [0]
  assert out[0]["mix"] == [["t3", round(w[0], 4)], ["t4", round(w[2], 4)], ["t9", round(w[1], 4)]]


def test_hidden_nearest_tokens_by_cosine():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(12, 8)).astype(np.float32)
  h = rng.normal(size=(1, 4, 8)).astype(np.float32)
  ctx = RuleContext(CFG, "hidden", num_latent=2)
  out = readable(ctx, {"model": {"embed": {"embedding": emb}}}, _traj(hidden=h), 0, Tok())
  assert len(out) == 2
  for t, pos in enumerate(out):
    cos = (emb @ h[0, t]) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(h[0, t]))
    best = np.argsort(-cos)[:3]
    assert [tok for tok, _ in pos["nearest"]] == [f"t{i}" for i in best]
    np.testing.assert_allclose([s for _, s in pos["nearest"]], cos[best], atol=1e-4)


def test_hybrid_token_share_is_the_mean_squared_gate():
  rule = hybrid_init(CFG, {}, jax.random.key(0))
  emb = np.random.default_rng(1).normal(size=(CFG.vocab_size, CFG.hidden_size)).astype(np.float32)
  think = np.array([[True, True, False, False]])
  ctx = RuleContext(CFG, "hybrid")
  out = readable(ctx, {"model": {"embed": {"embedding": emb}}, "rule": rule},
                 _traj(think=think), 0, Tok())
  assert [p["token"] for p in out] == ["t5", "t6"]
  for p, i in zip(out, (5, 6)):
    e = emb[i].astype(np.float64)
    r = 1 / (1 + np.exp(-(e @ np.asarray(rule["gate_r"]["kernel"]) + np.asarray(rule["gate_r"]["bias"]))))
    a = np.exp(-8.0 * np.log1p(np.exp(-np.asarray(rule["lambda"], np.float64))) * r)
    assert p["token_share"] == pytest.approx(np.mean(a * a), abs=1e-4)
  assert readable(RuleContext(CFG, "token"), {}, _traj(), 0, Tok()) == []


def test_samples_file_truncation_and_transcript(tmp_path, capsys):
  w = str(tmp_path)
  rec = {"prompt": "1+1?", "answer": "2", "reward": 1.0, "completion": "#### 2",
         "latent": [{"t": 0, "nearest": [["a", 0.9]]}, {"t": 1, "mix": [["b", 0.6], ["c", 0.4]]}]}
  for phase, step in (("sft", 0), ("rl", 0), ("rl", 10), ("rl", 20)):
    write_samples(w, phase, step, [rec])
  truncate_samples(w, "rl", 10)  # resumed at rl step 10: step 20 is written again
  samples = inspect_lib.read_samples(w)
  assert [(s["phase"], s["step"]) for s in samples] == [("sft", 0), ("rl", 0), ("rl", 10)]
  chosen = inspect_lib.pick(samples, None, -1)
  assert [(s["phase"], s["step"]) for s in chosen] == [("rl", 10)]
  text = inspect_lib.transcript(chosen, 3)
  assert "≈ 'a' (0.90)" in text and "0.60·'b' + 0.40·'c'" in text and "reward 1" in text
  with pytest.raises(ValueError, match="no samples of phase 'value'"):
    inspect_lib.pick(samples, "value", -1)
  with pytest.raises(ValueError, match="step 5"):
    inspect_lib.pick(samples, "rl", 5)
  with open(tmp_path / "samples.jsonl", "a") as f:
    f.write("{not json\n")
  with pytest.raises(ValueError, match=r"samples.jsonl:4"):
    inspect_lib.read_samples(w)
  with pytest.raises(FileNotFoundError, match="show_samples"):
    inspect_lib.read_samples(str(tmp_path / "none"))


def test_inspect_command_line(tmp_path):
  """`python -m lrjax.inspect` (its main() behind the flags): the chosen evaluation's
  transcript on stdout; a workdir without samples is one line on stderr, exit 1."""
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  w = str(tmp_path)
  for phase, step, reward in (("sft", 0, 0.0), ("rl", 0, 1.0), ("rl", 10, 0.0)):
    write_samples(w, phase, step, [{"prompt": "1+1?", "answer": "2", "reward": reward,
                                    "completion": f"#### {step}", "latent": []}] * 2)
  env = dict(os.environ, PYTHONPATH=root)

  def inspect(*args):
    return subprocess.run([sys.executable, "-m", "lrjax.inspect", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
  r = inspect(f"--workdir={w}", "--phase=rl", "--step=0", "--n=1")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count("── rl step 0 ── reward 1") == 1 and "'#### 0'" in r.stdout
  r = inspect(f"--workdir={w}")  # default: the last evaluation, 3 problems (2 written)
  assert r.returncode == 0 and r.stdout.count("── rl step 10 ──") == 2, r.stderr[-2000:]
  r = inspect(f"--workdir={tmp_path / 'none'}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines() == [
      f"lrjax.inspect: {tmp_path / 'none' / 'samples.jsonl'}: no samples (run with "
      "eval.show_samples > 0)"]
