"""Short runs of lrjax's own commands, for the end-to-end tests.

`short_flags(config_arg)` derives, from a config file's own values, the overrides
that make any method config a run of seconds that still passes through every one
of its phases (SFT with each curriculum stage, the value phase, a few RL steps,
sampled evaluation with pass@k). Nothing here names a method: a config added to
`configs/` is shortened the same way.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_RUNS = ("base", "compare", "__init__")  # configs that are not a method's run


def method_configs() -> list[str]:
  """Every method config in `configs/` (listed, so a new one joins the tests)."""
  return sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                if f.endswith(".py") and f[:-3] not in NOT_RUNS)


def load_config(config_arg: str):
  """The ConfigDict of `configs/<m>.py[:preset]` (a path relative to the checkout)."""
  path, _, preset = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_lrjax_cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  spec.loader.exec_module(mod)
  return mod.get_config(preset or None)


SFT_STEPS = 16  # per run without a curriculum
# with one: 2 steps per curriculum stage (each stage's batch shapes compile, the
# seconds of a short run), then one logging period in the all-latent stage
STAGE_STEPS, LAST_STAGE_STEPS = 2, 4
RL_STEPS = 2


def short_flags(config_arg: str, overrides: list[str] = ()) -> list[str]:
  """Overrides for a seconds-long run of `config_arg` (after the command's own
  `--config.a.b=v` `overrides`) through all its phases."""
  from lrjax.compare import apply_overrides
  c = load_config(config_arg)
  apply_overrides(c, [o.removeprefix("--config.") for o in overrides])
  phases = c.mode.split(",")
  f = {"data.train_size": 2000, "checkpoint.every": 4,
       "eval.num_problems": 16, "eval.batch_size": 16, "eval.max_new": 40,
       "eval.num_samples": 2, "eval.pass_k": (1, 2), "eval.show_samples": 2}
  if c.data.sft_size > 2000:
    f["data.sft_size"] = 2000
  if "sft" in phases:
    steps = SFT_STEPS
    if c.sft.method == "coconut":  # every curriculum stage, then the all-latent stage
      f["sft.stage_steps"] = (STAGE_STEPS,) * c.sft.num_stages
      steps = STAGE_STEPS * c.sft.num_stages + LAST_STAGE_STEPS
    if c.sft.start_from or c.sft.get("decay_steps", 0) and c.sft.decay_steps < c.sft.steps:
      # a continued warm-up: the warm-up's schedule, then as many steps again
      f["sft.decay_steps"] = steps
      steps *= 2
    f.update({"sft.steps": steps, "sft.batch_size": 8, "sft.warmup_steps": 2,
              "sft.log_every": 4, "sft.eval_every": steps})
  if "latent_sft" in phases:  # every stage, a few steps each
    f.update({"latent_sft.encoder_steps": 2, "latent_sft.decoder_steps": 2,
              "latent_sft.union_steps": 2, "latent_sft.stage2_steps": 4,
              "latent_sft.batch_size": 8, "latent_sft.eval_every": 4,
              "latent_sft.log_every": 2})
  if "value" in phases:
    f.update({"latent_rl.prompts": 8, "latent_rl.samples": 2, "latent_rl.epochs": 2,
              "latent_rl.batch_size": 64})
  if "rl" in phases:
    prompts = max(2, c.rl.updates_per_batch)
    f.update({"rl.steps": RL_STEPS, "rl.num_prompts": prompts, "rl.max_new": 40,
              "rl.eval_every": RL_STEPS, "rl.log_every": 1})
    if not c.rl.greedy:
      f["rl.group_size"] = min(c.rl.group_size, 4)
  return [f"--config.{k}={_flag_value(v)}" for k, v in f.items()]


def _flag_value(v) -> str:
  return "(" + ",".join(map(str, v)) + ",)" if isinstance(v, tuple) else str(v)


# XLA:CPU's fast-compile options, for these runs and (tests/conftest.py) the test
# processes (compiling is most of a short run's cost): no LLVM backend optimisation
# and no expensive LLVM passes (about a third less CPU per short run), and the
# classic elemental emitters in place of the MLIR fusion emitters (a further ~35%
# less CPU for a cold short HRPO run, 17.0 -> 10.8 s; 88 -> 49 s for
# tests/test_buckets.py + tests/test_latent_rl.py without the compilation cache), and
# each program's LLVM module compiled whole instead of split for parallel codegen (both
# cores are busy with other tests; 3 short runs cold then warm, paired: 0.93x the CPU).
FAST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
# The same options for one program (`jax.jit(..., compiler_options=FAST_COMPILER_OPTIONS)`,
# which tests written before the suite-wide flags pass); none under LRJAX_TEST_XLA=default.
FAST_COMPILER_OPTIONS = ({} if os.environ.get("LRJAX_TEST_XLA", "fast") == "default" else
                         {"xla_backend_optimization_level": 0,
                          "xla_llvm_disable_expensive_passes": True,
                          "xla_cpu_use_fusion_emitters": False,
                          "xla_cpu_parallel_codegen_split_count": 1})
# Per-program compiler options for a test that asserts two different programs
# bit-identical: XLA:CPU's fusion emitters, as users run them (the classic emitters
# may order a reduction's float32 sums differently in two programs that differ elsewhere).
FUSION_EMITTERS = {"xla_cpu_use_fusion_emitters": True}


def env(xla_flags: str = "", fast: bool = True) -> dict:
  """The environment of a short run: offline, CPU, unbuffered, this checkout first,
  XLA_FLAGS = the fast-compile options (`fast`) and `xla_flags`."""
  e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
           PYTHONUNBUFFERED="1")
  flags = " ".join(f for f in (FAST_XLA_FLAGS if fast else "", xla_flags) if f)
  e.pop("XLA_FLAGS", None)
  if flags:
    e["XLA_FLAGS"] = flags
  return e


def crashed_in_xla(returncode: int) -> bool:
  """A segfault: XLA:CPU has crashed once compiling with the fast options (a
  benchmark's compile); such a run is run again with XLA's defaults, and says so."""
  return returncode == -signal.SIGSEGV


def run(args: list[str], cwd: str, timeout: int = 600) -> tuple[int, str, str]:
  """`python <args>` in `cwd`, for `args` = ["-m", module, ...] or ["-c", code, ...];
  (returncode, stdout, stderr). Forked from a warm interpreter (`tests.forkserver`)."""
  from tests import forkserver
  assert args[0] in ("-m", "-c"), args
  launch = forkserver.run if args[0] == "-m" else forkserver.run_code
  for fast in (True, False):
    rc, out, err = launch(args[1], args[2:], cwd, env(fast=fast), timeout=timeout)
    if not (fast and crashed_in_xla(rc)):
      break
    print(f"segfault with the fast XLA options, run again with the defaults: {args}")
  return rc, out, err


def metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    return [json.loads(line) for line in fh if line.strip()]
