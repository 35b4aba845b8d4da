"""The RL learner: rule-declared objectives, a registered policy loss, mini-batch updates.

One rollout batch is learned from as follows (`lrjax.phases.rl` drives it):

    old   = behaviour_logp(ctx, params, traj, aux)   # old ratio terms, fixed before any update
    A     = compute_advantages(...)                   # lrjax.rl.advantages, sees traj and old
    for rows in minibatch_rows(...):                  # rl.updates_per_batch shuffled group slices
      params, opt_state, m = update(params, opt_state, ref, traj[rows], A[rows], aux, old[rows])

and one `update` is

    out   = replay(ctx, params, traj, aux)                      # one teacher-forced forward
    masks = rule.objective.masks(ctx, traj)                     # what the rule scores, where
    terms = rule.objective.terms(ctx, params, traj, out, aux)   # ratio terms (+ direct terms)
    ref   = the same terms of the frozen reference               # KL_REFERENCES[rl.kl_reference]
    loss  = POLICY_LOSSES[rl.loss](terms.ratio, old, A, masks.ratio, ref_logp=ref, ...,
                                   direct=terms.direct, direct_mask=masks.direct)
          + Σ_i w_i AUX_LOSSES[name_i](params, traj, out)     # rl.aux_losses

With `rl.bucket_width` > 0 (the default) `update` runs the same computation on
length-sorted chunks of rows, each cut to the positions its rows use
(`lrjax.rl.buckets`), and sums them.

The thought rule, not the learner, says what is scored (`lrjax.latent.objective`):
`token`/`hybrid` the sampled token's log_softmax(l/τ)[y], `hidden` the same at
`<eot>` and the text after it; `rl.objective` may name a registered objective
instead (Latent RL's value objective, `lrjax.methods.latr.latent_rl`). Old terms
are the sampler's `traj.logp` where it stored them (`masks.stored_old`) and are
recomputed on the same stored inputs with the parameters before the first update
everywhere else.

The reference for the KL is a frozen copy of the starting tree {"model",
"rule", "heads"}, its backbone in the compute dtype (`frozen_reference`); with LoRA
adapters, the live frozen base with the adapters off (`lrjax.model.lora.reference`,
no copy of the model). `policy_inputs` (default) replays the policy's stored inputs
through the same rule (so the KL is 0 at the first step); `token_inputs`
replays plain token embeddings E[y] instead (HRPO's choice: the starting
model without the hybrid mix).

The optimizer works on parameter groups of the tree {"model", "rule", "heads"}
(`rl.param_groups`, see `lrjax.optim`): each group has its own learning rate
(HRPO: backbone, gate Linears, Λ), or none (frozen). The update differentiates
the loss with respect to the trainable parameters only, clips their global norm
and applies AdamW to them; frozen ones are carried through unchanged. Its
schedule counts optimizer updates: rl.steps × rl.updates_per_batch in all.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrjax.faults import guarded_update
from lrjax.latent import Masks, RuleContext, embedding_table, objective_of
from lrjax.model import ModelConfig, compute_params, lora
from lrjax.optim import GroupedOptimizer, ParamGroups, make_grouped_optimizer
from lrjax.parallel import on_mesh
from lrjax.registry import Registry
from lrjax.rl import accumulate, buckets
from lrjax.rl.aux_losses import AUX_LOSSES
from lrjax.rl.losses import POLICY_LOSSES
from lrjax.rollout import ReplayOut, replay

# name -> fn(ctx, ref_params, traj, aux) -> ReplayOut: how the reference model replays a batch
KL_REFERENCES: Registry = Registry("KL reference")


@KL_REFERENCES.register("policy_inputs")
def policy_inputs(ctx: RuleContext, ref_params: dict, traj: Any, aux: Any) -> ReplayOut:
  """The policy's stored inputs rebuilt by the same rule with the reference's
  (starting) rule parameters and embedding table."""
  return replay(ctx, ref_params, traj, aux)


@KL_REFERENCES.register("token_inputs")
def token_inputs(ctx: RuleContext, ref_params: dict, traj: Any, aux: Any) -> ReplayOut:
  """Plain token embeddings E[y_t] of the emitted ids as inputs (HRPO's reference:
  the starting model run on tokens, arXiv 2505.18454)."""
  return replay(ctx, ref_params, traj, aux, inputs=embedding_table(ref_params)[traj.ids])


def frozen_in_compute_dtype(cfg: ModelConfig, groups: ParamGroups, params: dict) -> dict:
  """`params` with the backbone leaves of its frozen groups (lr None: a LoRA base, DLR's
  main model) in the compute dtype `cfg.dtype`: they never change, so only the trained
  ones keep a `cfg.param_dtype` (float32 master) copy."""
  trainable, frozen = groups.split(params)
  if "model" not in frozen:
    return params
  return ParamGroups.merge(trainable, {**frozen, "model": compute_params(cfg, frozen["model"])})


@functools.partial(jax.jit, static_argnums=0)
def frozen_reference(cfg: ModelConfig, params: dict) -> dict:
  """The KL reference copied from the starting tree (`lora.reference_copy`), its backbone
  in the compute dtype `cfg.dtype`: it is only read (each replay casts to that dtype
  anyway), so it needs no float32 master copy. One program: new buffers, never the
  caller's (which the update donates)."""
  ref = lora.reference_copy(params)
  if "model" in ref:
    ref = {**ref, "model": compute_params(cfg, ref["model"])}
  return jax.tree.map(jnp.copy, ref)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static loss settings (hashable: part of the update's jit key); `from_config(rl)`."""
  loss: str = "ppo_clip"
  aggregation: str = "token_mean"
  clip_eps: float = 0.2
  clip_eps_high: float | None = None  # None: symmetric clip
  dual_clip: float | None = None  # None: off
  beta: float = 0.0
  kl_estimator: str = "k3"
  kl_clamp: float = 0.0  # 0: off
  kl_reference: str = "policy_inputs"
  aux_losses: tuple[tuple[str, float], ...] = ()

  @classmethod
  def from_config(cls, rl: Any) -> "LossSpec":
    """The `rl` config section's loss fields (0 / None turn clip-higher and dual clip off)."""
    return cls(loss=rl.loss, aggregation=rl.aggregation, clip_eps=rl.clip_eps,
               clip_eps_high=rl.clip_eps_high or None, dual_clip=rl.dual_clip or None,
               beta=rl.beta, kl_estimator=rl.kl_estimator, kl_clamp=rl.kl_clamp or 0.0,
               kl_reference=rl.kl_reference,
               aux_losses=tuple((str(n), float(w)) for n, w in rl.aux_losses))

  def loss_kwargs(self) -> dict:
    """The keywords every `POLICY_LOSSES` entry receives from this spec."""
    return dict(beta=self.beta, clip_eps=self.clip_eps, clip_eps_high=self.clip_eps_high,
                dual_clip=self.dual_clip, kl_estimator=self.kl_estimator,
                kl_clamp=self.kl_clamp, aggregation=self.aggregation)


def optimizer_updates(rl_cfg, steps: int) -> int:
  """Optimizer updates in `steps` RL steps: one per mini-batch."""
  return steps * int(getattr(rl_cfg, "updates_per_batch", 1))


def make_rl_optimizer(rl_cfg, total_steps: int) -> GroupedOptimizer:
  """Global-norm clip over the trainable gradients, then AdamW with one learning
  rate per `rl.param_groups` entry (lr None = frozen). `total_steps` and
  `rl.warmup_steps` are RL steps; the schedule counts optimizer updates
  (× rl.updates_per_batch)."""
  return make_grouped_optimizer(
      ParamGroups(tuple(rl_cfg.param_groups)), schedule=rl_cfg.schedule,
      warmup_steps=optimizer_updates(rl_cfg, rl_cfg.warmup_steps),
      total_steps=optimizer_updates(rl_cfg, total_steps), clip_norm=rl_cfg.clip_norm,
      weight_decay=rl_cfg.weight_decay, b1=rl_cfg.b1, b2=rl_cfg.b2, field="rl.schedule")


def loss_masks(ctx: RuleContext, traj: Any) -> Masks:
  """Where ctx's rule is scored (`Masks`, from the trajectory alone)."""
  return objective_of(ctx).masks(ctx, traj)


def loss_mask(masks: Masks) -> jax.Array:
  """[B, N] bool: every position the loss covers (ratio | direct)."""
  return masks.ratio if masks.direct is None else masks.ratio | masks.direct


def old_terms(ctx: RuleContext, params: dict, traj: Any, aux: Any = None) -> jax.Array:
  """[B, N] old ratio terms: traj.logp where the sampler stored them, else the rule's
  terms recomputed on the stored inputs with `params` (no gradient)."""
  obj = objective_of(ctx)
  masks = obj.masks(ctx, traj)
  terms = obj.terms(ctx, params, traj, replay(ctx, params, traj, aux), aux)
  return jnp.where(masks.stored_old, traj.logp, jax.lax.stop_gradient(terms.ratio))


_old_terms = jax.jit(old_terms, static_argnums=0)


def behaviour_logp(ctx: RuleContext, params: dict, traj: Any, aux: Any = None,
                   masks: Masks | None = None) -> jax.Array | None:
  """The old ratio terms of a batch, fixed before its first update; None when the
  sampler stored all of them (then the update reads traj.logp). `masks`: the batch's
  `loss_masks`, when the caller has them."""
  masks = loss_masks(ctx, traj) if masks is None else masks
  if not bool(jnp.any(masks.ratio & ~masks.stored_old)):
    return None
  return _old_terms(ctx, params, traj, aux)


def policy_loss(ctx: RuleContext, spec: LossSpec, params: dict, ref_params: dict | None,
                traj: Any, advantages: jax.Array, aux: Any, old_logp: jax.Array | None = None,
                rewards: jax.Array | None = None, max_len: int | None = None
                ) -> tuple[jax.Array, dict]:
  """The scalar loss of one batch of trajectories, and its metrics.

  ref_params: the frozen reference tree {"model", "rule", "heads"} (needed when
  spec.beta > 0); old_logp: [B, N] old ratio terms (None: traj.logp); rewards:
  [B], passed to the auxiliary losses only; max_len: the response buffer's N when
  traj holds fewer positions (a bucketed chunk; `seq_sum_norm`'s T_max).
  """
  obj = objective_of(ctx)
  out = replay(ctx, params, traj, aux)  # B N H, B N V
  masks = obj.masks(ctx, traj)
  terms = obj.terms(ctx, params, traj, out, aux,
                    **({"advantages": advantages} if obj.uses_advantages else {}))
  ref_logp = None
  if spec.beta > 0 and ref_params is not None:
    ref_params = lora.reference(params, ref_params)
    ref_out = KL_REFERENCES.get(spec.kl_reference)(ctx, ref_params, traj, aux)
    ref_logp = jax.lax.stop_gradient(obj.terms(ctx, ref_params, traj, ref_out, aux).ratio)
  loss_fn = POLICY_LOSSES.get(spec.loss)
  if (terms.direct is not None) != obj.has_direct:
    raise ValueError(f"the objective's has_direct={obj.has_direct} does not match its terms "
                     f"(direct terms {'made' if terms.direct is not None else 'not made'})")
  if terms.direct is not None and not loss_fn.supports_direct:
    raise ValueError(f"rl.loss={spec.loss!r} takes no direct terms, but the objective makes them")
  mask = masks.ratio.astype(jnp.float32)  # B N
  loss, metrics = loss_fn(
      terms.ratio, traj.logp if old_logp is None else old_logp, advantages, mask,
      ref_logp=ref_logp, direct=terms.direct, direct_mask=masks.direct, **spec.loss_kwargs(),
      **({} if max_len is None else {"max_len": max_len}))
  for name, weight in spec.aux_losses:
    value, extra = AUX_LOSSES.get(name)(params, traj, out, ctx=ctx, advantages=advantages,
                                        masks=masks, rewards=rewards)
    loss = loss + weight * value
    metrics = {**metrics, f"aux_{name}": jax.lax.stop_gradient(value),
               **{f"aux_{name}_{k}": jax.lax.stop_gradient(v) for k, v in extra.items()}}
  return loss, dict(metrics, loss=loss)


def _split(groups: ParamGroups | None, params: dict) -> tuple[dict, dict | None]:
  """(trainable, frozen) parts of `params` (groups None: all of it is trainable)."""
  return groups.split(params) if groups is not None else (params, None)


def _merge(groups: ParamGroups | None, trainable: dict, frozen: dict | None) -> dict:
  """The tree `_split` took apart."""
  return ParamGroups.merge(trainable, frozen) if groups is not None else trainable


def make_update(ctx: RuleContext, spec: LossSpec,
                optimizer: GroupedOptimizer | optax.GradientTransformation,
                microbatch: int = 0, mesh: Any = None, bucket_width: int = 0,
                bucket_unit: int = 1, bucket_rows: int = 0) -> Callable:
  """jit(fn(params, opt_state, ref_params, traj, advantages, aux, old_logp=None, rewards=None,
  poison=False) -> (params, opt_state, metrics)).

  With a `GroupedOptimizer` only its trainable parameters are differentiated
  and updated (opt_state = `optimizer.init(params)`); a plain optax
  transformation trains every parameter. metrics["grad_norm"] is the global
  norm of the trainable gradients, before clipping; an update whose loss or
  gradient norm is not finite is skipped (metrics["ok"] False,
  `lrjax.faults.guarded_update`; `poison` injects a NaN). `microbatch` m > 0
  accumulates the gradient over chunks of m rows (`lrjax.rl.accumulate`;
  `rl.microbatch`), the same update with one chunk's activations live at a time.
  With a `mesh`, every call runs under `jax.set_mesh(mesh)`, so the decoder keeps
  its activations' rows split over (data, fsdp) (`lrjax.parallel.constrain_rows`).

  With a frozen group (lr None, e.g. DLR's main model, a LoRA base) only the
  trainable parameters and the optimizer state are donated: the frozen ones are
  split off outside the jitted step and passed back unchanged, so their buffers
  are never donated nor copied.

  `bucket_width` w > 0: the rows are sorted by length and each chunk of
  `microbatch` rows (when 0: the largest divisor of the rows up to `bucket_rows`,
  all rows when that is 0) runs over its own first positions, a multiple of w
  (`lrjax.rl.buckets`; rows sorted in whole units of `bucket_unit`): the same update,
  its cost following the rows' lengths.
  """
  if bucket_width > 0:
    return _bucketed_update(ctx, spec, optimizer, microbatch, bucket_width, bucket_unit,
                            bucket_rows, mesh)
  groups = getattr(optimizer, "groups", None)

  def step(trainable, opt_state, frozen, ref_params, traj, advantages, aux, old_logp=None,
           rewards=None, poison=False):
    full = lambda t: _merge(groups, t, frozen)  # noqa: E731
    grad_fn = jax.value_and_grad(
        lambda t, rows: policy_loss(ctx, spec, full(t), ref_params, *rows[:2], aux, *rows[2:]),
        has_aux=True)
    rows = (traj, advantages, old_logp, rewards)
    if 0 < microbatch < traj.ids.shape[0]:
      masks = loss_masks(ctx, traj)
      (loss, metrics), grads = accumulate.accumulate(
          grad_fn, trainable, rows,
          accumulate.chunk_weights(spec.aggregation, loss_mask(masks), microbatch),
          accumulate.metric_weights(POLICY_LOSSES.get(spec.loss).per_sequence_metrics,
                                    masks.ratio, microbatch), microbatch)
    else:
      (loss, metrics), grads = grad_fn(trainable, rows)
    trainable, opt_state, grad_norm, ok = guarded_update(optimizer, grads, opt_state, trainable,
                                                         loss, poison)
    return trainable, opt_state, dict(metrics, grad_norm=grad_norm, ok=ok)

  split = functools.partial(_split, groups)
  merge = functools.partial(_merge, groups)
  if groups is None or all(lr is not None for _, lr in groups.patterns):
    def update(params, opt_state, ref_params, *rest, **kw):  # one donated tree
      trainable, frozen = split(params)
      trainable, opt_state, metrics = step(trainable, opt_state, frozen, ref_params, *rest, **kw)
      return merge(trainable, frozen), opt_state, metrics
    return on_mesh(jax.jit(update, donate_argnums=(0, 1)), mesh)
  jitted = on_mesh(jax.jit(step, donate_argnums=(0, 1)), mesh)

  def update_frozen_apart(params, opt_state, ref_params, *rest, **kw):
    trainable, frozen = split(params)
    trainable, opt_state, metrics = jitted(trainable, opt_state, frozen, ref_params, *rest, **kw)
    return merge(trainable, frozen), opt_state, metrics

  def lower(params, opt_state, ref_params, *rest, **kw):
    trainable, frozen = split(params)
    return jitted.lower(trainable, opt_state, frozen, ref_params, *rest, **kw)
  update_frozen_apart.lower = lower
  return update_frozen_apart


def _bucketed_update(ctx: RuleContext, spec: LossSpec,
                     optimizer: GroupedOptimizer | optax.GradientTransformation,
                     microbatch: int, width: int, unit: int, most_rows: int,
                     mesh: Any) -> Callable:
  """`make_update`'s function with `bucket_width` > 0: one jitted forward + backward per
  chunk (its rows gathered and cut inside; one compile per chunk length), the
  weighted sums of loss, metrics and gradients, then one guarded optimizer step."""
  groups = getattr(optimizer, "groups", None)
  split = functools.partial(_split, groups)
  merge = functools.partial(_merge, groups)
  per_sequence = POLICY_LOSSES.get(spec.loss).per_sequence_metrics

  @jax.jit
  def masks_of(traj):
    masks = loss_masks(ctx, traj)
    return loss_mask(masks), masks.ratio
  masks_of = on_mesh(masks_of, mesh)

  @functools.partial(jax.jit, static_argnames=("length",))
  def chunk(trainable, frozen, ref_params, traj, advantages, aux, old_logp, rewards, rows, w, wt,
            *, length):
    n = traj.ids.shape[1]
    traj, advantages, old_logp, rewards = take_rows((traj, advantages, old_logp, rewards), rows)
    traj = buckets.cut(traj, length)
    advantages, old_logp = (buckets.cut_positions(x, length, n) for x in (advantages, old_logp))
    (loss, metrics), grads = jax.value_and_grad(
        lambda t: policy_loss(ctx, spec, merge(t, frozen), ref_params, traj, advantages, aux,
                              old_logp, rewards, max_len=n), has_aux=True)(trainable)
    weigh = lambda x, v: v * x.astype(jnp.float32)  # noqa: E731
    metrics = {k: weigh(v, w if accumulate.loss_metric(k) else wt) for k, v in metrics.items()}
    return weigh(loss, w), metrics, jax.tree.map(lambda g: weigh(g, w), grads)

  add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def apply(trainable, opt_state, grads, loss, metrics, poison):
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    trainable, opt_state, grad_norm, ok = guarded_update(optimizer, grads, opt_state, trainable,
                                                         loss, poison)
    return trainable, opt_state, dict(metrics, grad_norm=grad_norm, ok=ok)
  chunk, add, apply = (on_mesh(f, mesh) for f in (chunk, add, apply))

  def update(params, opt_state, ref_params, traj, advantages, aux, old_logp=None, rewards=None,
             poison=False):
    covered, ratio = (np.asarray(x) for x in jax.device_get(masks_of(traj)))  # B N
    rows = microbatch or buckets.chunk_rows_for(covered.shape[0], most_rows, unit)
    chunks = buckets.plan(buckets.last_scored(covered), rows, width, covered.shape[1], unit)
    order = np.concatenate([c.rows for c in chunks])  # the chunks' rows, chunk after chunk
    weights = np.asarray(accumulate.chunk_weights(spec.aggregation, covered[order], rows))
    metric_weights = np.asarray(accumulate.metric_weights(per_sequence, ratio[order], rows))
    trainable, frozen = split(params)
    acc = None
    for c, w, wt in zip(chunks, weights, metric_weights, strict=True):
      out = chunk(trainable, frozen, ref_params, traj, advantages, aux, old_logp, rewards,
                  jnp.asarray(c.rows, jnp.int32), jnp.float32(w), jnp.float32(wt),
                  length=c.length)
      acc = out if acc is None else add(acc, out)
    loss, metrics, grads = acc
    trainable, opt_state, metrics = apply(trainable, opt_state, grads, loss, metrics, poison)
    return merge(trainable, frozen), opt_state, metrics
  return update


# --------------------------------------------------------------------------- mini-batches

MINIBATCH_STREAM = 2  # numpy seed sequence [seed, step, 2]: the mini-batch shuffle


def minibatch_rows(num_rows: int, group_size: int, updates: int, seed: int,
                   step: int) -> list[np.ndarray]:
  """Row indices of each mini-batch: the batch's whole prompt groups, shuffled by
  (seed, step), split into `updates` equal parts. One part = all rows in order."""
  if updates == 1:
    return [np.arange(num_rows)]
  groups = num_rows // group_size
  if num_rows % group_size or groups % updates:
    raise ValueError(f"{groups} groups of {group_size} rows do not split into {updates} "
                     "equal mini-batches of whole groups")
  perm = np.random.default_rng([seed, step, MINIBATCH_STREAM]).permutation(groups)
  return [(part[:, None] * group_size + np.arange(group_size)[None]).reshape(-1)
          for part in np.split(perm, updates)]


@jax.jit
def take_rows(tree: Any, rows: np.ndarray) -> Any:
  """Rows of every [B, ...] leaf of a pytree (None stays None)."""
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


@jax.jit
def _mean_of(metrics: list[dict]) -> dict:
  """The mean over mini-batches of each metric, and `ok`: all of them applied."""
  oks = jnp.stack([m["ok"] for m in metrics])
  rest = [{k: v for k, v in m.items() if k != "ok"} for m in metrics]
  return dict(jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *rest), ok=jnp.all(oks))


def learn_batch(update: Callable, params: dict, opt_state: Any, ref_params: dict | None,
                traj: Any, advantages: jax.Array, aux: Any, old_logp: jax.Array | None,
                rows: list[np.ndarray], rewards: jax.Array | None = None, poison=False
                ) -> tuple[dict, Any, dict]:
  """One pass over the mini-batches `rows` (`minibatch_rows`): one `update` each,
  the old terms fixed before the first. Metrics: the mean over the mini-batches
  (`ok`: all of them applied)."""
  if len(rows) == 1:
    return update(params, opt_state, ref_params, traj, advantages, aux, old_logp, rewards,
                  poison)
  ms = []
  for r in rows:
    params, opt_state, m = update(params, opt_state, ref_params, *take_rows(
        (traj, advantages), r), aux, *take_rows((old_logp, rewards), r), poison)
    ms.append(m)
  return params, opt_state, _mean_of(ms)
