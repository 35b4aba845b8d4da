"""What a user runs, run: every command of the README's code blocks in README order,
and every method config in `configs/` end to end (short settings, all its phases).

The README commands run in one folder, as a user in a checkout would, with
`tests/e2e_runs.short_flags` appended to each `lrjax.main` command. Commands that
need a downloaded checkpoint (an absolute path that is not on this machine) or an
accelerator-scale run (the full compare, hours on 2 cores) are validated only: their
config is built and checked as `lrjax.main` / `lrjax.compare` would before training.
Each method config's own test reads the README's run of it (the same command) or,
for a config the README does not list, runs it itself; then it checks its metric
keys, that its export loads in `transformers` and computes lrjax's logits, and that
the finished run asked for more steps resumes and continues.
"""
from __future__ import annotations

import os
import re
import shlex
import time

import numpy as np
import pytest

from tests import e2e_runs as e2e

README = os.path.join(e2e.ROOT, "README.md")
# The README commands that are validated, not run, and why (the test checks this list).
VALIDATE_ONLY_WHY = {
    "downloaded checkpoint": lambda cmd: any(
        os.path.isabs(v) and not os.path.exists(v) for v in _flag_values(cmd)),
    "full compare (hours on 2 cores; its :smoke preset runs)": lambda cmd: (
        cmd.module == "lrjax.compare" and ":smoke" not in cmd.flag("config")),
}


class Command:
  """One `[VAR=v ...] python -m lrjax.<module> <args>` line of the README."""

  def __init__(self, text: str, line: int):
    self.text, self.line = text, line
    words = shlex.split(text)
    self.env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
      k, v = words.pop(0).split("=", 1)
      self.env[k] = v
    assert words[:2] == ["python", "-m"], text
    self.module, self.args = words[2], words[3:]

  def flag(self, name: str, default: str = "") -> str:
    for a in self.args:
      if a.startswith(f"--{name}="):
        return a.split("=", 1)[1]
    return default

  @property
  def overrides(self) -> list[str]:
    return [a for a in self.args if a.startswith("--config.")]

  def __repr__(self):
    return f"README line {self.line}: {self.text}"


def _flag_values(cmd: Command) -> list[str]:
  return [a.split("=", 1)[1] for a in cmd.args if "=" in a]


def readme_commands(path: str = README) -> list[Command]:
  """Every `python -m lrjax...` command in the README's code blocks (indented or fenced),
  in order; `a && b` keeps the lrjax part, a trailing backslash continues the line."""
  cmds, fenced, pending, start = [], False, "", 0
  for i, raw in enumerate(open(path).read().splitlines(), 1):
    if raw.strip().startswith("```"):
      fenced = not fenced
      continue
    if not (fenced or raw.startswith("    ")):
      continue
    text = raw.strip()
    if pending:
      text = pending + " " + text
    else:
      start = i
    if text.endswith("\\"):
      pending = text[:-1].strip()
      continue
    pending = ""
    for part in text.split("&&"):
      part = part.split("#")[0].strip() if " #" in part else part.strip()
      if re.match(r"([A-Z_]+=\S+ )*python -m lrjax\.", part):
        cmds.append(Command(part, start))
  return cmds


def why_validate_only(cmd: Command) -> str | None:
  return next((why for why, test in VALIDATE_ONLY_WHY.items() if test(cmd)), None)


def validate(cmd: Command) -> None:
  """Builds the command's config(s) and runs lrjax's checks, as the command would
  before training anything."""
  from lrjax.compare import Compare, apply_overrides, method_config
  from lrjax.phases import PHASES
  from lrjax.validate import validate_config
  config_arg = cmd.flag("config")
  if cmd.module == "lrjax.compare":
    cfg = e2e.load_config(config_arg)
    apply_overrides(cfg, [o.removeprefix("--config.") for o in cmd.overrides])
    import tempfile
    with tempfile.TemporaryDirectory() as d:
      units = Compare(cfg, d).units()
      assert units, cmd
      for u in units:
        for stem in u.methods:
          validate_config(method_config(stem, u.task, u.seed, cfg), PHASES)
    return
  assert cmd.module == "lrjax.main", cmd
  c = e2e.load_config(config_arg)
  apply_overrides(c, [o.removeprefix("--config.") for o in cmd.overrides])
  assert validate_config(c, PHASES), cmd


