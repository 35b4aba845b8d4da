"""The methods lrjax ships, one module (or small package) per paper, each exporting one
`lrjax.method.Method` record; importing this package registers them all (the only
place that does):

    hrpo          HRPO's `hybrid` rule                                   (docs/hrpo.md)
    coconut       Coconut's `hidden` rule and its SFT curriculum        (docs/coconut.md)
    latr          Latent RL: the value head, the `value` phase, `latent_value`, `value_bce`
    lepo          LEPO's `gumbel_soft` rule and objective               (docs/lepo.md)
    latent_grpo   Latent-GRPO's `topk_gumbel` rule, the `latent_sft` phase
    dlr           DLR's `dlr` rule and objective, `gspo_clip`, its auxiliary losses

A method of your own: build its `Method` in your module and call `register_method`
with it, as below (docs/learner.md, "Adding a method").
"""
from lrjax.method import METHODS, Method, register_method, unregister_method
from lrjax.methods.coconut import COCONUT
from lrjax.methods.dlr import DLR
from lrjax.methods.hrpo import HRPO
from lrjax.methods.latent_grpo import LATENT_GRPO
from lrjax.methods.latr import LATR
from lrjax.methods.lepo import LEPO

SHIPPED = (HRPO, COCONUT, LATR, LEPO, LATENT_GRPO, DLR)
for _method in SHIPPED:
  if _method.name not in METHODS:
    register_method(_method)

__all__ = ["METHODS", "Method", "SHIPPED", "register_method", "unregister_method"]
