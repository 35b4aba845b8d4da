"""`python -m lrjax.compare`: every method on the same tasks and seeds.

    python -m lrjax.compare --config=configs/compare.py --workdir=runs/compare
    python -m lrjax.compare --config=configs/compare.py:smoke --workdir=runs/compare_smoke

Fields:
  methods: config stems under configs/ (a row each; a stem without a config file
    gets a "not available" line), in table order.
  seeds, tasks: every method runs on every (task, seed).
  task_methods: task -> the methods to run on that task instead of `methods`.
  task_seeds: task -> the seeds to run on that task instead of `seeds`.
  overrides: "all" and method stems -> tuples of "field=value" strings applied
    to the method's config (after the task preset; "all" first).
  jobs: (task, seed) groups trained at once, each in a worker process pinned to
    one core (2: the two cores of the reference machine; 1: everything in this
    process, one run after another).

`:smoke` is 2 methods (token GRPO, HRPO) x 2 seeds with a few steps each on a
small problem set: a few minutes on 2 CPU cores.
"""
import ml_collections

ALL_METHODS = ("sft", "sft_control", "nocot", "coconut", "grpo", "hrpo", "lepo",
               "latent_grpo", "latr", "latent_rl", "dlr")


def get_config(arg=None):
  if arg not in (None, "", "smoke"):
    raise ValueError(f"unknown preset {arg!r} for configs/compare.py; available: smoke")
  c = ml_collections.ConfigDict()
  c.methods = ALL_METHODS
  c.seeds = (0, 1, 2)
  c.tasks = ("arith", "prosqa")
  c.task_methods = ml_collections.ConfigDict({"prosqa": ("sft", "coconut", "latr_sft")})
  # prosqa on one seed keeps the whole default within 2.5 h on 2 cores (measured: README)
  c.task_seeds = ml_collections.ConfigDict({"prosqa": (0,)})
  # Every RL step logged (grad-norm spikes, the spread of train/correct) and held-out
  # evaluations every 50 RL steps for the curves; neither changes what is trained.
  c.overrides = ml_collections.ConfigDict({"all": ("rl.log_every=1", "rl.eval_every=50")})
  c.jobs = 2
  if arg == "smoke":
    _smoke(c)
  return c


def _smoke(c) -> None:
  c.methods = ("grpo", "hrpo")
  c.seeds = (0, 1)
  c.jobs = 1
  c.tasks = ("arith",)
  c.task_methods = ml_collections.ConfigDict()
  c.task_seeds = ml_collections.ConfigDict()
  c.overrides = ml_collections.ConfigDict({"all": (
      "data.train_size=2000", "sft.steps=24", "sft.batch_size=16", "sft.log_every=4",
      "sft.eval_every=12", "sft.warmup_steps=2", "sft.decay_steps=0",
      "rl.steps=2", "rl.num_prompts=4", "rl.group_size=4", "rl.max_new=48",
      "rl.eval_every=2", "rl.log_every=1", "checkpoint.every=12",
      "eval.num_problems=32", "eval.batch_size=32", "eval.sampled=False", "eval.max_new=48")})
