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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from tests import hf_fixtures

HRPO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The final answer is provided after the #### tag, "
    "i.e., {reasoning process} #### {answer}.")
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
LATR_SYSTEM = (
    "\nA conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. \nThe assistant first thinks about the reasoning process in the latent-space "
    "without using language.\nThen it provides the user with the reasoning in latent-space and "
    "the answer. \nThe reasoning in latent-space and answer are enclosed within "
    "<|start-latent|> <|end-latent|> and <answer> </answer> tags, respectively and the answer "
    "is boxed using \\boxed{...}.\nOutput only those two tagged blocks, in that order, nothing "
    "else.\ni.e., <|start-latent|>reasoning in latent here<|end-latent|><answer>\\boxed{...}"
    "</answer>\n")

GSM8K = [
    {"question": "Tom has 8 apples and buys 5 more. How many apples does he have?",
     "answer": "Tom has 8 + 5 = <<8+5=13>>13 apples.\n#### 13"},
    {"question": "A box holds 6 pens. How many pens are in 4 boxes?",
     "answer": "4 boxes hold 4 * 6 = <<4*6=24>>24 pens.\n#### 24"},
    {"question": "Ann reads 10 pages a day. How many pages in 3 days?",
     "answer": "She reads 10 * 3 = <<10*3=30>>30 pages.\n#### 30"},
    {"question": "There are 9 birds and 4 fly away. How many are left?",
     "answer": "9 - 4 = <<9-4=5>>5 birds are left.\n#### 5"},
]
AUG = [{"question": g["question"],
        "steps": ["<<" + g["answer"].split("<<")[1].split(">>")[0] + ">>"],
        "answer": g["answer"].rsplit("#### ", 1)[1]} for g in GSM8K]
MATH = [{"problem": "What is $2+3$?", "solution": "We add: $2+3=\\boxed{5}$.",
         "level": "Level 1", "type": "Algebra"},
        {"problem": "What is $4 \\cdot 3$?", "solution": "It is $\\boxed{12}$.",
         "level": "Level 1", "type": "Algebra"},
        {"problem": "Simplify $\\frac{6}{3}$.", "solution": "$\\frac{6}{3}=\\boxed{2}$.",
         "level": "Level 1", "type": "Algebra"},
        {"problem": "What is $7-2$?", "solution": "$7-2=\\boxed{5}$.",
         "level": "Level 1", "type": "Algebra"}]

QWEN_SYS = "<|im_start|>system\n{system}<|im_end|>\n"
QWEN_TURN = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
LLAMA_TURN = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")

# preset -> (checkpoint, task, the first prompt as text (from the first eval problem),
#            a correct answer in the preset's format, overrides beyond the common ones)
CASES = {
    "hrpo": ("qwen", "gsm8k",
             lambda q: QWEN_SYS.format(system=HRPO_SYSTEM) + QWEN_TURN.format(user=q),
             "Tom has 8 + 5 = 13 apples. #### 13", {}),
    "lepo": ("qwen", "math",
             lambda q: QWEN_SYS.format(system=BOXED) + QWEN_TURN.format(user=q + "\n" + BOXED),
             "We add the numbers. The answer is \\boxed{5}", {"rule.latent_len": 4}),
    "latent_grpo": ("llama", "gsm8k_aug",
                    lambda q: LLAMA_TURN.format(user=BOXED + "\n" + q) + "<think>",
                    "8+5=13</think>\\boxed{13}",
                    {"rl.num_prompts": 4, "rl.dynamic_sampling_tries": 1}),
    "dlr": ("llama", "gsm8k",
            lambda q: ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                       + HRPO_SYSTEM + "<|eot_id|>" + LLAMA_TURN.format(user=q)[
                           len("<|begin_of_text|>"):]),
            "8 + 5 = 13 #### 13", {"rule.num_latent": 2, "rule.assistant": "tiny-assistant"}),
    "latr": ("qwen", "gsm8k_aug", lambda q: LATR_SYSTEM + "\nUser:" + q + "\nAssistant:",
             "<answer>\\boxed{13}</answer>", {}),
    "latent_rl": ("qwen", "gsm8k_aug", lambda q: LATR_SYSTEM + "\nUser:" + q + "\nAssistant:",
                  "<answer>\\boxed{13}</answer>",
                  {"latent_rl.prompts": 4, "latent_rl.epochs": 1, "latent_rl.batch_size": 8}),
}
COMMON = {"rl.steps": 2, "rl.warmup_steps": 0, "rl.num_prompts": 2, "rl.group_size": 2, "rl.max_new": 12,
          "rl.eval_every": 2, "eval.num_problems": 2, "eval.batch_size": 4,
          "eval.num_samples": 2, "eval.pass_k": (1, 2), "eval.max_new": 12,
          "eval.show_samples": 1, "sft.steps": 1, "sft.batch_size": 2, "sft.stage_steps": (1,),
          "sft.eval_every": 2, "sft.log_every": 1, "checkpoint.every": 1000}


