r"""Prompts as data: what the model is conditioned on and what its answers look like.

A `PromptFormat` (registered in `PROMPTS`, chosen by `data.prompt`) holds a
paper's system prompt, its user-turn template, the raw-text layout used without
a chat template, and the response layout SFT targets are written in. A
`Prompter` applies it for one tokenizer; SFT sequences, RL prompts, evaluation
and the span probe all build prompts through it, so training and evaluation
read the same text.

`data.chat_template`:
  `none`  raw text, `fmt.raw.format(system=..., question=...)` (the tiny default:
          `'{question}\n'`, exactly `tasks.prompt_text`).
  `auto`  the checkpoint's chat template with `add_generation_prompt=True` when the
          tokenizer has one and the format asks for it (`fmt.chat`), then
          `fmt.generation_prefix` (Latent-GRPO's `<think>`); raw text otherwise.
          The format's system prompt is passed when it has one; when it has none
          and the template would insert a default one (Qwen2.5's "You are Qwen,
          ..."), an empty system turn is passed instead, so no text slips in
          unasked.

Token ids: the prompt starts with BOS exactly once (`special.bos_ids`: only
tokenizers whose `encode` adds one, and not again when the template wrote it).
An SFT target ends with the template's end-of-turn token (`<|im_end|>`,
`<|eot_id|>`) when a template is applied, else with the tokenizer's eos
(`Prompter.end_ids`).

Formats (the official code each is taken from is named in `source`):

    raw          '{question}\n' | '{steps} #### {answer}'           tiny tasks, `hash_exact`
    hrpo         HRPO's system prompt ("... {reasoning process} #### {answer}"), the
                 question as the user turn; `hash_exact`
    lepo         "Please reason step by step, and put your final answer within
                 \boxed{}." as system prompt and after the question; `boxed_math`
    latent_grpo  that instruction, a newline and the question as the only user turn,
                 `<think>` after the generation prompt; answer `</think> \boxed{}`;
                 `boxed_math`
    latr         raw text: LatR's latent-reasoner system prompt, '\nUser:' question
                 '\nAssistant:'; answer `<answer>\boxed{..}</answer>`; `boxed_math`
    dlr          (no official code) HRPO's system prompt and `####` answers
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from lrjax.data import special as special_lib
from lrjax.data.tasks import Problem, steps_text
from lrjax.registry import Registry

CHAT_TEMPLATE_MODES = ("none", "auto")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """One paper's prompt and answer layout (module doc)."""
  system: str = ""  # the system prompt ('' = none)
  # templates fill `{system}`, `{question}`, `{steps}`, `{answer}` (`fill`); other braces
  # are literal
  user: str = "{question}"  # the user turn ({question}: the stripped question)
  raw: str = "{question}\n"  # without a chat template ({system}, {question})
  chat: bool = True  # data.chat_template = auto applies the checkpoint's template
  generation_prefix: str = ""  # appended after the template's generation prompt
  steps: str = "{steps} "  # the worked steps of an SFT target ({steps}); none -> ''
  answer: str = "#### {answer}"  # the final answer of an SFT target
  reward: str = "hash_exact"  # the lrjax reward that parses `answer`
  source: str = ""  # where the prompt is taken from

  def response(self, steps: Sequence[str], answer: str) -> str:
    """An SFT target's text: the steps (if any) then the answer; no end token."""
    body = steps_text(steps)
    head = fill(self.steps, steps=body) if body else ""
    return head + fill(self.answer, answer=answer.strip())


PROMPTS: Registry[PromptFormat] = Registry("prompt format")
_FIELD = re.compile(r"\{(system|question|steps|answer)\}")


def fill(template: str, **values: str) -> str:
  """`template` with each `{name}` of `values` replaced, in one pass (other braces, e.g.
  `\\boxed{}`, and braces inside the values stay as they are)."""
  return _FIELD.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0),
                    template)

HRPO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The final answer is provided after the #### tag, "
    "i.e., {reasoning process} #### {answer}.")
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
LATR_SYSTEM = (
    "\nA conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. \nThe assistant first thinks about the reasoning process in the latent-space "
    "without using language.\nThen it provides the user with the reasoning in latent-space and "
    "the answer. \nThe reasoning in latent-space and answer are enclosed within "
    "<|start-latent|> <|end-latent|> and <answer> </answer> tags, respectively and the answer "
    "is boxed using \\boxed{...}.\nOutput only those two tagged blocks, in that order, nothing "
    "else.\ni.e., <|start-latent|>reasoning in latent here<|end-latent|><answer>\\boxed{...}"
    "</answer>\n")

PROMPTS.register("raw")(PromptFormat(source="lrjax's synthetic tasks"))
PROMPTS.register("hrpo")(PromptFormat(
    system=HRPO_SYSTEM, raw="{system}\n{question}\n",
    source="Yueeeeeeee/HRPO utils.py (SYSTEM_PROMPT, process_gsm8k, get_reward_func)"))
