"""launch/colab_tpu.ipynb runs on the CPU with its short settings (what CI executes).

The parameters cell is followed by one that installs from this checkout into a
scratch folder (no dependencies, offline), picks the CPU and SHORT, and writes
the run to a temporary workdir, as papermill would inject it. The notebook
must run without an error and show the before/after table and the plots.
"""
import os

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab_tpu.ipynb")


def test_committed_notebook_is_clean_and_parametrised():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)  # no stale outputs
  (params,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  for name in ("SOURCE", "TARGET", "PLATFORM", "CONFIG", "WORKDIR", "SHORT", "OVERRIDES"):
    assert f"\n{name} = " in "\n" + params.source, name
  assert 'CONFIG = "configs/hrpo.py"' in params.source and "SHORT = False" in params.source


def test_notebook_runs_short_on_cpu(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])][0]
  workdir = tmp_path / "run"
  nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
      f"SOURCE = {ROOT!r}\nTARGET = {str(tmp_path / 'site')!r}\nPLATFORM = 'cpu'\n"
      f"WORKDIR = {str(workdir)!r}\nSHORT = True\n"))
  client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if o.output_type == "stream")
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert os.path.isdir(tmp_path / "site" / "lrjax")  # installed from the checkout
  assert "[lrjax] rl step 2 eval:" in text  # the run's own lines reached the notebook
  table = text[text.rindex("sft_final"):].splitlines()  # the notebook's table, the last
  assert [line.split()[:2] for line in table[:3]] == [["sft_final", "4"], ["rl_step0", "0"],
                                                       ["rl_final", "2"]]
  assert (workdir / "rl" / "DONE").exists() and (workdir / "rl" / "export").is_dir()
  assert len(images) >= 2  # the train and eval curves
