"""The span probe (`--config.mode=span_probe --config.init=<a model>`): does a main model
read information from the `<bot> .. <eot>` span after its question?

DLR's assistant reaches a frozen main model only through that span: if what the span
holds does not change the main model's answers, no assistant can raise it, however it
is trained. The probe greedy-decodes the held-out problems (`eval.num_problems`) three
times with the plain token rule:

    none    prompt                              the main model alone
    answer  prompt <bot> a_1 .. a_T <eot>       the first T tokens of the problem's own answer
    other   prompt <bot> a'_1 .. a'_T <eot>     the same for the next problem with another answer

(T = `rule.num_latent`, or with 0 the chain length stored with the model; shorter
answers padded with `<latent>`; the span holds token embeddings, the most readable
chain there is) and logs at ("span_probe", 0):

    probe/accuracy_none, probe/accuracy_answer, probe/accuracy_other
    probe/answer_gain    accuracy_answer - accuracy_other: what the span's content is worth
    probe/copies_other   share of `other` answers equal to the other problem's answer

A gain near 0 and no copies: the model does not take information from the span, and an
assistant can only move it by chance perturbations (measure those with the eval phase's
pass@k over sampled chains). A large gain: the channel carries information, and an
assistant that knew the answer could raise the model that far.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from lrjax import metrics as metrics_lib, rewards as rewards_lib
from lrjax.config_utils import ConfigError
from lrjax.data.tasks import Problem
from lrjax.latent import init_rule_params
from lrjax.phases import held_out
from lrjax.rollout import Sampling, decode, encode_prompts

FILLS = ("none", "answer", "other")


def other_answers(problems: Sequence[Problem]) -> list[str]:
  """For each problem, the answer of the next problem (cyclically) whose answer differs;
  its own answer when all are equal."""
  answers = [p.answer.strip() for p in problems]
  n = len(answers)
  return [next((answers[(i + k) % n] for k in range(1, n) if answers[(i + k) % n] != a), a)
          for i, a in enumerate(answers)]


def span_prompts(tokenizer: Any, prompts: list[list[int]], fill: Sequence[str] | None,
                 span: int, ids: dict) -> list[list[int]]:
  """Each prompt's ids (`encode_prompts`), then `<bot>` + the first `span` tokens of
  fill[i] (padded with `<latent>`) + `<eot>`; fill None: the prompts alone."""
  if fill is None:
    return prompts
  out = []
  for p, text in zip(prompts, fill):
    head = list(tokenizer.encode(text, add_special_tokens=False))[:span]
    out.append(p + [ids["bot_id"]] + head + [ids["latent_id"]] * (span - len(head))
               + [ids["eot_id"]])
  return out


def completions(ctx, params: dict, tokenizer: Any, prompts: list[list[int]], key: jax.Array,
                batch_size: int, mesh: Any = None) -> list[str]:
  """The response texts (up to eos) of `prompts` under `ctx`'s rule."""
  batches = held_out.generate(ctx, params, prompts, key, batch_size, pad_id=ctx.pad_id, mesh=mesh)
  return [t for traj, real in batches for t in decode(tokenizer, traj, ctx)[:real]]


def span_metrics(texts: dict[str, list[str]], answers: Sequence[str], others: Sequence[str],
                 reward_fn) -> dict[str, float]:
  """The `probe/*` metrics (module doc) of the completions under each fill."""
  def mean(ts, golds):
    return float(np.mean([reward_fn(t, g) for t, g in zip(ts, golds)]))
  out = {f"probe/accuracy_{name}": mean(texts[name], answers) for name in FILLS}
  out["probe/answer_gain"] = out["probe/accuracy_answer"] - out["probe/accuracy_other"]
  out["probe/copies_other"] = mean(texts["other"], others)
  return out


def probe(ctx, params: dict, tokenizer: Any, problems: Sequence[Problem], reward: str,
          span: int, ids: dict, key: jax.Array, batch_size: int, mesh: Any = None,
          prompter: Any = None) -> dict[str, float]:
  """The `probe/*` metrics of `params` on `problems` under the greedy token rule `ctx`."""
  answers = [p.answer for p in problems]
  others = other_answers(problems)
  fills = {"none": None, "answer": answers, "other": others}
  prompts = encode_prompts(prompter or tokenizer, problems)
  texts = {name: completions(ctx, params, tokenizer,
                             span_prompts(tokenizer, prompts, fills[name], span, ids), key,
                             batch_size, mesh) for name in FILLS}
  return span_metrics(texts, answers, others, rewards_lib.REWARDS.get(reward))


def run_span_probe(run) -> dict:
  c = run.config
  ids = {k: run.special.get(k, -1) for k in ("bot_id", "latent_id", "eot_id")}
  if min(ids.values()) < 0:
    raise ConfigError(f"the span probe needs the <bot>/<latent>/<eot> tokens; the tokenizer of "
                      f"{c.init or 'this run'} has none (a model trained with a latent span has them)")
  span = run.num_latent()
  if span < 1:
    raise ConfigError("the span probe needs config.rule.num_latent >= 1 (the span length T)")
  ctx = run.rule_context("token", c.eval.max_new)
  params = run.place({"model": run.params, "rule": init_rule_params(ctx, jax.random.key(c.seed)),
                      "heads": {}})
  problems = run.task.eval[:c.eval.num_problems] if c.eval.num_problems else run.task.eval
  greedy = ctx.replace(sampling=Sampling(greedy=True))
  metrics = probe(greedy, params, run.tokenizer, problems, c.rl.reward or run.task.reward, span,
                  ids, jax.random.key(c.seed + 7919), c.eval.batch_size, run.mesh, run.prompter)
  run.metrics.write("span_probe", 0, metrics)
  metrics_lib.say(
      f"[lrjax] span probe on {len(problems)} held-out problems, T = {span}: the model alone "
      f"{metrics['probe/accuracy_none']:.3f}; with the answer in the span "
      f"{metrics['probe/accuracy_answer']:.3f}, with another problem's answer "
      f"{metrics['probe/accuracy_other']:.3f} (gain {100 * metrics['probe/answer_gain']:+.1f} "
      f"points; {metrics['probe/copies_other']:.3f} of the answers copy the other one)")
  return metrics
