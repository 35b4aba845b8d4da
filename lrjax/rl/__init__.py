"""RL pieces as registries: advantage estimators, policy losses, aggregations, KL, aux losses.

    from lrjax.rl import ADVANTAGES, POLICY_LOSSES
    adv = ADVANTAGES.get(cfg.advantage)(rewards, group_size, eps=1e-4)
    loss, metrics = POLICY_LOSSES.get(cfg.loss)(new_logp, old_logp, adv, mask, beta=...)

Each paper's own losses are in its module under `lrjax/methods/`. The learner that
combines them (rule objectives, KL references, mini-batches) is
`lrjax.rl.learner`; docs/learner.md describes it.
"""
from lrjax.rl.advantages import (ADVANTAGES, AdvantageSpec, compute_advantages,
                                 first_token_advantages, first_token_selection, grpo, grpo_no_std,
                                 seq_logp_mean)
from lrjax.rl.aux_losses import AUX_LOSSES, heads_l2
from lrjax.rl.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3
from lrjax.rl.losses import (AGGREGATIONS, POLICY_LOSSES, ppo_clip, reinforce_onpolicy, seq_mean,
                             seq_sum_norm, token_mean)

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "AUX_LOSSES", "AdvantageSpec", "KL_ESTIMATORS", "POLICY_LOSSES",
    "compute_advantages", "first_token_advantages", "heads_l2", "first_token_selection", "grpo", "grpo_no_std", "kl_k1", "kl_k2",
    "kl_k3", "ppo_clip", "reinforce_onpolicy", "seq_logp_mean", "seq_mean", "seq_sum_norm",
    "token_mean",
]
