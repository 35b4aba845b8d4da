"""Every `:paper` preset on the checkpoints users bring, in-process.

Two HF folders written by transformers (random weights, the real vocabulary size,
head counts and rope settings, width and depth reduced): a Qwen2.5-Instruct-style one
(pad `<|endoftext|>`, which is also an eos; the real template's default system prompt)
and a Llama-3.2-Instruct-style one (no pad token, BOS from the tokenizer, three eos ids,
`<think>`/`</think>`); GSM8K, GSM8K-Aug and MATH files in their Hub layouts. Each preset
runs its phases with batch / length overrides only (and DLR's 0.5B assistant replaced
by `tiny-assistant`, Latent-GRPO's dynamic sampling capped at 1 round). Checked: the
first prompt's exact ids, that no pad id is ever sampled, that the preset's reward
accepts a hand-written correct answer in its format, and that the export loads in
transformers and generates lrjax's greedy tokens.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lrjax.testing import checkpoints, rehearsal
from lrjax.testing.rehearsal import BOXED, HRPO_SYSTEM, LATR_SYSTEM

QWEN_SYS = "<|im_start|>system\n{system}<|im_end|>\n"
QWEN_TURN = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
LLAMA_TURN = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")

# preset -> (the first prompt as text (from the first eval problem), a correct answer in the
#            preset's format); the checkpoint layout, task and short-run overrides are
#            `rehearsal.METHODS`'
CASES = {
    "hrpo": (lambda q: QWEN_SYS.format(system=HRPO_SYSTEM) + QWEN_TURN.format(user=q),
             "Tom has 8 + 5 = 13 apples. #### 13"),
    "lepo": (lambda q: QWEN_SYS.format(system=BOXED) + QWEN_TURN.format(user=q + "\n" + BOXED),
             "We add the numbers. The answer is \\boxed{5}"),
    "latent_grpo": (lambda q: LLAMA_TURN.format(user=BOXED + "\n" + q) + "<think>",
                    "8+5=13</think>\\boxed{13}"),
    "dlr": (lambda q: ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                       + HRPO_SYSTEM + "<|eot_id|>" + LLAMA_TURN.format(user=q)[
                           len("<|begin_of_text|>"):]),
            "8 + 5 = 13 #### 13"),
    "latr": (lambda q: LATR_SYSTEM + "\nUser:" + q + "\nAssistant:",
             "<answer>\\boxed{13}</answer>"),
    "latent_rl": (lambda q: LATR_SYSTEM + "\nUser:" + q + "\nAssistant:",
                  "<answer>\\boxed{13}</answer>"),
}
# beyond rehearsal.short(): Latent-GRPO's 4 mini-batch updates need 4 prompts, DLR's 0.5B
# assistant is replaced by a tiny one, and no preset's accumulation (rl.microbatch, set for
# its paper's batch) applies to these 4-row batches
EXTRA = {"latent_grpo": {"rl.num_prompts": 4}, "dlr": {"dlr.assistant": "tiny-assistant"}}
COMMON = {**rehearsal.short(prompts=2, samples=2, max_new=12, steps=2), "rl.microbatch": 0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The two checkpoint folders and the data files in Hub layouts."""
  root = tmp_path_factory.mktemp("real")
  paths = rehearsal.write_data(str(root))
  corpus = rehearsal.corpus()
  folders = {k: checkpoints.real_checkpoint(k, str(root / k), corpus) for k in ("qwen", "llama")}
  return {"paths": paths, "folders": folders, "root": root}


def _config(method, world):
  import importlib
  kind, task, extra = rehearsal.METHODS[method]
  c = importlib.import_module(f"configs.{method}").get_config("paper")
  assert c.data.task == task
  c.init = world["folders"][kind]
  c.data.path = world["paths"][task]
  return rehearsal.override(c, {**COMMON, **extra, **EXTRA.get(method, {})})


# The phases' rollouts compiled at XLA's backend optimisation level 1, the suite's other
# programs at its fast options (level 0, tests/conftest.py): unvectorised, the sampling
# passes over a 128k vocabulary (top-k / top-p bisection, Gumbel noise) cost ~60 ms per
# token for 4 rows, ~12 ms at level 1; measured over this file, ~12 s less CPU in all.
# (No options under LRJAX_TEST_XLA=default.)
ROLLOUT_OPTIONS = ({} if os.environ.get("LRJAX_TEST_XLA", "fast") == "default" else
                   {"xla_backend_optimization_level": 1})


def _spy_rollouts(monkeypatch):
  """Records every rollout's (ids, sampled) as it is made (`ROLLOUT_OPTIONS`)."""
  from lrjax.phases import held_out, rl_step
  from lrjax.rollout import engine
  compiled = jax.jit(engine.rollout.__wrapped__, static_argnums=0,
                     compiler_options=ROLLOUT_OPTIONS)
  seen = []

  def rollout(ctx, params, ids, mask, key, aux=None, knobs=None):
    traj = compiled(ctx, params, ids, mask, key, aux, knobs)
    seen.append((ctx.pad_id, np.asarray(traj.ids), np.asarray(traj.sampled)))
    return traj
  for module in (held_out, rl_step):
    assert module.rollout is engine.rollout
    monkeypatch.setattr(module, "rollout", rollout)
  return seen


