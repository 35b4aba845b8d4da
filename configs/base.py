"""The full lrjax config: every field any phase reads, with CPU-friendly defaults.

Method configs (sft.py, nocot.py, coconut.py, grpo.py, hrpo.py, sft_control.py)
start from `get_config()` here and change what their method needs. Any field
can be overridden on the command line, e.g.

    python -m lrjax.main --config=configs/sft.py --config.sft.steps=200 --config.seed=1

The data regime of the CPU default (`data.sft_size`): worked solutions are
scarce, problems with only a final answer are plentiful. The SFT warm-up trains
on a fixed subset of `data.sft_size` worked solutions until held-out accuracy
stops rising; the RL phase then draws from the whole train split and reads
only each problem's question and final answer. `configs/sft_control.py`
spends the RL phase's time on more SFT instead, the control RL must beat.

Task presets: every method config accepts `:arith` (the default) or `:prosqa`
(`--config=configs/hrpo.py:prosqa`), which selects the task with its
calibrated regime (`TASK_PRESETS` below).
"""
from __future__ import annotations

import ml_collections

from lrjax.data.tasks import default_data_config


def check_arg(arg: str | None, config_file: str, own: tuple[str, ...] = ()) -> None:
  """Refuses a config argument that is neither a task preset nor one of `own`."""
  if arg and arg not in TASK_PRESETS and arg not in own:
    raise ValueError(f"unknown preset {arg!r} for {config_file}; available: "
                     f"{', '.join(list(TASK_PRESETS) + list(own))}")


def fit_paper_host(c: ml_collections.ConfigDict, microbatch: int) -> None:
  """The memory settings of a `:paper` preset on its paper's host: remat per decoder
  block, `microbatch` rows per accumulated chunk of an RL update (0 = the whole
  mini-batch), the padded update (rl.bucket_width 0), and FSDP over every device
  (mesh data=1, fsdp=-1, tensor=1). A launcher's
  --mesh, or --config.mesh.*, replaces the mesh; benchmarks/README.md has each preset's
  per-device memory estimate."""
  c.model.remat = True
  c.rl.microbatch = microbatch
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  # the padded update: length buckets are measured on one host's CPU, not yet on a mesh
  c.rl.bucket_width = 0


def use_rule(c: ml_collections.ConfigDict, name: str, **fields) -> None:
  """Selects thought rule `name` (`config.rule.name`) and adds the config section holding
  its settings (`ThoughtRule.config_section`, e.g. `config.lepo`), at its typed options'
  defaults unless `fields` sets them (`use_options`)."""
  import lrjax.methods  # noqa: PLC0415,F401 - registers the methods' rules
  from lrjax.latent import RULES  # noqa: PLC0415 - configs load before lrjax runs
  section = RULES.get(name).config_section
  if fields and not section:
    raise ValueError(f"rule {name!r} has no settings; got {', '.join(sorted(fields))}")
  c.rule.name = name
  if section:
    use_options(c, section, **fields)


def use_options(c: ml_collections.ConfigDict, section: str, **fields) -> None:
  """Adds a method's own config section `section` (e.g. `latent_rl`): its typed options
  (`lrjax.method.Options`) at their defaults unless `fields` sets them, checked."""
  import dataclasses  # noqa: PLC0415
  import lrjax.methods  # noqa: PLC0415,F401 - registers the methods' options
  from lrjax.config_checks import OPTION_SECTIONS  # noqa: PLC0415
  options = OPTION_SECTIONS.get(section)
  names = [f.name for f in dataclasses.fields(options)]
  unknown = sorted(set(fields) - set(names))
  if unknown:
    raise ValueError(f"config.{section} has no field {unknown[0]!r}; its fields: "
                     f"{', '.join(names)}")
  c[section] = options(**fields).section()


