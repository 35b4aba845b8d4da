"""DLR, DeepLatent Reasoning (arXiv 2601.17275; docs/dlr.md).

    rule.py        the `dlr` rule and objective: a trained assistant's Gaussian chain
                   read by a frozen main model, the dual reward
    assistant.py   the assistant (a small decoder or an MLP on pooled prompt states)
    gaussian.py    the chain's density, KL and contrastive term
    losses.py      `gspo_clip` and the auxiliary losses `dlr_chain_kl`, `dlr_contrastive`
    options.py     its settings, the `dlr` config section (`DLROptions`)
"""
from __future__ import annotations

from lrjax import config_checks as checks
from lrjax.method import Method
from lrjax.methods.dlr.losses import GSPO_CLIP, dlr_chain_kl, dlr_contrastive
from lrjax.methods.dlr.options import SECTION, DLROptions
from lrjax.methods.dlr.rule import DLR as DLR_RULE, DLR_OBJECTIVE, NAME


def _microbatch_groups(value, config) -> str | None:
  """The contrastive term compares the chains of one group: a chunk holds whole groups."""
  g = int(config[SECTION].group_size)
  if value and value % g:
    return (f"must be a multiple of {SECTION}.group_size={g} (the contrastive term reads "
            "whole groups)")
  return None


_SELECTED = lambda c: SECTION in c and c.rl.objective == NAME  # noqa: E731

DLR = Method(
    name=NAME, rules={NAME: DLR_RULE}, objectives={NAME: DLR_OBJECTIVE},
    policy_losses={"gspo_clip": GSPO_CLIP},
    aux_losses={"dlr_chain_kl": dlr_chain_kl, "dlr_contrastive": dlr_contrastive},
    options={SECTION: DLROptions}, prompt="dlr",
    rows=(checks.Row("rl.microbatch", _microbatch_groups, phases=("rl",), when=_SELECTED),))
