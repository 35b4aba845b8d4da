"""launch/*.sh --dry-run: the exact commands, the config, the mesh and the workdir
of every worker, and nothing run (gcloud and pip are fakes that fail; nvidia-smi,
where a test provides it, a fake that lists 2 GPUs)."""
import os
import shlex
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HRPO = "--config.rl.param_groups=(('rule/.*', 1e-3), ('.*', 3e-5))"  # quotes, spaces, parens


def _script(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fakes(tmp_path):
  """PATH: gcloud and pip that record the call and fail; no real nvidia-smi."""
  bin_dir, gpu_dir, calls = tmp_path / "bin", tmp_path / "gpu", tmp_path / "calls"
  bin_dir.mkdir(), gpu_dir.mkdir()
  for name in ("gcloud", "pip"):
    _script(bin_dir / name, f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 1\n")
  _script(gpu_dir / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: H100 (UUID: a)'\n"
          "echo 'GPU 1: H100 (UUID: b)'\n")
  system = [d for d in os.environ["PATH"].split(os.pathsep)
            if not os.path.exists(os.path.join(d, "nvidia-smi"))]
  path = os.pathsep.join([str(bin_dir), *system])
  return {"PATH": path, "GPU_PATH": f"{gpu_dir}{os.pathsep}{path}", "calls": calls}


def _launch(fakes, script, *args, env=None):
  e = {k: v for k, v in os.environ.items() if k not in ("ZONE", "CUDA_VISIBLE_DEVICES")}
  e.update({"PATH": fakes["PATH"], **(env or {})})
  p = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT, env=e,
                     capture_output=True, text=True, timeout=30)
  assert not fakes["calls"].exists(), fakes["calls"].read_text()  # a dry run runs nothing
  return p


def _ok(fakes, script, *args, **kw):
  p = _launch(fakes, script, "--dry-run", *args, **kw)
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  return [l for l in lines if l.startswith("# ")], [shlex.split(l) for l in lines
                                                    if not l.startswith("#")]


def _remote(cmd):
  """The remote command of a `gcloud compute tpus tpu-vm ssh ... --command=...` line."""
  (arg,) = [a for a in cmd if a.startswith("--command=")]
  return shlex.split(arg[len("--command="):])


def _lrjax(config, *args, python="python"):
  return [python, "-m", "lrjax.main", f"--config={config}", *args]


def _mesh(*mesh):
  return [f"--config.mesh.{k}={v}" for k, v in zip(("data", "fsdp", "tensor"), mesh)]


def _job(cmd, action="start"):
  """The run a `bash ~/job.sh ACTION 'CMD'` remote command starts, as argv."""
  remote = _remote(cmd)
  assert remote[:3] == ["bash", "~/job.sh", action], remote
  return shlex.split(remote[3])


VENV_PY = "~/lrjax-venv/bin/python"


def test_tpu_vm_dry_run(fakes):
  notes, cmds = _ok(fakes, "tpu_vm.sh", "--zone=us-central2-b", "--accelerator=v4-8",
                    "--name=box", "--config=configs/hrpo.py", HRPO, "--config.rl.steps=5")
  assert notes[:3] == [f"# config: configs/hrpo.py {HRPO} --config.rl.steps=5",
                       "# mesh: the config's own (4 devices of v4-8, 1 host)",
                       "# workdir: ~/lrjax/runs/<config name> (lrjax.main's default; "
                       "<config name>-<mode> for eval / span_probe) on box"]
  create, mkdir, tar, scp, setup, start = cmds
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "box",
                    "--zone=us-central2-b", "--accelerator-type=v4-8",
                    "--version=tpu-ubuntu2204-base"]
  assert tar[:2] == ["tar", "-czf"] and tar[-3:] == ["-C", ROOT, "."]
  for excluded in ("./runs", "./.git", ".venv", "venv", "__pycache__", ".pytest_cache"):
    assert f"--exclude={excluded}" in tar, excluded
  assert scp[4] == "scp" and "--worker=all" in scp
  assert [os.path.basename(a) for a in scp if a.startswith("/")] == [
      "setup_host.sh", "job.sh", "lrjax-src.tgz"]
  assert setup[4:6] == ["ssh", "box"]
  assert _remote(setup) == ["bash", "~/setup_host.sh", "--platform=tpu",
                            "--source=~/lrjax-src.tgz"]
  assert start[4:7] == ["ssh", "box", "--zone=us-central2-b"]
  # the config's own mesh and lrjax.main's default workdir: neither is passed
  assert _job(start) == ["mkdir", "-p", "~/lrjax", "&&", "cd", "~/lrjax", "&&", *_lrjax(
      "configs/hrpo.py", HRPO, "--config.rl.steps=5", python=VENV_PY)]
  assert "# detached: follow the run with the same command and --logs" in notes