def runnable(cmd: Command) -> list[str]:
  """The command's arguments with the short-run overrides: a compare runs its first
  seed only (its units are the same per seed)."""
  if cmd.module == "lrjax.compare":
    return cmd.args + ["--config.seeds=(0,)"]
  if cmd.module != "lrjax.main":
    return cmd.args
  return cmd.args + e2e.short_flags(cmd.flag("config"), cmd.overrides)


def run_dirs(cmd: Command) -> set[str]:
  """The `runs/<name>` folders a command writes or reads: its workdir (given, or
  lrjax.main's default) and every `runs/...` value among its flags."""
  dirs = {"/".join(v.split("/")[:2]) for v in _flag_values(cmd) if v.startswith("runs/")}
  if cmd.module == "lrjax.main" and not cmd.flag("workdir"):
    from lrjax.compare import apply_overrides
    from lrjax.main import default_workdir
    c = e2e.load_config(cmd.flag("config"))
    apply_overrides(c, [o.removeprefix("--config.") for o in cmd.overrides])
    dirs.add(default_workdir(c))
  return dirs


class ReadmeRuns:
  """The README's commands in `root`; `results[i]` = (rc, out, err, s).

  A command starts once every earlier command that shares a `runs/` folder with it
  has ended (README order wherever one reads or resumes what another wrote; a
  command that names no folder waits for all before it); independent ones run
  `PARALLEL` at a time."""

  PARALLEL = 2

  def __init__(self, root):
    self.root = str(root)
    os.symlink(os.path.join(e2e.ROOT, "configs"), os.path.join(self.root, "configs"))
    self.commands = readme_commands()
    self.results, self.validated, self.retried = {}, {}, {}
    todo = []
    for i, cmd in enumerate(self.commands):
      why = why_validate_only(cmd)
      if why:
        validate(cmd)
        self.validated[i] = why
      else:
        todo.append(i)
    dirs = {i: run_dirs(self.commands[i]) for i in todo}
    after = {i: {j for j in todo if j < i and (not dirs[i] or dirs[i] & dirs[j])} for i in todo}
    running = {}  # i -> (Popen, start time)
    while todo or running:
      for i in [i for i in todo if after[i] <= set(self.results)][:self.PARALLEL - len(running)]:
        todo.remove(i)
        cmd = self.commands[i]
        running[i] = (self._start(cmd, fast=True), time.time())
      assert running, f"README commands waiting on each other: {todo}"
      i, (p, t) = next((i, r) for i, r in running.items() if r[0].poll() is not None) \
          if any(r[0].poll() is not None for r in running.values()) else (None, (None, 0))
      if i is None:
        time.sleep(0.2)
        continue
      out, err = p.communicate()
      if e2e.crashed_in_xla(p.returncode) and not self.retried.get(i):
        self.retried[i] = f"segfault with the fast XLA options: {err.strip()[-300:]}"
        running[i] = (self._start(self.commands[i], fast=False), t)
        continue
      self.results[i] = (p.returncode, out, err, time.time() - t)
      del running[i]

  def _start(self, cmd: Command, fast: bool):
    from tests import forkserver
    env = dict(e2e.env(cmd.env.get("XLA_FLAGS", ""), fast=fast),
               **{k: v for k, v in cmd.env.items() if k != "XLA_FLAGS"})
    return forkserver.spawn(cmd.module, runnable(cmd), self.root, env)

  def workdir_of(self, config_arg: str) -> str | None:
    """The workdir of the README's plain run of `config_arg` (no mode or init flags)."""
    for i, cmd in enumerate(self.commands):
      if (cmd.module == "lrjax.main" and cmd.flag("config") == config_arg and i in self.results
          and not any(o.startswith(("--config.mode=", "--config.init=")) for o in cmd.overrides)):
        name = e2e.load_config(config_arg).get("name") or "run"
        return os.path.join(self.root, cmd.flag("workdir") or os.path.join("runs", name))
    return None


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
  return ReadmeRuns(tmp_path_factory.mktemp("readme"))


def test_readme_commands_are_found():
  cmds = readme_commands()
  modules = {c.module for c in cmds}
  assert {"lrjax.main", "lrjax.compare", "lrjax.inspect", "lrjax.plot"} <= modules
  first = cmds[0]
  assert first.text == "python -m lrjax.main --config=configs/hrpo.py", first  # the main job


