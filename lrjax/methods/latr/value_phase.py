"""The `value` phase: Latent RL's stage 1, pre-training a value head on thoughts.

Latent RL (Özeren & Aßenmacher, arXiv 2512.11816) first teaches a value head V
(`lrjax.methods.latr.value_head`) to tell which continuous thoughts lead to a correct
answer, then (the `rl` phase with `rl.objective = "latent_value"`) pushes the
thoughts toward states V rates highly. This phase:

1. rolls out the starting model (`run.params`, the `hidden` rule) on
   `latent_rl.prompts` training problems (question and answer only): one
   greedy response each with `latent_rl.samples = 1` (the default: the policy
   that stage 2 trains, whose correctness the thoughts determine), else that
   many sampled responses at the RL sampling settings;
2. makes one example of every thought state h_t (t < N, the states fed back
   as thoughts) of a response, labelled with that response's correctness
   (reward > 0.5);
3. holds out `latent_rl.holdout` of the *problems* (all responses and
   thoughts of a held-out problem stay out of training: the split is by
   problem, so the head is scored on problems it never saw);
4. fits V's input standardisation to the training states, then trains its
   layers with Adam (`latent_rl.lr`, batches of `latent_rl.batch_size`
   states, dropout `latent_rl.dropout`) on the class-weighted BCE, pos_weight
   `latent_rl.pos_weight` or, with 0, n_neg / n_pos of the training states,
   for `latent_rl.epochs` epochs, and keeps the epoch with the best held-out
   ROC-AUC (the paper's selection).

Metrics (phase "value"): per epoch `value/loss` (training BCE), `value/heldout_loss`,
`value/roc_auc` (held-out, per state); then one line with `value/best_roc_auc`,
`value/best_epoch`, `value/pos_weight`, `value/train_states`,
`value/heldout_states`, `value/train_problems`, `value/heldout_problems`,
`value/pos_rate` (share of correct sampled responses), `value/rollout_seconds`
and `value/seconds`. The head goes to `run.heads` twice: "value" (trained on in stage 2) and
"value_start" (kept frozen by configs/latent_rl.py's parameter groups, a fixed
yardstick for the thoughts). Files: `<workdir>/value/value_head.safetensors` and
`<workdir>/value/DONE` (the summary, including the resolved pos_weight). A
finished phase is reused; an interrupted one starts again (it is short, and
its rollouts are seeded, so the result is the same).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrjax import rewards as rewards_lib
from lrjax.config_utils import ConfigError
from lrjax.data.order import data_window
from lrjax.metrics import say
from lrjax import parallel
from lrjax.latent import init_rule_params, prompt_suffix, rule_aux
from lrjax.phases import workdir
from lrjax.phases.rl_context import train_context
from lrjax.methods.latr.value_head import (auto_pos_weight, fit_input_norm, init_value_head,
                                           roc_auc, value_logits, weighted_bce)

HEAD_FILE = "value_head.safetensors"
VALUE_STREAM = 3  # data order stream of the value phase's problems (RL draws from seed + 1)


def init_head(run, key: jax.Array) -> dict:
  """A fresh value head for the run's backbone width and `latent_rl.widths`."""
  return init_value_head(run.model_cfg.hidden_size, key, tuple(run.config.latent_rl.widths))


def split_by_problem(num_problems: int, holdout: float, seed: int) -> np.ndarray:
  """[num_problems] bool, True for the held-out problems: round(holdout · n) of them
  (at least 1 and at most n − 1), drawn by a seeded permutation."""
  if num_problems < 2:
    raise ConfigError(f"config.latent_rl.prompts={num_problems}: the held-out split by "
                      "problem needs at least 2 problems")
  k = min(max(int(round(holdout * num_problems)), 1), num_problems - 1)
  held = np.zeros(num_problems, bool)
  held[np.random.default_rng([seed, VALUE_STREAM]).permutation(num_problems)[:k]] = True
  return held