def _write_parquet(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The two checkpoint folders and the data files in Hub layouts."""
  root = tmp_path_factory.mktemp("real")
  for split, rows in (("train", GSM8K), ("test", GSM8K[:2])):
    _write_parquet(str(root / "gsm8k" / "main" / f"{split}-00000-of-00001.parquet"), rows)
  for split, rows in (("train", AUG), ("test", AUG[:2])):
    _write_parquet(str(root / "gsm8k_aug" / "data" / f"{split}-00000-of-00001.parquet"), rows)
  for split, rows in (("train", MATH), ("test", MATH[:2])):
    _write_parquet(str(root / "math" / "algebra" / f"{split}-00000-of-00001.parquet"), rows)
  paths = {"gsm8k": str(root / "gsm8k" / "main"), "gsm8k_aug": str(root / "gsm8k_aug" / "data"),
           "math": f"train={root}/math/*/train-*.parquet,test={root}/math/*/test-*.parquet"}
  corpus = [HRPO_SYSTEM, BOXED, LATR_SYSTEM] + [json.dumps(r) for r in GSM8K + AUG + MATH]
  folders = {k: hf_fixtures.real_checkpoint(k, str(root / k), corpus) for k in ("qwen", "llama")}
  return {"paths": paths, "folders": folders, "root": root}


def _config(method, world):
  import importlib
  kind, task, _, _, extra = CASES[method]
  c = importlib.import_module(f"configs.{method}").get_config("paper")
  assert c.data.task == task
  c.init = world["folders"][kind]
  c.data.path = world["paths"][task]
  for key, value in {**COMMON, **extra}.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _spy_rollouts(monkeypatch):
  """Records every rollout's (ids, sampled) as it is made."""
  from lrjax.phases import held_out, rl_step
  seen = []

  def wrap(fn):
    def rollout(ctx, params, ids, mask, key, aux=None):
      traj = fn(ctx, params, ids, mask, key, aux)
      seen.append((ctx.pad_id, np.asarray(traj.ids), np.asarray(traj.sampled)))
      return traj
    return rollout
  for module in (held_out, rl_step):
    monkeypatch.setattr(module, "rollout", wrap(module.rollout))
  return seen


def _lrjax_greedy(folder, prompt_ids, max_new):
  """lrjax's greedy token rollout of the exported folder (float32)."""
  from lrjax.data import special as special_lib, tokenizer as tok_lib
  from lrjax.latent import RuleContext
  from lrjax.model import load_hf
  from lrjax.rollout import rollout
  from lrjax.sampling import Sampling
  cfg, params = load_hf(folder, dtype="float32")
  ids = special_lib.resolve_special(tok_lib.load_tokenizer(folder), folder)
  cfg = cfg.replace(suppress_ids=ids.suppress_ids)
  ctx = RuleContext(model_cfg=cfg, rule="token", sampling=Sampling(greedy=True),
                    eos_id=ids.eos_ids[0], extra_eos=ids.eos_ids[1:], pad_id=ids.pad_id,
                    max_new=max_new)
  traj = rollout(ctx, {"model": params, "rule": {}, "heads": {}},
                 jnp.asarray([prompt_ids], jnp.int32), jnp.ones((1, len(prompt_ids)), jnp.int32),
                 jax.random.key(0))
  n = int(traj.lengths[0])
  return [int(t) for t in np.asarray(traj.ids)[0, :n]], ids


@pytest.mark.parametrize("method", list(CASES))
def test_paper_preset_runs_on_a_real_checkpoint(method, world, tmp_path, monkeypatch):
  from lrjax.phases.pipeline import prepare, run_phases
  from lrjax.rewards import REWARDS
  kind, _, prompt_text, answer_text, _ = CASES[method]
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