PROMPTS.register("lepo")(PromptFormat(
    system=BOXED_INSTRUCTION, user="{question}\n" + BOXED_INSTRUCTION,
    raw="{question}\n" + BOXED_INSTRUCTION + "\n", steps="{steps}\n",
    answer="The answer is \\boxed{{answer}}", reward="boxed_math",
    source="YuyanZhou/lepo src/data/datasets.py (SYSTEM_PROMPT, get_prompt_shot)"))
PROMPTS.register("latent_grpo")(PromptFormat(
    user=BOXED_INSTRUCTION + "\n{question}", raw=BOXED_INSTRUCTION + "\n{question}\n<think>",
    generation_prefix="<think>", steps="{steps}", answer="</think>\\boxed{{answer}}",
    reward="boxed_math",
    source="DJC-GO-SOLO/Latent-GRPO data_preprocess_code/gsm8k_aug.py and "
           "eval/eval_low_tasks_sglang.py (build_prompt_text_qwen)"))
PROMPTS.register("latr")(PromptFormat(
    system=LATR_SYSTEM, raw="{system}\nUser:{question}\nAssistant:", chat=False,
    steps="<think>{steps}</think>", answer="<answer>\\boxed{{answer}}</answer>",
    reward="boxed_math",
    source="enesozeren/latent-space-thinking-model prompts/prompts.py "
           "(SYSTEM_PROMPT_LATENT_REASONER_NO_THINK), src/data_process/process_data.py"))
PROMPTS.register("dlr")(PromptFormat(
    system=HRPO_SYSTEM, raw="{system}\n{question}\n",
    source="DLR publishes no code: HRPO's system prompt and #### answers"))


class Prompter:
  """A `PromptFormat` applied with one tokenizer (module doc)."""

  def __init__(self, tokenizer: Any, fmt: PromptFormat | str = "raw",
               chat_template: str = "none"):
    if chat_template not in CHAT_TEMPLATE_MODES:
      raise ValueError(f"data.chat_template={chat_template!r}; expected one of "
                       f"{', '.join(CHAT_TEMPLATE_MODES)}")
    self.tokenizer = tokenizer
    self.fmt = PROMPTS.get(fmt) if isinstance(fmt, str) else fmt
    self.templated = (chat_template == "auto" and self.fmt.chat
                      and bool(getattr(tokenizer, "chat_template", None)))
    self._bos = special_lib.bos_ids(tokenizer)

  @classmethod
  def from_config(cls, tokenizer: Any, data_cfg: Any) -> "Prompter":
    return cls(tokenizer, data_cfg.get("prompt", "raw") or "raw",
               data_cfg.get("chat_template", "none") or "none")

  def _messages(self, question: str) -> list[dict]:
    user = {"role": "user", "content": fill(self.fmt.user, question=question.strip())}
    if self.fmt.system:
      return [{"role": "system", "content": self.fmt.system}, user]
    if self._adds_default_system():
      return [{"role": "system", "content": ""}, user]
    return [user]

  def _adds_default_system(self) -> bool:
    """Whether the template writes a system turn of its own when given none."""
    mark = "\x1fq\x1f"
    plain = self.tokenizer.apply_chat_template([{"role": "user", "content": mark}],
                                               tokenize=False, add_generation_prompt=False)
    return "system" in plain.split(mark)[0]

  def text(self, question: str) -> str:
    """The prompt text the model is conditioned on."""
    if self.templated:
      return self.tokenizer.apply_chat_template(
          self._messages(question), tokenize=False,
          add_generation_prompt=True) + self.fmt.generation_prefix
    return fill(self.fmt.raw, system=self.fmt.system, question=question.strip())

  def ids(self, question: str) -> list[int]:
    """The prompt's ids, starting with BOS exactly once when the tokenizer uses one."""
    ids = list(self.tokenizer.encode(self.text(question), add_special_tokens=False))
    if self._bos and ids[:1] != self._bos:
      ids = self._bos + ids
    return ids

  def cot(self, problem: Problem, skip_steps: int = 0) -> str:
    """The worked response (steps from `skip_steps` on, then the answer); no end token."""
    return self.fmt.response(problem.steps[skip_steps:], problem.answer)

  def nocot(self, problem: Problem) -> str:
    return self.fmt.response((), problem.answer)

  @property
  def end_ids(self) -> list[int]:
    """What ends an SFT target: the template's end-of-turn token, else the eos."""
    if self.templated:
      eot = self.end_of_turn_id()
      if eot is not None:
        return [eot]
    return [self.tokenizer.eos_token_id]

  def end_of_turn_id(self) -> int | None:
    """The special token the template writes right after an assistant turn's text."""
    if not self.templated:
      return None
    mark = "\x1fa\x1f"
    full = self.tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
        tokenize=False)
    after = full.split(mark, 1)[1] if mark in full else ""
    ids = self.tokenizer.encode(after, add_special_tokens=False)
    if ids and ids[0] in set(self.tokenizer.all_special_ids) | set(
        self.tokenizer.added_tokens_decoder):
      return int(ids[0])
    return None


def raw_prompter(tokenizer: Any) -> Prompter:
  """The tiny default: raw `'{question}\\n'`, `####` answers."""
  return Prompter(tokenizer)