def test_tpu_pod_dry_run_every_worker(fakes):
  notes, cmds = _ok(fakes, "tpu_pod.sh", "--zone=z", "--accelerator=v4-32", "--bucket=bk",
                    "--mesh=-1,2,2", "--no-create", "--source=git+https://example.com/lrjax@v1",
                    "--config=configs/grpo.py:prosqa")
  where = ("/mnt/bk/runs/<config name> (lrjax.main's default; <config name>-<mode> for eval / "
           "span_probe)")
  assert notes[:2] == ["# config: configs/grpo.py:prosqa",
                       "# mesh: data=4 fsdp=2 tensor=2 (16 devices of v4-32 over 4 hosts)"]
  assert notes[2:6] == [f"# worker {i}: process {i} of 4, workdir {where}" for i in range(4)]
  assert all(c[4] != "create" for c in cmds)  # --no-create
  scp, setup, mount, start = cmds
  assert [os.path.basename(a) for a in scp if a.startswith("/")] == ["setup_host.sh", "job.sh"]
  assert _remote(setup) == ["bash", "~/setup_host.sh", "--platform=tpu",
                            "--source=git+https://example.com/lrjax@v1"]
  assert "gcsfuse" in " ".join(_remote(mount)) and "--worker=all" in mount
  assert "--worker=all" in start
  assert _job(start) == ["mkdir", "-p", "/mnt/bk", "&&", "cd", "/mnt/bk", "&&",
                         "LRJAX_DISTRIBUTED=1", *_lrjax("configs/grpo.py:prosqa", *_mesh(4, 2, 2),
                                                        python=VENV_PY)]
  # a checkout's config is read from its copy on the worker; --config.mesh.* passes through
  _, cmds = _ok(fakes, "tpu_pod.sh", "--zone=z", "--accelerator=v4-32", "--bucket=bk",
                "--config=configs/hrpo.py", "--config.mesh.fsdp=4")
  assert _job(cmds[-1])[-2:] == ["--config=$HOME/lrjax/configs/hrpo.py", "--config.mesh.fsdp=4"]


