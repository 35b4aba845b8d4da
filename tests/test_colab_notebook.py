"""The install path as users run it: launch/setup_host.sh makes a throwaway venv
from this checkout, and launch/colab_tpu.ipynb runs in a kernel of that venv with
its own install cell (SOURCE = the checkout), short, on the CPU.

Cost, kept honest and small: the venv is made with `--system-site-packages`, so
pip finds jax, flax, transformers... already installed in the test Python
instead of downloading them; lrjax and its configs are built from the checkout
and installed into the venv (not editable), and the kernel and every run import
them from there (asserted). The notebook's run is the short config run from
that venv, in a folder outside the checkout (its `--config=configs/hrpo.py`
resolves from the installed configs).
"""
import json
import os
import subprocess

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab_tpu.ipynb")


def _env():
  """This environment without the test's own import path (the venv's lrjax must win),
  with the suite's XLA_FLAGS (tests/conftest.py)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """launch/setup_host.sh --platform=cpu --source=<checkout> into a temporary folder."""
  where = tmp_path_factory.mktemp("host")
  p = subprocess.run(["bash", os.path.join(ROOT, "launch", "setup_host.sh"), "--platform=cpu",
                      f"--source={ROOT}", f"--venv={where / 'venv'}", "--system-site-packages"],
                     cwd=where, env=_env(), capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  return where / "venv", p.stdout


def test_setup_host_makes_a_venv_with_lrjax_installed(venv):
  path, out = venv
  site = subprocess.run([str(path / "bin" / "python"), "-c",
                         "import sys, lrjax, configs; print(sys.version_info >= (3, 11), "
                         "lrjax.__file__, configs.__file__)"], cwd=path.parent, env=_env(),
                        capture_output=True, text=True, timeout=120)
  ok, lrjax_file, configs_file = site.stdout.split()
  assert ok == "True" and lrjax_file.startswith(str(path)) and configs_file.startswith(str(path))
  versions = out.splitlines()[-1].split()  # the script's last line: what it installed
  assert versions[0::2][:4] == ["python", "jax", "flax", "lrjax"], versions
  assert versions[7].startswith(str(path))


def test_committed_notebook_is_clean_and_parametrised():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)  # no stale outputs
  (params,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  for name in ("SOURCE", "PLATFORM", "CONFIG", "DRIVE", "WORKDIR", "SHORT", "OVERRIDES"):
    assert f"\n{name} = " in "\n" + params.source, name
  assert 'CONFIG = "configs/hrpo.py"' in params.source and "SHORT = False" in params.source
  assert 'PLATFORM = ""' in params.source and "DRIVE = False" in params.source


def test_notebook_runs_short_in_the_venv_with_its_own_install(tmp_path, venv):
  path, _ = venv
  nb = nbformat.read(NOTEBOOK, as_version=4)
  at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])][0]
  install = [i for i, c in enumerate(nb.cells) if "def detect_platform" in c.source][0]
  nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"SOURCE = {ROOT!r}\nSHORT = True\n"))
  install += 1
  nb.cells.insert(install + 1, nbformat.v4.new_code_cell(nb.cells[install].source))  # a re-run
  kernels = tmp_path / "kernels" / "lrjax-venv"
  kernels.mkdir(parents=True)
  (kernels / "kernel.json").write_text(json.dumps({
      "argv": [str(path / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
               "{connection_file}"], "display_name": "lrjax venv", "language": "python"}))
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  km = KernelManager(kernel_name="lrjax-venv",
                     kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels.parent)]))
  run_dir = tmp_path / "content"
  run_dir.mkdir()
  client = nbclient.NotebookClient(nb, km=km, timeout=300,
                                   resources={"metadata": {"path": str(run_dir)}})
  client.execute(env=_env())  # raises CellExecutionError, with the cell's traceback, on any error
  out = lambda c: "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
  first, again = out(nb.cells[install]), out(nb.cells[install + 1])
  assert "platform: cpu" in first and f"lrjax {path}" in first  # the venv's lrjax
  assert f"lrjax is installed already from {ROOT}" in again  # the re-run is a no-op
  text = "".join(out(c) for c in nb.cells if c.cell_type == "code")
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert "[lrjax] rl step 2 eval:" in text  # the run's own lines reached the notebook
  table = text[text.rindex("sft_final"):].splitlines()  # the notebook's table, the last
  assert [line.split()[:2] for line in table[:3]] == [["sft_final", "4"], ["rl_step0", "0"],
                                                       ["rl_final", "2"]]
  workdir = run_dir / "runs" / "hrpo"  # outside the checkout
  assert (workdir / "rl" / "DONE").exists() and (workdir / "rl" / "export").is_dir()
  assert len(images) >= 2  # the train and eval curves