def use_paper_prompt(c: ml_collections.ConfigDict, method: str, chat_template: str) -> None:
  """`data.prompt` = method `method`'s paper prompt (`lrjax.method.Method.prompt`, a format
  of `lrjax.data.prompts`), read with `data.chat_template` = `chat_template`."""
  import lrjax.methods  # noqa: PLC0415 - registers the methods
  prompt = lrjax.methods.METHODS.get(method).prompt
  if not prompt:
    raise ValueError(f"method {method!r} names no paper prompt")
  c.data.prompt, c.data.chat_template = prompt, chat_template


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config; `arg` may name a task preset (`arith`, `prosqa`)."""
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
  # compute dtype (activations, the weights as the forward reads them, the HF export)
  c.model.dtype = "float32"
  # storage dtype of the trained parameters and of AdamW's state: float32 keeps master
  # weights under a bfloat16 model.dtype (updates below bfloat16's resolution still count)
  c.model.param_dtype = "float32"
  c.model.remat = False  # rematerialise each decoder block in the backward pass
  # The learner and SFT read log-probs from hidden states in chunks of this many vocabulary
  # columns (no [B, N, V] float32 logits); 0 = full logits. Vocabularies up to it are whole.
  c.model.logits_chunk = 8192
  # LoRA adapters for the RL phase (lrjax/model/lora.py, docs/lora.md): rank 0 = off; with
  # a rank, rl.param_groups must freeze every model/ path outside model/lora/.
  c.model.lora = ml_collections.ConfigDict()
  c.model.lora.rank = 0
  c.model.lora.alpha = 0.0
  c.model.lora.targets = "q,k,v,o,gate,up,down"

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # '' = the init folder's tokenizer, or a char tokenizer built from the task

  c.data = default_data_config()
  # The CPU default: 3-4 chained additions/subtractions with operands <= 20 and
  # back-references (a GPU sweep of 16 SFT variants, 2026-11-22: multiplication made
  # SFT too slow to learn on 2 cores; 2-step problems saturate). The data regime
  # (how many worked solutions, how long the warm-up) is in the task presets below.
  c.data.arith.ops = "+-"

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Multi-process runs (pod slices, clusters; lrjax/distributed.py): '' / 0 / -1 = from
  # the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); with
  # LRJAX_DISTRIBUTED=1 JAX detects what is unset (a TPU pod's metadata, SLURM); nothing
  # set = one process. Not part of a run's identity: a resume may change it.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # host:port of process 0
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  c.sft = ml_collections.ConfigDict()
  c.sft.method = "cot"  # cot | nocot | coconut
  c.sft.steps = 2000  # the task presets below set the warm-up length
  c.sft.batch_size = 16  # ~2x the steps/s of 32 on 2 cores, about as much learning per step
  c.sft.lr = 1e-3
  c.sft.weight_decay = 0.0
  c.sft.warmup_steps = 100
  c.sft.schedule = "constant"  # constant | cosine
  c.sft.decay_steps = 0  # cosine: steps to decay over (0 = sft.steps); lr stays at the end value after
  c.sft.end_lr_frac = 0.0  # cosine: the final lr as a fraction of sft.lr
  c.sft.clip_norm = 1.0
  c.sft.max_len = 128  # tokens per training sequence (prompt + response)
  # Coconut curriculum: stage k replaces the first k steps by k*c latents.
  c.sft.latents_per_step = 1  # c
  c.sft.num_stages = 4  # stages 0..num_stages-1 replace k steps; stage num_stages is all-latent
  c.sft.stage_steps = (200, 200, 200, 200)  # durations of stages 0..num_stages-1; then all-latent
  # LatR's variant (arXiv 2512.11816): max_latents > 0 gives stage s
  # min(start_latents + s*c, max_latents) latents, replacing (latents // c) steps, all
  # steps at max_latents; latent_grad False feeds the thoughts as constants (no gradient
  # through the chain); label_markers makes <bot> and <eot> targets.
  c.sft.start_latents = 0
  c.sft.max_latents = 0  # 0 = Coconut's schedule
  c.sft.latent_grad = True
  c.sft.label_markers = False
  c.sft.eval_every = 500
  c.sft.log_every = 50
  c.sft.sample_every_eval = False  # sampled pass@k at every evaluation (default: the last only)
  # '' = start at step 0; else a workdir whose finished SFT phase this run continues
  # (same settings except the step count): the continued-SFT control uses it.
  c.sft.start_from = ""
  # T > 0: a share span_prob of the CoT rows reads <bot> + T noise inputs + <eot> after the
  # question (noise s·ρ·ε, ρ ~ U(0, span_scale)), so the model learns to read DLR's chain
  c.sft.latent_span = 0
  c.sft.span_prob = 0.5
  c.sft.span_scale = 2.0
  c.sft.span_hint = 0.0  # a share of the span rows whose span holds the answer's first tokens

  c.rule = ml_collections.ConfigDict()
  # A thought rule: a name in lrjax.latent.RULES ('token', or a method's rule). A method
  # config selects one with `use_rule`, which adds the config section holding that rule's
  # settings (e.g. config.lepo) at its method's typed defaults (lrjax/methods/).
  c.rule.name = "token"
  c.rule.num_latent = 0  # hidden: latent steps before <eot> (0 = the model's own, stored with it)

  c.rl = ml_collections.ConfigDict()
  c.rl.steps = 200
  c.rl.num_prompts = 8  # prompts per step
  c.rl.group_size = 8  # samples per prompt
  c.rl.max_new = 80  # response buffer (tokens, latent steps included)
  # Sampling temperature of RL rollouts (log-probs are taken at the same temperature).
  # The plateaued arith warm-up samples well at 1.0 (seed 0: greedy 0.529, pass@1 0.477,
  # pass@4 0.632), so most groups of 8 hold both right and wrong answers.
  c.rl.temperature = 1.0
  c.rl.top_k = 0  # 0 = off
  c.rl.top_p = 1.0
  c.rl.greedy = False  # argmax rollouts (Latent RL: one greedy rollout per prompt)
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
  # Gradient accumulation: rows per chunk of one update, each chunk's forward and backward
  # in turn (the same update, less activation memory); 0 = the whole mini-batch at once.
  c.rl.microbatch = 0
  # Length buckets: > 0 sorts a mini-batch's rows by length and runs each chunk of
  # rl.microbatch rows (when 0: the largest divisor of the mini-batch's rows up to
  # rl.bucket_rows) over its first positions, a multiple of this width, instead of the
  # whole response buffer (lrjax.rl.buckets): the same update up to float32 summation
  # order, its cost following the rows' real lengths; at most max_new / width compiles
  # of the update's chunk. 0 = off (the padded update).
  c.rl.bucket_width = 16
  c.rl.bucket_rows = 8
  c.rl.aux_losses = ()  # (name in lrjax.rl.aux_losses.AUX_LOSSES, weight) pairs
  # What the learner scores: '' = the thought rule's own objective, or a name in
  # lrjax.latent.OBJECTIVES (Latent RL's "latent_value").
  c.rl.objective = ""
  # Log train/param_change = ||theta - theta_0|| / ||theta_0|| of the backbone (keeps a host
  # copy of the starting backbone).
  c.rl.log_param_change = False
  # Learning rate per parameter group: (regex, lr) pairs; a parameter's path in
  # {"model", "rule", "heads"} joined by '/' (e.g. 'model/layers/attn/q/kernel',
  # 'rule/lambda') takes the lr of the first pattern that re.fullmatch-es it;
  # lr None freezes it (no gradient, no optimizer state). Every parameter must match.
  # 3e-5: from the plateaued arith warm-up (seed 0, greedy 0.529), 100 token-GRPO
  # steps at T = 1.0 reached 0.541 / 0.563 (steps 50 / 100) at 3e-5 and 0.503 / 0.518
  # at 1e-4; HRPO with its groups at 3x these rates fell to 0.475 / 0.498, and with
  # the backbone at 3e-4 to 0.104 at step 50. A memorised warm-up does not take
  # large noisy steps well.
  c.rl.param_groups = ((".*", 3e-5),)
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
  c.eval.show_samples = 3  # greedy completions per evaluation written to samples.jsonl

  # Faults (lrjax/faults.py): an update whose loss or gradient norm is not finite is
  # skipped; this many in a row stop the phase (the last checkpoint stays intact).
  c.train = ml_collections.ConfigDict()
  c.train.max_nonfinite = 10
  c.train.inject_nan_step = -1  # tests: make this step's loss and gradients NaN (-1 = never)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 200
  c.checkpoint.max_to_keep = 2
  TASK_PRESETS[arg if arg in TASK_PRESETS else "arith"](c)
  return c


def _arith(c: ml_collections.ConfigDict) -> None:
  """arith: 500 worked solutions, 3000 warm-up steps, lr 1e-3 cosine to 1e-4.

  How it was chosen (held-out greedy accuracy on 1000 problems, 2 CPU cores,
  batch 16): the model learns to generalise only after ~1000 steps, well after
  it has memorised its solutions (train loss < 0.05 by step 1000), and at a
  constant lr 1e-3 it then keeps drifting with +-6-point swings between
  evaluations (500 solutions, 2000 steps, seed 0: 0.469 / 0.521 / 0.408 at
  1500 / 1750 / 2000; 1800 more steps reached 0.669), so a constant-lr warm-up
  sits on a slow climb and "RL" gains there are largely the lr going down.
  Annealing the lr to 0.1x over 3000 steps settles it. Curves at steps
  0 / 250 / ... / 3000:
    seed 0: .000 .029 .051 .135 .279 .419 .527 .532 .529 .528 .527 .529 .529
    seed 1: .000 .029 .052 .117 .259 .282 .378 .403 .407 .403 .406 .410 .414
    seed 2: .000 .027 .058 .095 .180 .245 .277 .289 .290 .296 .295 .292 .291
  The last quarter (2250 -> 3000) adds +0.1 / +1.1 / -0.5 points, and the
  continued-SFT control (configs/sft_control.py, at the floor lr) stays flat.
  300 solutions level off near 0.10 and 1000 near 0.7 (batch 32, constant lr),
  so 500 is what lands the warm-up inside 0.3-0.8 -- seed 2 ends just below
  it (0.291): the spread between init seeds is wider than the band's margin.
  """
  c.data.task = "arith"
  c.data.sft_size = 500
  c.sft.steps = 3000
  c.sft.schedule = "cosine"
  c.sft.end_lr_frac = 0.1
  c.sft.eval_every = 250


def _prosqa(c: ml_collections.ConfigDict) -> None:
  """prosqa: 5000 worked solutions, arith's warm-up (3000 steps, cosine to 0.1x).

  How it was chosen (held-out greedy accuracy on 1000 problems, seed 0, batch
  16, 3000 steps, lr 1e-3 cosine to 1e-4): 500 solutions stay at the format-only
  level from step 250 on (0.301 / 0.289 / 0.298 / 0.305 / 0.304 / 0.303 at
  steps 250 / 1000 / 1500 / 2000 / 2250 / 3000; pass@4 0.431), the bottom of
  the 0.3-0.9 band. 5000 solutions learn the search: 0.223 / 0.480 / 0.391 /
  0.519 / 0.557 / 0.535 / 0.538 / 0.541 / 0.552 at steps 250 / 1000 / 1500 /
  1750 / 2000 / 2250 / 2500 / 2750 / 3000 (+1.7 over the last quarter; pass@1
  0.511, pass@4 0.862), so sampled answers disagree
  often enough for group-relative RL.
  """
  c.data.task = "prosqa"
  c.data.sft_size = 5000
  c.sft.steps = 3000
  c.sft.schedule = "cosine"
  c.sft.end_lr_frac = 0.1
  c.sft.eval_every = 250


TASK_PRESETS = {"arith": _arith, "prosqa": _prosqa}