@pytest.mark.parametrize("accelerator, image", [
    ("v2-8", "tpu-ubuntu2204-base"), ("v3-8", "tpu-ubuntu2204-base"),
    ("v4-8", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_every_tpu_generation_gets_a_python_jax_accepts(fakes, accelerator, image):
  notes, cmds = _ok(fakes, "tpu_vm.sh", "--zone=z", f"--accelerator={accelerator}",
                    "--config=configs/hrpo.py")
  assert cmds[0][-1] == f"--version={image}"
  assert (f"# python on the workers: {image} is Ubuntu 22.04 with Python 3.10; jax 0.10 needs "
          ">= 3.11, so setup_host.sh makes the venv with uv and CPython 3.11 where the image's "
          "is older") in notes
  (setup,) = [c for c in cmds if "--command=bash ~/setup_host.sh" in " ".join(c)]
  assert _remote(setup)[:3] == ["bash", "~/setup_host.sh", "--platform=tpu"]


def test_setup_host_installs_a_newer_python_where_the_host_has_3_10(tmp_path):
  """The dry run on a host whose only python3 is 3.10 (a fake): uv makes a 3.11 venv."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _script(bin_dir / "python3", "#!/bin/sh\ncase \"$*\" in *--version*) echo 'Python 3.10.12' ;; "
          "*) exit 1 ;; esac\n")
  env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
  p = subprocess.run(["/bin/bash", os.path.join(ROOT, "launch", "setup_host.sh"), "--dry-run",
                      "--platform=tpu", "--source=~/lrjax-src.tgz"], env=env,
                     capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  assert lines[0] == ("# python: Python 3.10.12 on this host, jax needs >= 3.11: uv makes the "
                      f"venv {tmp_path}/lrjax-venv with CPython 3.11")
  cmds = [shlex.split(l) for l in lines[1:]]
  venv_py = f"{tmp_path}/lrjax-venv/bin/python"
  assert cmds[0] == ["python3", "-m", "pip", "install", "--user", "-q", "uv"]
  assert cmds[1] == [f"{tmp_path}/.local/bin/uv", "venv", "--seed", "--python", "3.11",
                     f"{tmp_path}/lrjax-venv"]
  assert cmds[-3][:1] == ["tar"] and f"{tmp_path}/lrjax-src.tgz" in cmds[-3]  # ~ expanded
  assert cmds[-2] == [venv_py, "-m", "pip", "install", "-q", "jax[tpu]>=0.10",
                      f"{tmp_path}/lrjax"]
  assert cmds[-1][0] == venv_py


def test_gpu_dry_run_is_a_command_lrjax_accepts(fakes):
  notes, cmds = _ok(fakes, "gpu.sh", "--gpus=8", "--mesh=-1,2,1", "--install",
                    "--venv=/opt/v", "--workdir=/data/run1", "--config=configs/hrpo.py", HRPO)
  assert notes[:3] == [f"# config: configs/hrpo.py {HRPO}",
                       "# mesh: data=4 fsdp=2 tensor=1 (8 GPUs, 1 process)",
                       "# workdir: /data/run1"]
  assert any(n.startswith("# python: ") for n in notes)
  *setup, cd, train = cmds
  assert setup[-2] == ["/opt/v/bin/python", "-m", "pip", "install", "-q", "jax[cuda12]>=0.10",
                       ROOT]
  assert cd == ["cd", ROOT]
  argv = _lrjax("configs/hrpo.py", "--workdir=/data/run1", *_mesh(4, 2, 1), HRPO,
                python="/opt/v/bin/python")
  assert train == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", *argv]
  from absl import flags
  from ml_collections import config_flags
  fv, main_argv = flags.FlagValues(), argv[2:]  # as lrjax.main's flags read them
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=main_argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(main_argv)
  c = fv.config
  assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (4, 2, 1) and fv.workdir == "/data/run1"
  assert c.rl.param_groups == (("rule/.*", 1e-3), (".*", 3e-5))

  env = {"PATH": fakes["GPU_PATH"], "HOME": str(fakes["calls"].parent)}  # no venv there
  _, (_, train) = _ok(fakes, "gpu.sh", "--config=configs/grpo.py", env=env)  # nvidia-smi's GPUs
  assert train == ["env", "CUDA_VISIBLE_DEVICES=0,1", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
                   *_lrjax("configs/grpo.py")]  # the config's mesh, lrjax.main's workdir
  _, (_, train) = _ok(fakes, "gpu.sh", "--config=configs/grpo.py", "--config.mesh.tensor=3",
                      env={"CUDA_VISIBLE_DEVICES": "2,5,7", **env})  # a scheduler's choice is kept
  assert train[1] == "CUDA_VISIBLE_DEVICES=2,5,7" and train[-1] == "--config.mesh.tensor=3"
  # the README's laptop dry run: no nvidia-smi, no GPU; the -1 is left to lrjax
  notes, (_, train) = _ok(fakes, "gpu.sh", "--mesh=-1,4,1", "--config=configs/hrpo.py",
                          env={"HOME": env["HOME"]})
  assert train[-3:] == _mesh(-1, 4, 1) and "CUDA_VISIBLE_DEVICES" not in " ".join(train)


def test_gpu_git_source_is_installed_and_run_installed(fakes, tmp_path):
  clone = tmp_path / "clone"
  subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True, timeout=60)
  sha = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=True).stdout.strip()
  source = f"git+file://{clone}@{sha}"
  home = tmp_path / "home"
  notes, cmds = _ok(fakes, "gpu.sh", f"--source={source}", "--gpus=1", "--config=configs/hrpo.py",
                    env={"HOME": str(home)})
  *setup, cd, train = cmds
  py = f"{home}/lrjax-venv/bin/python"
  assert [py, "-m", "pip", "install", "-q", "jax[cuda12]>=0.10", source] in setup
  assert cd == ["cd", f"{home}/lrjax"]  # not the checkout: the installed package runs
  assert train[3:] == _lrjax("configs/hrpo.py", python=py)


def test_tarball_leaves_out_virtualenvs_runs_caches_and_git(tmp_path):
  src = tmp_path / "src"
  for f in ("lrjax/a.py", "configs/b.py", ".venv/bin/python", "venv/x", "runs/r/ckpt",
            ".git/HEAD", "lrjax/__pycache__/a.pyc", ".pytest_cache/jax/c", "lrjax.egg-info/P",
            "docs/runs.md"):
    (src / f).parent.mkdir(parents=True, exist_ok=True)
    (src / f).write_text("x")
  out = tmp_path / "s.tgz"
  subprocess.run(["bash", "-c", f'source {ROOT}/launch/_common.sh && '
                  f'tar -czf {out} "${{TAR_EXCLUDES[@]}}" -C {src} .'], check=True, timeout=30)
  names = subprocess.run(["tar", "-tzf", str(out)], capture_output=True, text=True,
                         check=True).stdout.split()
  files = sorted(n[2:] for n in names if not n.endswith("/"))
  assert files == ["configs/b.py", "docs/runs.md", "lrjax/a.py"]


def test_job_runs_detached_and_reports_its_end(tmp_path):
  """launch/job.sh with a stand-in for lrjax.main: start returns at once, the job
  runs on alone, attach prints its log to the end and exits with its status."""
  fake = tmp_path / "fake_main.sh"
  _script(fake, f"#!/bin/sh\ncase \"$*\" in *--print_workdir*) echo {tmp_path}/runs/x; exit 0 ;; "
          "esac\nsleep 1; echo trained $1; exit 0\n")
  cmd = f"cd {tmp_path} && {fake} --config=c"
  job = lambda action: subprocess.run(["bash", os.path.join(ROOT, "launch", "job.sh"), action,
                                       cmd], capture_output=True, text=True, timeout=30)
  started = job("start")
  assert started.returncode == 0 and "started on" in started.stdout, started.stderr
  assert job("status").stdout.strip() == "running"
  attached = job("attach")
  assert attached.returncode == 0 and "trained --config=c" in attached.stdout
  assert job("status").stdout.strip() == "done"
  logs = tmp_path / "runs" / "x" / "logs"
  assert [p.suffix for p in sorted(logs.iterdir())] == [".exit", ".log", ".pid"]


def test_spot_supervisor_recreates_a_preempted_tpu_and_reruns(tmp_path):
  """--spot with a fake gcloud whose TPU is preempted once after the run starts: the
  supervisor deletes it, creates it again, sets it up, starts the same command, and
  stops when worker 0 reports the run done; --delete-when-done then deletes it."""
  bin_dir, state = tmp_path / "bin", tmp_path / "state"
  bin_dir.mkdir(), state.mkdir()
  calls = state / "calls"
  _script(bin_dir / "gcloud", f"""#!/bin/bash
echo "$*" >> {calls}
starts=$(grep -c 'job.sh start' {calls})
case "$*" in
  *" describe "*)
    [ -f {state}/gone ] && exit 1
    if [ "$starts" -ge 1 ] && [ ! -f {state}/preempted ]; then
      touch {state}/preempted; echo PREEMPTED; exit 0
    fi
    echo READY ;;
  *" create "*) rm -f {state}/gone ;;
  *" delete "*) touch {state}/gone ;;
  *"job.sh status"*) if [ "$starts" -ge 2 ]; then echo done; else echo running; fi ;;
