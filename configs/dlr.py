"""DLR: DeepLatent Reasoning (arXiv 2601.17275) after a CoT-SFT warm-up.

A small assistant (params["heads"]["assistant"], preset `tiny-assistant`)
samples a Gaussian latent chain of `rule.num_latent` vectors at the main model's
width, placed between `<bot>` and `<eot>` after the question; the frozen main
model decodes the answer greedily; only the assistant learns: dual reward
(correct ±1, format ±1·λ), group-normalised advantages, a clipped
length-normalised sequence ratio of the chain density (ε = rl.clip_eps), an
analytic Gaussian KL to the starting assistant (β) and the paper's contrastive
term (γ). docs/dlr.md separates the paper's settings from lrjax's choices.

With no flags: the warm-up of configs/grpo.py (its SFT settings, plus a latent
span: half the rows read `<bot>` + T noise inputs + `<eot>` before the solution,
`sft.latent_span`, lrjax/sft/span.py; reused
when `<workdir>/sft/DONE` exists; its final evaluation is the main model
alone), an evaluation of main + untrained assistant at RL step 0, DLR training
and a before/after summary:

    python -m lrjax.main --config=configs/dlr.py --workdir=runs/dlr
    python -m lrjax.main --config=configs/dlr.py --workdir=runs/dlr_g0 --config.dlr.gamma=0
    python -m lrjax.main --config=configs/dlr.py --config.mode=eval --config.init=runs/dlr \\
        --workdir=runs/dlr_eval

`--config=configs/dlr.py:paper` gives the paper's d, T, G, learning rates, β
and γ on stand-in presets (set --config.init to a trained main model). DLR publishes
no code; the preset's prompt is HRPO's (`data.prompt = "dlr"`, DLR's `Method.prompt`: the
chat template with HRPO's system prompt asking for "{reasoning process} #### {answer}") and its
correctness reward `hash_exact`, so the format term has the same '####' to look for.
"""
import ml_collections

from configs import base


def get_config(arg=None):
  base.check_arg(arg, "configs/dlr.py", own=("paper",))
  c = base.get_config(None if arg == "paper" else arg)
  c.name = "dlr"
  c.mode = "sft,rl"
  c.sft.method = "cot"
  # config.dlr (DLROptions, lrjax/methods/dlr/options.py): the assistant, its default
  # `tiny-assistant`; σ_0 / s at init (s: the main model's embedding RMS); log σ / s clipped
  # to [log_sigma_min, log_sigma_max = 0]; λ, β and γ at their defaults: R = R_corr + λ R_fmt
  # (λ = 0.5, the paper does not give it), β = 0.01 (KL to the starting assistant, averaged
  # over T·d), γ = 0.1 (contrastive weight; 0: the ablation). The similarity: cosine
  # (÷ temperature) | dot (÷ √(T·d), chains in units of s). Measured on the warm-up (seed 0):
  # L_cl ≈ 0.008 with dot and ≈ 0.04 with cosine at τ = 0.1, both far below log G = 2.08: the
  # softmax is saturated and L_cl has almost no gradient; τ = 0.5 is not.
  base.use_rule(c, "dlr", sigma_init=0.3, log_sigma_min=-4.0, similarity="cosine",
                temperature=0.5)
  c.rule.num_latent = 4  # T: latents between <bot> and <eot>
  # the warm-up shows half its rows a <bot> + T noise inputs + <eot> span (lrjax.sft.span):
  # without it any chain there drops the main model from 0.405 to ~0.05-0.19 (seed 0)
  c.sft.latent_span = c.rule.num_latent
  c.rl.objective = "dlr"
  c.rl.loss = "gspo_clip"
  c.rl.clip_eps = 3e-4  # on the mean log-ratio over T·d
  c.rl.advantage = "grpo"
  c.rl.beta = 0.0  # no reference copy: the KL to the starting assistant is dlr.beta
  c.rl.aux_losses = (("dlr_chain_kl", 1.0), ("dlr_contrastive", 1.0))  # weights: dlr.beta/gamma
  c.rl.updates_per_batch = 2  # the clip only acts from the second update of a batch on
  c.rl.group_size = ml_collections.FieldReference(8)
  c.rl.num_prompts = 8
  c.rl.max_new = 80 + 4 + 1  # answer budget + the chain and <eot>
  c.rl.steps = 200  # ~1.3 steps/s on 2 shared cores
  c.rl.eval_every = 100
  c.rl.log_every = 1  # train/grad_norm at every step
  c.rl.param_groups = dlr_groups(assistant=1e-3, projection=1e-3)
  c.dlr.group_size = c.rl.get_ref("group_size")  # the contrastive term's groups
  if arg == "paper":
    _paper(c)
  return c


def dlr_groups(assistant, projection):
  """The main model and the starting assistant frozen; the projection (W_up, W_σ) and
  the rest of the assistant at their own learning rates."""
  return (("model/.*", None), ("rule/.*", None), ("heads/assistant_start/.*", None),
          ("heads/assistant/(up|log_sigma)/.*", projection), ("heads/assistant/.*", assistant))


def _paper(c):
  """The paper's settings: d = 512, T <= 32, G = 64, lr 3e-5 (assistant) / 1e-4
  (projection), β = 0.01, γ = 0.1, greedy main model. Its LLaMA-2-7B main model and
  1.3B LLaMA-2 assistant stand in as `llama-3.2-1b` (main, set --config.init) and
  `qwen2.5-0.5b` (assistant); the assistant's features are projected to the main
  model's width (2048 here), so the paper's d = 512 is the assistant side only."""
  c.name = "dlr-paper"
  c.mode = "rl"
  base.use_paper_prompt(c, "dlr", chat_template="auto")
  c.rl.reward = "hash_exact"
  c.model.preset = "llama-3.2-1b"
  c.model.dtype = "bfloat16"
  c.data.task = "gsm8k"
  c.data.sft_size = 0
  c.rule.num_latent = 32
  c.sft.latent_span = 32
  c.dlr.assistant = "qwen2.5-0.5b"
  c.rl.group_size = 64
  c.rl.num_prompts = 2
  c.rl.max_new = 512 + 32 + 1
  c.rl.param_groups = dlr_groups(assistant=3e-5, projection=1e-4)
  c.rl.updates_per_batch = 1
  c.dlr.similarity = "dot"  # the paper's raw dot product (scaled by 1/√(T·d)); β, γ: defaults
  c.eval.max_new = 512
  c.eval.batch_size = 64
  base.fit_paper_host(c, microbatch=64)  # 8 GPUs: one group of 64 chains per chunk