def test_readme_commands_run_in_order(readme):
  failed = [f"{readme.commands[i]}\n  exit {rc}: {err.strip().splitlines()[-1:] or out[-300:]}"
            for i, (rc, out, err, _) in readme.results.items() if rc != 0]
  assert not failed, "\n".join(failed)
  ran = [str(readme.commands[i]) for i in readme.results]
  print("ran:\n" + "\n".join(f"  {readme.results[i][3]:5.1f} s  {readme.commands[i].text}"
                             for i in readme.results))
  print("".join(f"run again with XLA's default options: {readme.commands[i]} ({why})\n"
                for i, why in readme.retried.items()), end="")
  print("validated only:\n" + "\n".join(f"  {readme.commands[i].text}  ({why})"
                                        for i, why in readme.validated.items()))
  assert len(ran) >= 15 and len(readme.validated) <= 4


def test_readme_eval_run_leaves_the_trained_run_alone(readme):
  """`--config.mode=eval --config.init=runs/sft` writes its own workdir."""
  i = next(i for i, c in enumerate(readme.commands)
           if c.flag("config") == "configs/sft.py" and "--config.mode=eval" in c.args)
  rc, out, err, _ = readme.results[i]
  assert rc == 0, err[-2000:]
  sft = readme.workdir_of("configs/sft.py")
  assert not os.path.exists(os.path.join(sft, "eval")), "the eval run wrote into runs/sft"


# --- every method config ------------------------------------------------------------

def _phases(workdir) -> list[str]:
  import json
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)["mode"].split(",")


@pytest.mark.parametrize("name", e2e.method_configs())
def test_method_config_runs_end_to_end(name, readme, tmp_path):
  config_arg = f"configs/{name}.py"
  workdir = readme.workdir_of(config_arg)
  extra = []
  if workdir is None:  # not in the README: run it here
    workdir = os.path.join(readme.root, "runs", f"extra-{name}")
    rc, out, err = e2e.run(["-m", "lrjax.main", f"--config={config_arg}", f"--workdir={workdir}",
                            *e2e.short_flags(config_arg)], readme.root)
    assert rc == 0, err[-3000:]
  else:
    i = next(i for i, c in enumerate(readme.commands) if c.flag("config") == config_arg)
    extra = readme.commands[i].overrides
  cfg = e2e.load_config(config_arg)
  phases = _phases(workdir)
  for p in phases:
    assert os.path.exists(os.path.join(workdir, p, "DONE")), f"{name}: phase {p} not done"
  recs = e2e.metrics(workdir)
  last = phases[-1]
  evals = [r for r in recs if r["phase"].split("/")[0] == last and "eval/accuracy" in r]
  assert evals, f"{name}: no evaluation in its last phase {last!r}"
  final = evals[-1]
  # sampled evaluation (the default): pass@k for every k of the short settings
  for k in (1, 2):
    assert 0.0 <= final[f"eval/pass@{k}"] <= 1.0, (name, final)
  assert final["eval/pass@1"] <= final["eval/pass@2"] + 1e-9
  for key in ("eval/format_rate", "eval/response_tokens", "eval/latent_steps"):
    assert key in final, (name, key)
  if cfg.rule.name != "token" or cfg.sft.method == "coconut":
    assert final["eval/latent_steps"] > 0, f"{name}: a latent rule took no latent step"
  else:
    assert final["eval/latent_steps"] == 0
  if "value" in phases:
    aucs = [r["value/roc_auc"] for r in recs if r["phase"] == "value" and "value/roc_auc" in r]
    # null (NaN) where a short warm-up leaves the rollouts one class (the phase warns and goes on)
    assert aucs and all(a is None or 0.0 <= a <= 1.0 for a in aucs), (name, aucs)
  if "rl" in phases:
    steps = [r["step"] for r in recs if r["phase"] == "rl" and "train/loss" in r]
    assert steps == list(range(1, e2e.RL_STEPS + 1)), (name, steps)
  _export_reloads_in_transformers(os.path.join(workdir, last, "export"))
  _resume_continues(name, config_arg, workdir, last, extra, readme.root, tmp_path)