esac
exit 0
""")
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path))
  env.pop("ZONE", None)
  p = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_vm.sh"), "--zone=z", "--name=s",
                      "--bucket=bk", "--spot", "--poll=0", "--delete-when-done",
                      "--config=configs/sft.py"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=60)
  assert p.returncode == 0, p.stderr
  assert "s is PREEMPTED: re-creating it and re-running the command" in p.stderr
  log = [line.split() for line in calls.read_text().splitlines()]
  what = []
  for c in log:
    sub = c[3]
    if sub == "ssh":
      command = " ".join(c)
      sub = next(k for k in ("setup_host.sh", "gcsfuse", "job.sh start", "job.sh status")
                 if k in command)
    what.append(sub)
  once = ["create", "scp", "setup_host.sh", "gcsfuse", "job.sh start"]
  assert what == [*once, "describe", "delete", *once, "describe", "job.sh status", "delete"]
  creates = [c for c in log if c[3] == "create"]
  assert all("--spot" in c for c in creates) and creates[0] == creates[1]
  starts = [" ".join(c) for c in log if "job.sh start" in " ".join(c)]
  assert starts[0] == starts[1] and "/mnt/bk" in starts[0]  # the same command, same workdir


@pytest.mark.parametrize("script, args, message", [
    ("tpu_vm.sh", ["--zone=z"], "--config=FILE[:preset] is required"),
    ("tpu_vm.sh", ["--zone=z", "--config=configs/nope.py"], "no config file configs/nope.py"),
    ("tpu_vm.sh", ["--config=configs/hrpo.py"], "--zone=ZONE is required"),
    ("tpu_vm.sh", ["--zone=z", "--accelerator=v4-32", "--config=configs/hrpo.py"],
     "has 4 hosts: use launch/tpu_pod.sh"),
    ("tpu_vm.sh", ["--zone=z", "--mesh=3,1,1", "--config=configs/hrpo.py"],
     "mesh data=3 x fsdp=1 x tensor=1 = 3 does not match the 4 devices"),
    ("tpu_vm.sh", ["--zone=z", "--mesh=-1,-1,1", "--config=configs/hrpo.py"],
     "at most one axis may be -1"),
    ("tpu_vm.sh", ["--zone=z", "--accelerator=tpu9-8", "--config=configs/hrpo.py"],
     "unknown TPU type"),
    ("tpu_vm.sh", ["--zone=z", "--config=configs/hrpo.py", "--mesh=2,2,1",
                   "--config.mesh.data=2"], "give the mesh once"),
    ("tpu_vm.sh", ["--zone=z", "--config=configs/hrpo.py", "--spot"], "--spot needs --bucket=B"),
    ("tpu_vm.sh", ["--zone=z", "--config=configs/hrpo.py", "--buckt=b"],
     "unknown option --buckt=b"),
    ("tpu_pod.sh", ["--zone=z", "--config=configs/hrpo.py"], "needs a workdir every worker sees"),
    ("gpu.sh", ["--config=configs/hrpo.py", "--no-dry-run"], "is it a GPU node?"),
    ("gpu.sh", ["--gpus=0", "--config=configs/hrpo.py"], "want a positive number of GPUs"),
])
def test_bad_launch_settings_say_what_is_wrong(fakes, script, args, message):
  dry = [] if "--no-dry-run" in args else ["--dry-run"]
  p = _launch(fakes, script, *dry, *[a for a in args if a != "--no-dry-run"])
  assert p.returncode == 2 and message in p.stderr, (p.returncode, p.stderr)
  assert p.stdout == ""
