"""The data and settings of a `:paper` preset rehearsal (tests/test_real_checkpoints.py
at reduced width and depth, benchmarks/rehearse.py at the preset's own): GSM8K, GSM8K-Aug
and MATH parquet files in their Hub layouts, the checkpoint folders, and the batch / length
overrides that keep a run short.
"""
from __future__ import annotations

import json
import os

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


# method -> (checkpoint layout, task, overrides a short run of it needs beyond `short()`)
METHODS = {
    "hrpo": ("qwen", "gsm8k", {}),
    "lepo": ("qwen", "math", {"lepo.latent_len": 4}),
    "latent_grpo": ("llama", "gsm8k_aug", {"rl.dynamic_sampling_tries": 1}),
    "dlr": ("llama", "gsm8k", {"rule.num_latent": 2}),
    "latr": ("qwen", "gsm8k_aug", {}),
    "latent_rl": ("qwen", "gsm8k_aug", {"latent_rl.prompts": 4, "latent_rl.epochs": 1,
                                        "latent_rl.batch_size": 8}),
}


def short(prompts: int = 2, samples: int = 2, max_new: int = 12, steps: int = 2) -> dict:
  """Overrides for a short run: `steps` RL steps of `prompts` x `samples` rollouts of
  `max_new` positions, one evaluation at the end on 2 problems, one SFT step."""
  return {"rl.steps": steps, "rl.warmup_steps": 0, "rl.num_prompts": prompts,
          "rl.group_size": samples, "rl.max_new": max_new, "rl.eval_every": steps,
          "eval.num_problems": 2, "eval.batch_size": 4, "eval.num_samples": 2,
          "eval.pass_k": (1, 2), "eval.max_new": max_new, "eval.show_samples": 1,
          "sft.steps": 1, "sft.batch_size": 2, "sft.stage_steps": (1,), "sft.eval_every": 2,
          "sft.log_every": 1, "checkpoint.every": 1000}


def override(config, fields: dict):
  """Sets dotted `fields` ("rl.steps": 2) on a ConfigDict in place; returns it."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def write_data(root: str) -> dict:
  """The three tasks' files under `root`; -> {task: the `data.path` that reads them}."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
  for name, rows in (("gsm8k/main", GSM8K), ("gsm8k_aug/data", AUG), ("math/algebra", MATH)):
    for split, part in (("train", rows), ("test", rows[:2])):
      write(os.path.join(root, name, f"{split}-00000-of-00001.parquet"), part)
  return {"gsm8k": os.path.join(root, "gsm8k", "main"),
          "gsm8k_aug": os.path.join(root, "gsm8k_aug", "data"),
          "math": f"train={root}/math/*/train-*.parquet,test={root}/math/*/test-*.parquet"}


def corpus() -> list[str]:
  """Texts the byte-level BPE is trained on (the prompts and the data)."""
  return [HRPO_SYSTEM, BOXED, LATR_SYSTEM] + [json.dumps(r) for r in GSM8K + AUG + MATH]