def test_an_eval_run_of_a_coconut_export_uses_its_chain_length(readme, tmp_path):
  """The README's Coconut run ends in its all-latent stage and stores that chain length
  with its export; `--config.mode=eval --config.init=<run>` (rule.num_latent 0: the
  model's own) runs that many thoughts + <eot> and reproduces the run's final greedy
  evaluation."""
  import json

  from lrjax.phases.workdir import MODEL_META
  config_arg = "configs/coconut.py"
  workdir = readme.workdir_of(config_arg)
  with open(os.path.join(workdir, "sft", "export", MODEL_META)) as f:
    thoughts = json.load(f)["num_latent"]
  cfg = e2e.load_config(config_arg)
  assert thoughts == cfg.sft.latents_per_step * (cfg.sft.num_stages - 1) > 0, thoughts
  final = [r for r in e2e.metrics(workdir) if "eval/latent_steps" in r][-1]
  assert final["eval/latent_steps"] == thoughts + 1
  e = str(tmp_path / "eval")
  over = ["--config.mode=eval", f"--config.init={workdir}", "--config.rule.num_latent=0"]
  rc, out, err = e2e.run(["-m", "lrjax.main", f"--config={config_arg}", f"--workdir={e}", *over,
                          *e2e.short_flags(config_arg, over)], readme.root)
  assert rc == 0, err[-3000:]
  [ev] = [r for r in e2e.metrics(e) if r["phase"] == "eval"]
  for key in ("eval/latent_steps", "eval/accuracy", "eval/format_rate", "eval/response_tokens"):
    assert ev[key] == final[key], (key, ev, final)


def _export_reloads_in_transformers(export):
  import json

  import jax.numpy as jnp
  import torch
  import transformers

  from lrjax.model import load_hf, logits
  assert os.path.exists(os.path.join(export, "config.json")), export
  model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  cfg, params = load_hf(export, dtype=jnp.float32)
  ids = np.array([[1, 5, 9, 4, 7, 2]]) % cfg.vocab_size
  with torch.no_grad():
    want = model(torch.tensor(ids)).logits.numpy()
  got = np.asarray(logits(cfg, params, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids))))
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4, err_msg=export)
  with open(os.path.join(export, "config.json")) as f:
    assert json.load(f)["vocab_size"] == cfg.vocab_size


def _resume_continues(name, config_arg, workdir, last, extra, root, tmp_path):
  """The finished run, copied and asked for a few more steps, restores its last
  checkpoint and trains on (a finished Latent-SFT is reused as it is)."""
  import shutil
  w = str(tmp_path / "more")
  shutil.copytree(workdir, w, symlinks=True)
  flags = e2e.short_flags(config_arg, extra)
  if last == "latent_sft":
    rc, out, err = e2e.run(["-m", "lrjax.main", f"--config={config_arg}", f"--workdir={w}",
                            *extra, *flags], root)
    assert rc == 0, err[-3000:]
    assert "reusing the finished Latent-SFT model" in out, (name, out[-2000:])
    return
  more, field = ({"rl": (e2e.RL_STEPS + 1, "rl.steps")}.get(last)
                 or (None, "sft.steps"))
  if more is None:
    cur = int(next(f for f in flags if f.startswith("--config.sft.steps=")).split("=")[1])
    more = cur + 4  # one more logging period (sft.log_every = 4)
  rc, out, err = e2e.run(["-m", "lrjax.main", f"--config={config_arg}", f"--workdir={w}",
                          *extra, *flags, f"--config.{field}={more}",
                          "--config.allow_config_mismatch=True"], root)
  assert rc == 0, err[-3000:]
  done = more - (1 if last == "rl" else 4)
  assert f"continuing the finished {last.upper()} phase" in out, (name, out[-2000:])
  assert f"from step {done} to {more}" in out, (name, out[-2000:])
  steps = [r["step"] for r in e2e.metrics(w) if r["phase"] == last and "train/loss" in r]
  assert steps[-1] == more and steps == sorted(set(steps)), (name, steps)


def test_ci_runs_the_readme_test_command():
  """`.ci/run` proves the README's set-up: it runs the README's test command verbatim."""
  tests = [line.strip() for line in open(README) if line.startswith("    ") and "pytest" in line]
  assert len(tests) == 1, tests
  with open(os.path.join(e2e.ROOT, ".ci", "run")) as f:
    ci = [line.strip() for line in f if not line.lstrip().startswith("#")]
  assert tests[0] in ci, (tests[0], ci)


def test_a_segfault_with_the_fast_xla_options_runs_again_with_the_defaults(tmp_path):
  code = ("import os, signal; flags = os.environ.get('XLA_FLAGS', ''); "
          "'optimization_level=0' in flags and os.kill(os.getpid(), signal.SIGSEGV); "
          "print('flags=' + flags)")
  rc, out, err = e2e.run(["-c", code], str(tmp_path))
  assert rc == 0 and out.strip() == "flags=", (rc, out, err)
  rc, out, err = e2e.run(["-c", "import os; print(os.environ['XLA_FLAGS'])"], str(tmp_path))
  assert rc == 0 and out.strip() == e2e.FAST_XLA_FLAGS
