r"""Tasks: a `Problem` type, the task registry, the data config and text formats.

A task is a function `(data_cfg) -> TaskData` registered in `TASKS`:

    @TASKS.register("arith")
    def arith(data_cfg): ...

    data = load_task(config.data)   # TaskData(train, eval, reward)

Every task renders through the same four helpers, so SFT, RL, rewards and
evaluation agree on one format (HRPO's / GSM8K's `#### answer`):

    prompt_text(p)  'a=7+5,b=a*3,b?\n'          what the model is conditioned on
    cot_text(p)     '<<7+5=12>> <<12*3=36>> #### 36'   the response (no eos)
    nocot_text(p)   '#### 36'
    answer_text(p)  '36'
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, NamedTuple

import ml_collections

from lrjax.registry import Registry

ANSWER_DELIMITER = "####"
STEP_SEPARATOR = " "  # between reasoning steps in `cot_text`
PROMPT_SUFFIX = "\n"  # ends the prompt: the response starts on the next character

# Modules whose import registers tasks (imported lazily by `load_task`).
_TASK_MODULES = ("lrjax.data.synthetic", "lrjax.data.hf_datasets")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One example: the question, its reasoning steps as text, the canonical answer."""
  question: str
  steps: tuple[str, ...]
  answer: str


class QA(NamedTuple):
  """What the RL phase reads of a problem: its question and final answer, never the
  worked solution (RL learns from answers alone)."""
  question: str
  answer: str


class TaskData(NamedTuple):
  """A task's train and eval problems and the name of its default reward."""
  train: list[Problem]
  eval: list[Problem]
  reward: str  # a name in lrjax.rewards.REWARDS


TASKS: Registry[Callable[[ml_collections.ConfigDict], TaskData]] = Registry("task")


def default_data_config() -> ml_collections.ConfigDict:
  """Every field any task reads (embedded in run configs as `config.data`)."""
  c = ml_collections.ConfigDict()
  c.task = "arith"  # a name in TASKS: arith, prosqa, gsm8k, gsm8k_aug, math
  c.seed = 1234  # the split seed: fixes the synthetic train/eval sets, independent of the run seed
  c.train_size = 50_000  # synthetic tasks: number of train problems (~2-4 s to generate)
  c.eval_size = 1000  # synthetic tasks: number of eval problems
  # Worked solutions the SFT phase may read: the first sft_size train problems (0 = all).
  # The RL phase draws from the whole train split, questions and answers only.
  c.sft_size = 0
  # File / Hub tasks (gsm8k, gsm8k_aug, math):
  c.path = ""  # '' = load from the Hub; else local file(s), see lrjax/data/hf_datasets.py
  c.hub_name = ""  # '' = the task's default dataset id (e.g. openai/gsm8k)
  c.hub_config = ""  # '' = the task's default config (gsm8k: 'main'; math: all subjects)
  c.split_train = "train"
  c.split_eval = "test"
  c.limit = 0  # keep at most this many train and eval records (0 = all); for smoke runs
  # The prompt format (a name in lrjax.data.prompts.PROMPTS: the system prompt, user turn,
  # answer layout) and whether the checkpoint's chat template is applied ('auto') or not
  # ('none', raw text); docs/prompts.md.
  c.prompt = "raw"
  c.chat_template = "none"

  c.arith = ml_collections.ConfigDict()
  c.arith.min_steps = 3  # number of operations per problem, inclusive range
  c.arith.max_steps = 4
  c.arith.max_operand = 20  # literals are drawn from 1..max_operand
  c.arith.max_value = 999  # every intermediate result lies in 0..max_value
  c.arith.ops = "+-*"  # any of '+-*/' ('/' only where it divides exactly)
  c.arith.back_ref_prob = 0.3  # P(a step's second operand is an earlier result, not a literal)
  c.arith.swap_prob = 0.5  # P(the operands of a step are written in the other order)

  c.prosqa = ml_collections.ConfigDict()
  c.prosqa.num_nodes = 8  # entities (single lowercase letters), at most 26
  c.prosqa.num_edges = 10  # 'x>y' facts in the question
  c.prosqa.min_hops = 2  # path length from the queried entity to the answer, inclusive range
  c.prosqa.max_hops = 3
  return c


def registered_tasks() -> list[str]:
  """Every task name, after importing the modules that register the built-in ones."""
  for name in _TASK_MODULES:
    importlib.import_module(name)
  return TASKS.names()


def load_task(data_cfg: ml_collections.ConfigDict) -> TaskData:
  """The `TaskData` of `data_cfg.task` (a ValueError lists the known tasks)."""
  registered_tasks()
  return TASKS.get(data_cfg.task)(data_cfg)


def sft_problems(task: TaskData, sft_size: int) -> list[Problem]:
  """The worked solutions SFT trains on: the first `sft_size` train problems (0 = all).

  The train split is already a deterministic random draw (from `data.seed`), so
  its prefix is a fixed random subset, the same for every run seed.
  """
  if sft_size < 0:
    raise ValueError(f"data.sft_size={sft_size} must be >= 0 (0 = the whole train split)")
  if sft_size > len(task.train):
    raise ValueError(f"data.sft_size={sft_size} exceeds the {len(task.train)} train problems")
  return task.train[:sft_size] if sft_size else task.train


def rl_problems(task: TaskData) -> list[QA]:
  """Every train problem as (question, answer): what the RL phase may read."""
  return [QA(p.question, p.answer) for p in task.train]


def steps_text(steps: tuple[str, ...] | list[str]) -> str:
  """Reasoning steps joined into response text."""
  return STEP_SEPARATOR.join(s.strip() for s in steps if s.strip())


def prompt_text(problem: Problem) -> str:
  """What the model is conditioned on; it ends where the response starts."""
  return problem.question.strip() + PROMPT_SUFFIX


def answer_text(problem: Problem) -> str:
  """The canonical answer string."""
  return problem.answer.strip()


def nocot_text(problem: Problem) -> str:
  """The response without reasoning: '#### answer'."""
  return f"{ANSWER_DELIMITER} {answer_text(problem)}"


def cot_text(problem: Problem, skip_steps: int = 0) -> str:
  """The response: the steps (from `skip_steps` on), then ' #### answer'; no eos.

  `skip_steps` serves the Coconut curriculum, which replaces the first k
  steps by latents; with every step skipped it is `nocot_text`.
  """
  body = steps_text(problem.steps[skip_steps:])
  return f"{body} {nocot_text(problem)}" if body else nocot_text(problem)
