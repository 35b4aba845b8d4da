"""benchmarks/rehearse.py's arguments and plan (`--dry`): nothing is built or run."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import rehearse  # noqa: E402

from lrjax.model import preset  # noqa: E402
from lrjax.phases import PHASES  # noqa: E402
from lrjax.testing import rehearsal  # noqa: E402
from lrjax.validate import validate_config  # noqa: E402


@pytest.mark.parametrize("method", list(rehearsal.METHODS))
def test_plan_keeps_the_preset_and_its_reduced_run_validates(method):
  args = rehearse.parse_args([f"--config=configs/{method}.py:paper", "--rows", "2",
                              "--samples", "2", "--max_new", "16", "--steps", "3"])
  p = rehearse.plan(args)
  _, config = rehearse.method_and_config(args.config)
  m = preset(config.model.preset)
  assert p["dims"]["hidden"] == m.hidden_size and p["dims"]["layers"] == m.num_layers
  assert p["size"] == config.model.preset and p["dtype"] == config.model.dtype
  assert p["remat"] is True  # the preset's memory setting is kept
  o = p["overrides"]
  assert (o["rl.num_prompts"], o["rl.group_size"], o["rl.max_new"], o["rl.steps"]) == (2, 2, 16, 3)
  rows = 2 * 2 // o["rl.updates_per_batch"]
  if config.rl.microbatch:  # still accumulating, in chunks that divide the mini-batch
    assert 0 < o["rl.microbatch"] <= config.rl.microbatch and rows % o["rl.microbatch"] == 0
  config.init = "/nonexistent/folder"  # what the run sets; only the fields are validated
  validate_config(rehearsal.override(config, o), PHASES)


def test_dtype_and_tiny_and_bad_arguments(capsys):
  p = rehearse.plan(rehearse.parse_args(["--config=configs/hrpo.py:paper", "--dtype",
                                         "float32", "--tiny"]))
  assert p["dtype"] == "float32" and p["overrides"]["model.dtype"] == "float32"
  assert p["size"] == "" and "reduced" in p["dims"]
  for bad in (["--rows", "0"], ["--dtype", "int8"]):
    with pytest.raises(SystemExit):
      rehearse.parse_args(["--config=configs/hrpo.py:paper", *bad])
  with pytest.raises(SystemExit, match="rehearse knows"):
    rehearse.plan(rehearse.parse_args(["--config=configs/grpo.py"]))
  assert rehearse.main(["--config=configs/hrpo.py:qwen2.5-1.5b", "--dry"])["model"] == \
      "qwen2.5-1.5b"
  assert '"rl.num_prompts": 2' in capsys.readouterr().out
