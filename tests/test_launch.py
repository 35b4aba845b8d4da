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


def _lrjax(config, workdir, mesh, *overrides):
  return ["python", "-m", "lrjax.main", f"--config={config}", f"--workdir={workdir}",
          *(f"--config.mesh.{k}={v}" for k, v in zip(("data", "fsdp", "tensor"), mesh)),
          *overrides]


def test_tpu_vm_dry_run(fakes):
  notes, cmds = _ok(fakes, "tpu_vm.sh", "--zone=us-central2-b", "--accelerator=v4-8",
                    "--name=box", "--config=configs/hrpo.py", HRPO, "--config.rl.steps=5")
  assert notes[:3] == [f"# config: configs/hrpo.py {HRPO} --config.rl.steps=5",
                       "# mesh: data=4 fsdp=1 tensor=1 (4 devices of v4-8, 1 host)",
                       "# workdir: ~/lrjax/runs/hrpo on box"]
  create, tar, scp, install, train = cmds
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "box",
                    "--zone=us-central2-b", "--accelerator-type=v4-8",
                    "--version=tpu-ubuntu2204-base"]
  assert tar[:4] == ["tar", "-czf", "/tmp/lrjax-src.tgz", "-C"] and tar[4] == ROOT
  assert scp[4] == "scp" and "--worker=0" in scp
  assert "jax[tpu]" in " ".join(_remote(install)) and install[4:6] == ["ssh", "box"]
  assert train[4:7] == ["ssh", "box", "--zone=us-central2-b"]
  assert _remote(train) == ["cd", "~/lrjax", "&&", *_lrjax(
      "configs/hrpo.py", "runs/hrpo", (4, 1, 1), HRPO, "--config.rl.steps=5")]


def test_tpu_pod_dry_run_every_worker(fakes):
  notes, cmds = _ok(fakes, "tpu_pod.sh", "--zone=z", "--accelerator=v4-32", "--bucket=bk",
                    "--mesh=-1,2,2", "--no-create", "--source=git+https://example.com/lrjax@v1",
                    "--config=configs/grpo.py:prosqa")
  workdir = "/mnt/bk/runs/grpo-prosqa"
  assert notes[:2] == ["# config: configs/grpo.py:prosqa",
                       "# mesh: data=4 fsdp=2 tensor=2 (16 devices of v4-32 over 4 hosts)"]
  assert notes[2:6] == [f"# worker {i}: process {i} of 4, workdir {workdir}" for i in range(4)]
  assert all(c[4] != "create" for c in cmds)  # --no-create
  clone, mount, train = cmds
  assert _remote(clone)[:9] == ["rm", "-rf", "~/lrjax", "&&", "git", "clone", "--depth", "1",
                                "--branch"]
  assert "https://example.com/lrjax" in _remote(clone)
  assert "gcsfuse" in " ".join(_remote(mount)) and "--worker=all" in mount
  assert "--worker=all" in train
  assert _remote(train) == ["cd", "~/lrjax", "&&", "LRJAX_DISTRIBUTED=1", *_lrjax(
      "configs/grpo.py:prosqa", workdir, (4, 2, 2))]


def test_gpu_dry_run_is_a_command_lrjax_accepts(fakes):
  notes, cmds = _ok(fakes, "gpu.sh", "--gpus=8", "--mesh=-1,2,1", "--install",
                    "--workdir=/data/run1", "--config=configs/hrpo.py", HRPO)
  assert notes == [f"# config: configs/hrpo.py {HRPO}",
                   "# mesh: data=4 fsdp=2 tensor=1 (8 GPUs, 1 process)",
                   f"# workdir: /data/run1 (in {ROOT})"]
  jax_install, lrjax_install, cd, train = cmds
  assert jax_install == ["pip", "install", "-U", "jax[cuda12]"]
  assert lrjax_install == ["pip", "install", "-e", ROOT] and cd == ["cd", ROOT]
  argv = _lrjax("configs/hrpo.py", "/data/run1", (4, 2, 1), HRPO)
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

  _, (_, train) = _ok(fakes, "gpu.sh", "--config=configs/grpo.py",
                      env={"PATH": fakes["GPU_PATH"]})  # every GPU nvidia-smi lists
  assert train[1] == "CUDA_VISIBLE_DEVICES=0,1" and "--config.mesh.data=2" in train
  _, (_, train) = _ok(fakes, "gpu.sh", "--config=configs/grpo.py", "--mesh=1,1,3",
                      env={"CUDA_VISIBLE_DEVICES": "2,5,7"})  # a scheduler's choice is kept
  assert train[1] == "CUDA_VISIBLE_DEVICES=2,5,7" and "--config.mesh.tensor=3" in train


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
    ("tpu_vm.sh", ["--zone=z", "--config=configs/hrpo.py", "--config.mesh.data=2"],
     "set the mesh with --mesh=DATA,FSDP,TENSOR"),
    ("tpu_vm.sh", ["--zone=z", "--config=configs/hrpo.py", "--bucket=b"], "unknown option --bucket=b"),
    ("tpu_pod.sh", ["--zone=z", "--config=configs/hrpo.py"], "needs a workdir every worker sees"),
    ("gpu.sh", ["--config=configs/hrpo.py"], "is it a GPU node?"),
    ("gpu.sh", ["--gpus=0", "--config=configs/hrpo.py"], "want a positive number of GPUs"),
])
def test_bad_launch_settings_say_what_is_wrong(fakes, script, args, message):
  p = _launch(fakes, script, "--dry-run", *args)
  assert p.returncode == 2 and message in p.stderr, (p.returncode, p.stderr)
  assert p.stdout == ""