def collect(run, ctx, params: dict, key: jax.Array) -> dict:
  """Rollouts of the starting model: thought states [M, N, H], their response's label
  [M] and problem index [M] (responses of problem i are rows i·S .. i·S + S − 1)."""
  from lrjax.phases.rl_step import draw_round  # noqa: PLC0415 - shares the RL rollout
  v, rl = run.config.latent_rl, run.config.rl
  if ctx.num_latent < 1:
    raise ConfigError("the value phase rates thought states, but the `hidden` rule runs 0 "
                      "of them: start from a Coconut/LatR model (config.init) or set "
                      "config.rule.num_latent")
  idx = data_window(run.config.seed + VALUE_STREAM, len(run.rl_train), 0, v.prompts)
  problems = [run.rl_train[i] for i in idx]
  reward_fn = rewards_lib.REWARDS.get(rl.reward or run.task.reward)
  aux = rule_aux(ctx.rule, run.tokenizer, ctx.rule_cfg)
  per_batch = max(1, (rl.num_prompts * rl.group_size) // v.samples)
  states, labels = [], []
  for b, at in enumerate(range(0, len(problems), per_batch)):
    chunk = problems[at:at + per_batch]
    r = draw_round(run, ctx, params, chunk, group_size=v.samples, suffix=prompt_suffix(ctx),
                   reward_fn=reward_fn, key=jax.random.fold_in(key, b), aux=aux)
    states.append(np.asarray(parallel.fetch(r.traj.records["hidden"][:, :ctx.num_latent]),
                             np.float32))
    labels.append(r.rewards > 0.5)
  return {"states": np.concatenate(states), "labels": np.concatenate(labels),
          "problem": np.repeat(np.arange(len(problems)), v.samples)}


def make_head_step(optimizer: optax.GradientTransformation, pos_weight: float, dropout: float):
  """jit(fn(head, opt_state, h [b, H], y [b], key) -> (head, opt_state, loss)).

  Trains the head's layers; its input standardisation stays as fitted
  (opt_state = optimizer.init(trainable(head)))."""
  def loss_fn(layers, norm, h, y, key):
    head = {**layers, "input_norm": norm}
    return weighted_bce(value_logits(head, h, dropout=dropout, key=key), y, pos_weight)

  @jax.jit
  def step(head, opt_state, h, y, key):
    layers = trainable(head)
    loss, grads = jax.value_and_grad(loss_fn)(layers, head["input_norm"], h, y, key)
    updates, opt_state = optimizer.update(grads, opt_state, layers)
    return {**optax.apply_updates(layers, updates), "input_norm": head["input_norm"]}, \
        opt_state, loss
  return step


def trainable(head: dict) -> dict:
  """The head's layers (everything but its fitted input standardisation)."""
  return {k: v for k, v in head.items() if k != "input_norm"}


def train_head(run, data: dict, key: jax.Array) -> tuple[dict, dict]:
  """Trains V on the training problems' states; (best head on the host, summary).

  Rollouts of one class (no correct, or no wrong, response) are warned about: the
  held-out ROC-AUC is undefined, no epoch beats the start and the head stays at its
  initialisation (it rates every thought alike)."""
  v = run.config.latent_rl
  n_pos, n = int(np.sum(data["labels"])), len(data["labels"])
  if n_pos in (0, n):
    say(f"[lrjax] warning: the value phase's {n} rollouts have "
        f"{'no correct' if n_pos == 0 else 'no wrong'} response, so the value head keeps its "
        "initialisation and rates every thought alike: start from a model that solves some "
        "but not all problems (a longer warm-up, config.sft.steps) or roll out more "
        "(config.latent_rl.prompts)")
  held = split_by_problem(int(data["problem"].max()) + 1, v.holdout, run.config.seed)
  n_lat, hsize = data["states"].shape[1:]
  row_held = held[data["problem"]]  # M
  flat = lambda x, rows: x[rows].reshape(-1, hsize)  # noqa: E731
  x_tr, x_ho = flat(data["states"], ~row_held), flat(data["states"], row_held)
  y_tr = np.repeat(data["labels"][~row_held], n_lat)
  y_ho = np.repeat(data["labels"][row_held], n_lat)
  pos_weight = float(v.pos_weight) or auto_pos_weight(y_tr)
  optimizer = optax.adam(v.lr)
  head = fit_input_norm(init_head(run, jax.random.fold_in(key, 0)), x_tr)
  opt_state = jax.jit(optimizer.init)(trainable(head))
  step = make_head_step(optimizer, pos_weight, float(v.dropout))
  score = jax.jit(lambda hd, x: value_logits(hd, x))
  heldout_loss = jax.jit(lambda hd, x, y: weighted_bce(value_logits(hd, x), y, pos_weight))
  rng = np.random.default_rng([run.config.seed, VALUE_STREAM, 1])
  # a host copy in every branch: the caller places it twice ("value", "value_start"), and
  # the RL update donates its buffers
  best = {"auc": -1.0, "epoch": 0, "head": jax.device_get(head)}
  bs = int(v.batch_size)
  for epoch in range(1, v.epochs + 1):
    order = rng.permutation(len(x_tr))
    losses = []
    for i, at in enumerate(range(0, len(order), bs)):
      rows = order[at:at + bs]
      head, opt_state, loss = step(head, opt_state, jnp.asarray(x_tr[rows]),
                                   jnp.asarray(y_tr[rows]),
                                   jax.random.fold_in(key, epoch * 100_003 + i))
      losses.append(float(loss))
    auc = roc_auc(np.asarray(score(head, jnp.asarray(x_ho))), y_ho)
    run.metrics.write("value", epoch, {
        "value/loss": float(np.mean(losses)),
        "value/heldout_loss": float(heldout_loss(head, jnp.asarray(x_ho), jnp.asarray(y_ho))),
        "value/roc_auc": auc})
    if auc > best["auc"]:
      best = {"auc": auc, "epoch": epoch, "head": jax.device_get(head)}
  summary = {"best_roc_auc": best["auc"], "best_epoch": best["epoch"],
             "pos_weight": pos_weight, "train_states": int(len(x_tr)),
             "heldout_states": int(len(x_ho)), "train_problems": int((~held).sum()),
             "heldout_problems": int(held.sum()),
             "pos_rate": float(np.mean(data["labels"]))}
  return best["head"], summary


def run_value(run) -> None:
  pdir = workdir.phase_dir(run, "value")
  if workdir.is_done(run, "value"):
    with open(os.path.join(pdir, "DONE")) as f:
      summary = json.load(f)
    run.heads["value"] = workdir.load_tree(os.path.join(pdir, HEAD_FILE))
    run.heads["value_start"] = workdir.load_tree(os.path.join(pdir, HEAD_FILE))
    run.heads_cfg["pos_weight"] = summary["pos_weight"]
    say(f"[lrjax] value: reusing the finished head in {pdir} "
        f"(held-out ROC-AUC {summary['best_roc_auc']:.3f})")
    return
  os.makedirs(pdir, exist_ok=True)
  run.metrics.truncate("value", 0)  # an interrupted attempt starts again
  ctx = train_context(run)
  # one greedy response per problem (the policy stage 2 trains), or several sampled ones
  greedy = int(run.config.latent_rl.samples) == 1
  ctx = ctx.replace(sampling=dataclasses.replace(ctx.sampling, greedy=greedy), objective="",
                    objective_cfg=())
  key = jax.random.fold_in(jax.random.key(run.config.seed), VALUE_STREAM)
  t0 = time.time()
  params = run.place({"model": run.params, "heads": {},
                      "rule": init_rule_params(ctx, jax.random.fold_in(key, 0))})
  data = collect(run, ctx, params, jax.random.fold_in(key, 1))
  rollout_s = time.time() - t0
  head, summary = train_head(run, data, jax.random.fold_in(key, 2))
  summary.update({"rollout_seconds": rollout_s, "seconds": time.time() - t0})
  run.metrics.write("value", int(run.config.latent_rl.epochs),
                    {f"value/{k}": float(x) for k, x in summary.items()})
  if jax.process_index() == 0:
    workdir.save_tree(os.path.join(pdir, HEAD_FILE), head)
  run.heads["value"] = jax.device_put(head)  # `head` is a host copy
  # a copy of its own: the online head's buffers are donated by the RL update (on one
  # device `run.place` keeps them as they are, so a shared buffer would be deleted with them)
  run.heads["value_start"] = jax.device_put(head)
  run.heads_cfg["pos_weight"] = summary["pos_weight"]
  workdir.mark_done(run, "value", summary)
  say(f"[lrjax] value head: held-out ROC-AUC {summary['best_roc_auc']:.3f} "
      f"(epoch {summary['best_epoch']}), {summary['train_states']} training states, "
      f"pos_weight {summary['pos_weight']:.2f}, responses correct "
      f"{summary['pos_rate']:.3f}, {summary['seconds']:.0f} s")
