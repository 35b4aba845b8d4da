"""The thought-rule interface, its registry, span constants and the rule context.

At response step t the model has read input x_t (x_0 is the last prompt token)
and produced h_t (last hidden, after the final norm) and l_t = W_out h_t. A
thought rule maps

    (l_t, h_t, key, state) -> y_t, logp_t, sampled_t, span_t, x_{t+1}, record_t, state'

y_t is the response id at index t; x_{t+1} is read at position
prompt_len + t. `record_t` is what the learner needs to rebuild x_{t+1}
without re-running the recurrence (`replay_inputs`), so the policy update is
one teacher-forced forward over [prompt, x_1 .. x_N].

A rule is a `ThoughtRule` of pure functions, registered by name in `RULES`:

    @RULES.register("token")
    ...
    rule = RULES.get(ctx.rule)

Besides the step and the replay, a rule declares everything the rest of lrjax
needs to know about it, so that no module outside the rule's own branches on
its name: what the learner scores (`objective`, see `lrjax.latent.objective`),
the ids appended to every prompt (`prompt_suffix`), the special tokens it needs
in the vocabulary (`special_tokens`), the config section holding its settings
(`config_section`, its method's typed options) and how many response positions it
spends before the answer (`extra_positions`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from lrjax.config_checks import OPTION_SECTIONS
from lrjax.latent.objective import OBJECTIVES, TOKEN_OBJECTIVE, Objective
from lrjax.model.config import ModelConfig
from lrjax.registry import Registry
from lrjax.sampling import Sampling

# Per-position kinds (int8). PROMPT never appears in a response buffer.
PROMPT, LATENT, ANSWER, DONE = 0, 1, 2, 3
SPAN_DTYPE = jnp.int8


def freeze(cfg: Mapping[str, Any] | tuple | None) -> tuple:
  """Rule hyper-parameters (a mapping, ConfigDict or items) -> sorted hashable items."""
  if cfg is None:
    return ()
  items = cfg.items() if hasattr(cfg, "items") else cfg
  hashable = lambda v: tuple(map(hashable, v)) if isinstance(v, (list, tuple)) else v
  return tuple(sorted((str(k), hashable(v)) for k, v in items))


@dataclasses.dataclass(frozen=True)
class RuleContext:
  """Everything static about a rollout: a jit key, so it must stay hashable.

  model_cfg: the decoder's `ModelConfig`.
  rule: a name in `RULES` (`token`, `hidden`, `hybrid`, ...).
  rule_cfg: rule hyper-parameters; a mapping is frozen to sorted items.
  sampling: temperature / top-k / top-p / greedy of the emitted tokens.
  eos_id, pad_id: end-of-sequence (-1: none, rows run to max_new) and padding.
  extra_eos: further ids that end a row (an instruct checkpoint's other eos ids).
  bot_id, latent_id, eot_id: Coconut specials (-1 when unused).
  num_latent: latent steps of the `hidden` rule.
  max_new: response buffer length N.
  return_logits: also keep l_0 .. l_{N-1} [B, N, V] in the trajectory (debug/tests).
  objective: a name in `OBJECTIVES` the learner scores instead of the rule's own
      objective ('' = the rule's, see `objective_of`).
  objective_cfg: that objective's settings (frozen items, `objective_opt`).
  """
  model_cfg: ModelConfig
  rule: str = "token"
  rule_cfg: tuple = ()
  sampling: Sampling = Sampling()
  eos_id: int = -1
  extra_eos: tuple = ()
  pad_id: int = 0
  bot_id: int = -1
  latent_id: int = -1
  eot_id: int = -1
  num_latent: int = 0
  max_new: int = 32
  return_logits: bool = False
  objective: str = ""
  objective_cfg: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "rule_cfg", freeze(self.rule_cfg))
    object.__setattr__(self, "objective_cfg", freeze(self.objective_cfg))
    if self.max_new < 1:
      raise ValueError(f"max_new must be >= 1, got {self.max_new}")

  def opt(self, name: str, default: Any = None) -> Any:
    """A rule hyper-parameter, or `default`."""
    return dict(self.rule_cfg).get(name, default)

  def objective_opt(self, name: str, default: Any = None) -> Any:
    """A setting of the chosen objective (`objective_cfg`), or `default`."""
    return dict(self.objective_cfg).get(name, default)

  def is_eos(self, token: jax.Array) -> jax.Array:
    """token [...] int -> bool: it ends a row (eos_id or one of extra_eos)."""
    hit = token == self.eos_id
    for e in self.extra_eos:
      hit = hit | (token == e)
    return hit

  def replace(self, **kw) -> "RuleContext":
    return dataclasses.replace(self, **kw)


class StepOut(NamedTuple):
  """What a rule returns for one step (B rows)."""
  token: jax.Array  # B int32, the emitted response id y_t
  logp: jax.Array  # B float32, behaviour log_softmax(l_t/τ)[y_t] (0 when not sampled)
  sampled: jax.Array  # B bool, y_t was sampled and belongs in the policy loss
  span: jax.Array  # B int8, LATENT or ANSWER
  next_embed: jax.Array  # B H, the next input x_{t+1}
  record: dict  # name -> [B, ...], stored at column t of the trajectory
  state: Any  # the rule's per-row carry (every leaf has a leading B axis)


def no_params(model_cfg: ModelConfig, rule_cfg: Mapping | tuple, key: jax.Array) -> dict:
  return {}


def no_records(ctx: RuleContext, batch: int, max_new: int) -> dict:
  return {}


def no_state(ctx: RuleContext, batch: int) -> dict:
  return {}


def no_suffix(ctx: RuleContext) -> tuple[int, ...]:
  return ()


def no_extra_positions(num_latent: int) -> int:
  return 0


class ThoughtRule(NamedTuple):
  """A thought rule: pure functions, no state of its own.

  step(ctx, params, logits [B,V], hidden [B,H], key, state, aux) -> StepOut
  replay_inputs(ctx, params, traj, aux) -> [B, N, H] inputs x_1 .. x_N rebuilt from
      traj.ids / traj.records (stop_gradient on stored vectors, live params["rule"]
      and live embedding table).
  init_state(ctx, batch) -> per-row carry pytree.
  init_params(model_cfg, rule_cfg, key) -> params["rule"] subtree ({} if none).
  record_spec(ctx, batch, max_new) -> {name: ShapeDtypeStruct [B, N, ...]}.
  make_aux(tokenizer, rule_cfg) -> the rule's `aux` pytree (None: the rule needs none).
  metrics(ctx, params, traj, aux) -> {name: scalar} training metrics (None: none).
  objective: what the learner scores per position (`Objective`; default: the
      sampled token's log_softmax(l/τ)[y] inside the ratio).
  prompt_suffix(ctx) -> ids appended to every prompt (e.g. `hidden`: (ctx.bot_id,)).
  special_tokens: tokens the rule needs in the vocabulary (added with
      `lrjax.data.tokenizer.add_latent_tokens`), e.g. ("<bot>", "<latent>", "<eot>").
  config_section: the config section holding the rule's settings (e.g. `config.lepo`),
      whose typed options (`lrjax.method.Options`, registered under the section's
      name in `lrjax.config_checks.OPTION_SECTIONS` by the rule's method) are the one
      source of their defaults and checks; its fields are the ctx.rule_cfg keys
      (`rule_config`). '' = the rule has no settings.
  extra_positions(num_latent) -> response positions the rule spends before the
      answer (`hidden`: num_latent latents + `<eot>`); evaluation budgets add it
      to `eval.max_new`.
  prepare(ctx, params, prompt_ids [B,P], prompt_mask [B,P], key, aux) -> the per-row
      carry at t = 0 instead of `init_state`, for a rule that computes something from
      the prompt before the loop (DLR: the assistant's whole chain). None: init_state.

  `params` is the full tree {"model", "rule", "heads"}; `aux` a pytree of arrays
  that cannot live in the hashable ctx (e.g. the '####' delimiter tables).
  """
  step: Callable[..., StepOut]
  replay_inputs: Callable[..., jax.Array]
  init_state: Callable[[RuleContext, int], Any] = no_state
  init_params: Callable[[ModelConfig, Any, jax.Array], Any] = no_params
  record_spec: Callable[[RuleContext, int, int], dict] = no_records
  make_aux: Callable[[Any], Any] | None = None
  metrics: Callable[..., dict] | None = None
  objective: Objective = TOKEN_OBJECTIVE
  prompt_suffix: Callable[[RuleContext], tuple[int, ...]] = no_suffix
  special_tokens: tuple[str, ...] = ()
  config_section: str = ""
  extra_positions: Callable[[int], int] = no_extra_positions
  prepare: Callable[..., Any] | None = None


RULES: Registry[ThoughtRule] = Registry("thought rule")


def rule_of(ctx: RuleContext) -> ThoughtRule:
  return RULES.get(ctx.rule)


def objective_of(ctx: RuleContext) -> Objective:
  """What the learner scores: the objective named by ctx.objective, else the rule's."""
  return OBJECTIVES.get(ctx.objective) if ctx.objective else rule_of(ctx).objective


def prompt_suffix(ctx: RuleContext) -> tuple[int, ...]:
  """The ids ctx's rule appends to every prompt."""
  return tuple(int(i) for i in rule_of(ctx).prompt_suffix(ctx))


def rule_options_class(rule: str) -> type | None:
  """The typed options (`lrjax.method.Options`) of `rule`'s config section, or None."""
  section = RULES.get(rule).config_section
  return OPTION_SECTIONS.get(section) if section else None


def rule_config(rule: str, config: Any) -> dict:
  """ctx.rule_cfg of `rule` from a config: the fields of its section
  (`ThoughtRule.config_section`); a config without the section, or a field the section
  leaves out, takes the options' default."""
  cls = rule_options_class(rule)
  if cls is None:
    return {}
  section = RULES.get(rule).config_section
  return dataclasses.asdict(cls.from_section(config[section]) if section in config else cls())


def rule_defaults(rule: str) -> dict:
  """{field: default} of `rule`'s settings (its section's typed options)."""
  cls = rule_options_class(rule)
  return dataclasses.asdict(cls()) if cls is not None else {}


def rule_options(rule: str, rule_cfg: Mapping | tuple = ()) -> dict:
  """Rule `rule`'s settings: its defaults (`rule_defaults`) overlaid with `rule_cfg`."""
  return {**rule_defaults(rule), **dict(rule_cfg)}


def init_rule_params(ctx: RuleContext, key: jax.Array) -> Any:
  """params["rule"] for ctx's rule: one program per (rule, model config, rule settings)."""
  return _init_rule_params(ctx.rule, ctx.model_cfg, ctx.rule_cfg, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_rule_params(rule: str, model_cfg: ModelConfig, rule_cfg: Mapping | tuple,
                      key: jax.Array) -> Any:
  return RULES.get(rule).init_params(model_cfg, rule_cfg, key)


def rule_aux(rule: str, tokenizer: Any, rule_cfg: Mapping | tuple = ()) -> Any:
  """The rule's array pytree (e.g. hybrid's '####' tables, Latent-GRPO's end id), or None."""
  make = getattr(RULES.get(rule), "make_aux", None)
  return make(tokenizer, dict(rule_cfg)) if make is not None else None


def thought_positions(ctx: RuleContext, traj) -> jax.Array:
  """[B, N] bool: t < ctx.num_latent on a live row, the positions whose outputs are fed
  back as thoughts (`hidden`'s latent states, DLR's chain)."""
  n = traj.ids.shape[1]
  return (jnp.arange(n) < ctx.num_latent)[None] & (traj.span != DONE)


def embedding_table(params: dict) -> jax.Array:
  """E [V, H] from the full parameter tree."""
  return params["model"]["embed"]["embedding"]


def mix_inputs(emb: jax.Array, ids: jax.Array, z: jax.Array) -> jax.Array:
  """Σ_k z_k E[ids_k]: E [V, H], ids / z [..., K] -> float32 [..., H]."""
  return jnp.sum(z[..., None].astype(jnp.float32) * emb[ids].astype(jnp.float32), axis=-2)


def record_width(ctx: RuleContext) -> int:
  """K of a top-k mixture rule (`gumbel_soft`, `topk_gumbel`): the entries mixed and
  recorded per latent position, `top_k` capped at the vocabulary."""
  return min(int(rule_options(ctx.rule, ctx.rule_cfg)["top_k"]), ctx.model_cfg.vocab_size)


def latent_top_weight(traj, weights: jax.Array) -> dict:
  """{"latent_top_weight": mean over latent positions of max_k weights [B, N, K]}
  (1 = one-hot inputs), a top-k mixture rule's training metric."""
  latent = traj.span == LATENT  # B N
  top = jnp.max(weights, axis=-1)  # B N
  return {"latent_top_weight": jnp.sum(jnp.where(latent, top, 0.0))
          / jnp.maximum(jnp.sum(latent), 1)}


def spans(batch: int, kind: int) -> jax.Array:
  return jnp.full((batch,), kind, SPAN_DTYPE)  # B
