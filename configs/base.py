"""The full lrjax config: every field any phase reads, with CPU-friendly defaults.

Method configs (sft.py, nocot.py, coconut.py, grpo.py, hrpo.py) start from
`get_config()` here and change what their method needs. Any field can be
overridden on the command line, e.g.

    python -m lrjax.main --config=configs/sft.py --config.sft.steps=200 --config.seed=1
"""
from __future__ import annotations

import ml_collections

from lrjax.data.tasks import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.name = "base"  # the default workdir is runs/<name>
  c.seed = 0  # drives init, sampling and data order (the eval split has data.seed)
  # Phases to run, in order: any of sft, rl, eval joined by ',' (e.g. 'sft,rl').
  c.mode = "sft"
  # '' = random init of model.preset; else an HF folder, or a workdir whose export is used.
  c.init = ""
  c.allow_config_mismatch = False  # resume even if the stored config differs

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # a name in lrjax.model.PRESETS (ignored when init is an HF folder)
  c.model.dtype = "float32"
  c.model.remat = False

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # '' = the init folder's tokenizer, or a char tokenizer built from the task

  c.data = default_data_config()
  # The CPU default: 3-4 chained additions/subtractions with operands <= 20 and
  # back-references. Calibrated (GPU sweep of 16 SFT variants, 2026-11-22) so that
  # the tiny model reaches ~0.6-0.7 greedy accuracy after 800 CoT steps at
  # batch 32, with headroom left for RL (multiplication made SFT too slow to
  # learn on 2 cores; 2-step problems saturate).
  c.data.arith.ops = "+-"

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.sft = ml_collections.ConfigDict()
  c.sft.method = "cot"  # cot | nocot | coconut
  c.sft.steps = 800
  c.sft.batch_size = 32  # small batches learned ~2x faster per example than 128 here
  c.sft.lr = 1e-3
  c.sft.weight_decay = 0.0
  c.sft.warmup_steps = 100
  c.sft.schedule = "constant"  # constant | cosine
  c.sft.clip_norm = 1.0
  c.sft.max_len = 128  # tokens per training sequence (prompt + response)
  # Coconut curriculum: stage k replaces the first k steps by k*c latents.
  c.sft.latents_per_step = 1  # c
  c.sft.num_stages = 4  # stages 0..num_stages-1 replace k steps; stage num_stages is all-latent
  c.sft.stage_steps = (200, 200, 200, 200)  # durations of stages 0..num_stages-1; then all-latent
  c.sft.eval_every = 400
  c.sft.log_every = 50
  c.sft.sample_every_eval = False  # sampled pass@k at every evaluation (default: the last only)
  # '' = start at step 0; else a workdir whose finished SFT phase this run continues
  # (same settings except the step count): the continued-SFT control uses it.
  c.sft.start_from = ""

  c.rule = ml_collections.ConfigDict()
  c.rule.name = "token"  # a thought rule: token | hidden | hybrid
  c.rule.num_latent = 0  # hidden: latent steps before <eot> (0 = from the curriculum)
  c.rule.gate_c = 8.0  # hybrid: a = exp(-c * softplus(-Lambda) * r)
  c.rule.r_min = 0.99  # hybrid: Lambda init from u ~ U[r_min, 0.999]
  c.rule.top_k = 50  # hybrid: top-k of the soft-embedding distribution

  c.rl = ml_collections.ConfigDict()
  c.rl.steps = 200
  c.rl.num_prompts = 8  # prompts per step
  c.rl.group_size = 8  # samples per prompt
  c.rl.max_new = 80  # response buffer (tokens, latent steps included)
  c.rl.temperature = 1.0
  c.rl.top_k = 0  # 0 = off
  c.rl.top_p = 1.0
  c.rl.advantage = "grpo"
  c.rl.adv_eps = 1e-4
  c.rl.loss = "ppo_clip"  # a name in lrjax.rl.losses.POLICY_LOSSES
  c.rl.aggregation = "token_mean"
  c.rl.clip_eps = 0.2
  c.rl.clip_eps_high = 0.0  # upper clip 1 + clip_eps_high (DAPO's clip-higher); 0 = symmetric
  c.rl.dual_clip = 0.0  # dual-clip constant c > 1 for A < 0 (arXiv 1912.09729); 0 = off
  c.rl.beta = 0.0  # KL(policy || reference) weight
  c.rl.kl_estimator = "k3"  # a name in lrjax.rl.kl.KL_ESTIMATORS: k1 | k2 | k3
  c.rl.kl_clamp = 0.0  # clamp each per-token KL estimate to [-c, c]; 0 = off
  # The frozen reference (the starting model, rule and heads) replays the policy's stored
  # inputs ("policy_inputs") or plain token embeddings ("token_inputs", HRPO's choice).
  c.rl.kl_reference = "policy_inputs"
  # Advantage switches: rows that hit rl.max_new get A = 0 (and, with truncated_in_stats
  # False, leave the group statistics); Latent-GRPO's first-token selection.
  c.rl.mask_truncated = False
  c.rl.truncated_in_stats = True
  c.rl.first_token_selection = False
  # Dynamic sampling: drop groups with all-equal rewards and roll out more prompts until
  # the batch is full, at most this many rollouts per step (0 = off).
  c.rl.dynamic_sampling_tries = 0
  # Optimizer updates per rollout batch, each on a shuffled mini-batch of whole prompt
  # groups (must divide num_prompts; 1 with a loss that has no ratio).
  c.rl.updates_per_batch = 1
  c.rl.aux_losses = ()  # (name in lrjax.rl.aux_losses.AUX_LOSSES, weight) pairs
  # Learning rate per parameter group: (regex, lr) pairs; a parameter's path in
  # {"model", "rule", "heads"} joined by '/' (e.g. 'model/layers/attn/q/kernel',
  # 'rule/lambda') takes the lr of the first pattern that re.fullmatch-es it;
  # lr None freezes it (no gradient, no optimizer state). Every parameter must match.
  c.rl.param_groups = ((".*", 1e-4),)
  c.rl.weight_decay = 0.0
  c.rl.b1 = 0.9
  c.rl.b2 = 0.99
  c.rl.clip_norm = 1.0
  c.rl.warmup_steps = 0
  c.rl.schedule = "constant"
  c.rl.reward = ""  # '' = the task's default reward
  c.rl.eval_every = 100
  c.rl.log_every = 10

  c.eval = ml_collections.ConfigDict()
  c.eval.num_problems = 1000  # held-out problems (0 = the whole eval split)
  c.eval.batch_size = 500
  c.eval.max_new = 80  # the longest default CoT is ~70 characters
  c.eval.num_samples = 4  # n samples per problem for pass@k at temperature eval.temperature
  c.eval.pass_k = (1, 4)
  c.eval.temperature = 1.0
  c.eval.sampled = True  # also compute pass@k (costs num_samples rollouts per problem)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 200
  c.checkpoint.max_to_keep = 2
  return c