def _lrjax_greedy(folder, prompt_ids, max_new):
  """lrjax's greedy token rollout of the exported folder (float32), the prompt left-padded
  to the largest prompt bucket: presets whose exports share a layout (vocabulary, special
  ids) share the compiled rollout."""
  from lrjax.data import special as special_lib, tokenizer as tok_lib
  from lrjax.latent import RuleContext
  from lrjax.model import load_hf
  from lrjax.rollout import PROMPT_BUCKETS, bucket_length, pad_prompts, rollout
  from lrjax.sampling import Sampling
  cfg, params = load_hf(folder, dtype="float32")
  ids = special_lib.resolve_special(tok_lib.load_tokenizer(folder), folder)
  cfg = cfg.replace(suppress_ids=ids.suppress_ids)
  ctx = RuleContext(model_cfg=cfg, rule="token", sampling=Sampling(greedy=True),
                    eos_id=ids.eos_ids[0], extra_eos=ids.eos_ids[1:], pad_id=ids.pad_id,
                    max_new=max_new)
  padded, mask = pad_prompts([prompt_ids],
                             bucket_length(len(prompt_ids), PROMPT_BUCKETS[-1:]), ids.pad_id)
  traj = rollout(ctx, {"model": params, "rule": {}, "heads": {}}, jnp.asarray(padded),
                 jnp.asarray(mask), jax.random.key(0))
  n = int(traj.lengths[0])
  return [int(t) for t in np.asarray(traj.ids)[0, :n]], ids


@pytest.mark.parametrize("method", list(CASES))
def test_paper_preset_runs_on_a_real_checkpoint(method, world, tmp_path, monkeypatch):
  from lrjax.phases.pipeline import prepare, run_phases
  from lrjax.rewards import REWARDS
  kind = rehearsal.METHODS[method][0]
  prompt_text, answer_text = CASES[method]
  config = _config(method, world)
  seen = _spy_rollouts(monkeypatch)
  # one CPU device: the suite's 8 fake devices on 2 cores make these rollouts ~5x slower
  from lrjax import parallel
  make_mesh = parallel.make_mesh
  monkeypatch.setattr(parallel, "make_mesh",
                      lambda cfg=None, devices=None: make_mesh(cfg, jax.devices()[:1]))
  run, phases = prepare(config, str(tmp_path / method))
  tok = run.tokenizer
  # the first prompt, id for id, against the hand-written template text
  question = run.task.eval[0].question
  want = tok.encode(prompt_text(question.strip()), add_special_tokens=False)
  got = run.prompter.ids(question)
  assert got == want, (tok.decode(got), tok.decode(want))
  if kind == "llama":
    assert got.count(128000) == 1 and got[0] == 128000  # BOS exactly once
    assert run.special["pad_id"] == 128004  # <|finetune_right_pad_id|>
    assert set(run.special["eos_ids"]) == {128001, 128008, 128009}
  else:
    assert "You are Qwen" not in tok.decode(got)  # no default system prompt slipped in
    assert set(run.special["eos_ids"]) >= {151643, 151645}
    assert run.special["pad_id"] not in run.special["eos_ids"]
  assert run.model_cfg.suppress_ids == (run.special["pad_id"],)
  # the preset's reward reads an answer written in its format
  answer = run.task.eval[0].answer
  assert REWARDS.get(config.rl.reward)(answer_text, answer) == 1.0
  assert REWARDS.get(config.rl.reward)(answer_text.replace(answer, answer + "1"), answer) == 0.0
  run_phases(run, phases)
  assert seen, "no rollout ran"
  for pad, ids, sampled in seen:
    assert not np.any((ids == pad) & sampled), "the pad id was sampled"
  # samples.jsonl (what `python -m lrjax.inspect` prints) shows the templated prompt
  with open(os.path.join(str(tmp_path / method), "samples.jsonl")) as f:
    first = json.loads(f.readline())
  assert first["prompt"].startswith(prompt_text(question.strip()))
  # the export loads in transformers and generates lrjax's greedy tokens
  export = os.path.join(str(tmp_path / method), phases[-1], "export")
  hf_tok = transformers.AutoTokenizer.from_pretrained(export)
  prompt = run.prompter.ids(question)
  assert hf_tok.pad_token_id == run.special["pad_id"]
  ours, ids = _lrjax_greedy(export, prompt, max_new=8)
  model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                          dtype=torch.long),
                         max_new_tokens=8, do_sample=False)
  theirs = out[0, len(prompt):].tolist()
  assert list(model.generation_config.eos_token_id) == list(ids.eos_ids)
  assert theirs[:len(ours)] == ours
