"""A run's files: each phase keeps its own in `<workdir>/<phase>/`.

    <workdir>/config.json      the run's config (resume safety, `lrjax.config_utils`)
    <workdir>/metrics.jsonl    every phase's metrics (`lrjax.metrics`)
    <workdir>/tokenizer/       the character tokenizer of a randomly initialised model
    <workdir>/<phase>/ckpt/    Orbax checkpoints of the phase's state (resume)
    <workdir>/<phase>/export/  HF weights + tokenizer (+ the rule sidecar), when the phase completes
    <workdir>/<phase>/DONE     the phase's summary, written last

`config.init=<workdir>` starts from the newest export of another run.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax

from lrjax import parallel
from lrjax.checkpoint import CheckpointMismatchError, Checkpointer, abstract_state
from lrjax.config_utils import ConfigError
from lrjax.data import special as special_lib, tokenizer as tok_lib
from lrjax.metrics import say
from lrjax.model import save_hf


def phase_dir(run, phase: str) -> str:
  return os.path.join(run.workdir, phase)


def is_done(run, phase: str) -> bool:
  return os.path.exists(os.path.join(phase_dir(run, phase), "DONE"))


def mark_done(run, phase: str, summary: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(phase_dir(run, phase), "DONE"), "w") as f:
      json.dump(summary, f, indent=2)


def checkpointer(run, phase: str) -> Checkpointer:
  return Checkpointer(os.path.join(phase_dir(run, phase), "ckpt"),
                      max_to_keep=run.config.checkpoint.max_to_keep)


def try_resume(run, phase: str, ckpt: Checkpointer, state: Any) -> tuple[Any, int, dict]:
  """(state, next step, meta): restored from the newest checkpoint that restores.

  A checkpoint that cannot be read (truncated, corrupted, files missing) is
  reported with its step and path and moved aside (`<step>.corrupt-<n>`, never
  deleted), and the previous one is tried; one whose tensors differ from this
  run's state is a ConfigError naming the tensor (nothing is moved). When none
  restores the phase stops with a one-line error naming the folder.
  """
  target = abstract_state(state)
  steps = ckpt.all_steps()
  for step in reversed(steps):
    try:
      ckpt.check_structure(target, step)
      restored, meta = ckpt.restore(target, step)
    except CheckpointMismatchError as e:
      raise ConfigError(f"{e} (the config's shapes changed? resume needs the same model)") from e
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
      bad = os.path.join(ckpt.directory, str(step))
      moved = ckpt.move_aside(step)
      msg = (f"the {phase} checkpoint at step {step} ({bad}) cannot be restored "
             f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); moved aside to {moved}")
      logging.warning(msg)
      say(f"[lrjax] warning: {msg}")
      continue
    run.metrics.truncate(phase, step)
    from lrjax.phases.held_out import truncate_samples  # noqa: PLC0415
    truncate_samples(run.workdir, phase, step)
    logging.info("resuming %s at step %d", phase, step)
    say(f"[lrjax] resuming phase {phase!r} from its checkpoint at step {step}")
    return restored, step, meta
  if steps:
    raise ConfigError(f"no checkpoint of phase {phase!r} in {ckpt.directory} restores (steps "
                      f"{', '.join(map(str, steps))} were moved aside); remove the folder to "
                      "start the phase again")
  return state, 0, {}


def export(run, phase: str, params: dict, rule_params: dict | None = None,
           num_latent: int = 0, heads: dict | None = None) -> str:
  """Writes `<workdir>/<phase>/export`: HF weights + tokenizer (+ rule sidecar, + heads
  sidecar) and `lrjax_model.json` (the model's latent chain length, `num_latent`)."""
  path = os.path.join(phase_dir(run, phase), "export")
  # gathered on every process (a collective), written by process 0
  params, rule_params, heads = parallel.fetch((params, rule_params, heads))
  if jax.process_index() == 0:
    save_hf(run.model_cfg, params, path)
    tok_lib.save_tokenizer(run.tokenizer, path)
    bos = special_lib.bos_ids(run.tokenizer)
    special_lib.write_generation_config(path, special_lib.Special(
        run.special["pad_id"], tuple(run.special.get("eos_ids", (run.special["eos_id"],))), tuple(run.model_cfg.suppress_ids)),
        bos[0] if bos else None)
    if rule_params:
      save_sidecar(path, run.config.rule.name, rule_params)
    if heads:
      save_tree(os.path.join(path, HEADS), heads)
    save_model_meta(path, num_latent)
  return path


HEADS = "lrjax_heads.safetensors"


def save_tree(file: str, tree: dict, metadata: dict | None = None) -> None:
  """A nested dict of arrays as flat safetensors (keys joined by '/')."""
  from flax import traverse_util
  from safetensors.numpy import save_file
  import numpy as np
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
  save_file({k: np.asarray(v) for k, v in flat.items()}, file, metadata=metadata)


def load_tree(file: str) -> dict:
  """What `save_tree` wrote, as nested dicts of jax arrays."""
  from flax import traverse_util
  from safetensors import safe_open
  import jax.numpy as jnp
  with safe_open(file, framework="np") as h:
    flat = {k: jnp.asarray(h.get_tensor(k)) for k in h.keys()}
  return traverse_util.unflatten_dict(flat, sep="/")


MODEL_META = "lrjax_model.json"


def save_model_meta(path: str, num_latent: int) -> None:
  """What evaluating or continuing the model needs beyond its weights: the number
  of latent thoughts its `hidden` chain was trained with (0: none)."""
  with open(os.path.join(path, MODEL_META), "w") as f:
    json.dump({"num_latent": int(num_latent)}, f, indent=2)


def load_model_meta(path: str) -> dict:
  """The export's `lrjax_model.json` ({} for an HF folder without one); a file that
  is not a JSON object with an integer `num_latent` >= 0 is an error naming it."""
  f = os.path.join(path, MODEL_META)
  if not os.path.exists(f):
    return {}
  try:
    with open(f) as h:
      meta = json.load(h)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"{f}: not readable as JSON ({e})") from e
  n = meta.get("num_latent") if isinstance(meta, dict) else None
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ConfigError(f"{f}: 'num_latent' must be an integer >= 0, got {n!r}")
  return meta


def _export_phases(workdir: str) -> list[str]:
  """The phases whose export a workdir's model is read from, newest first: its stored
  config's `mode` from the last phase back, then `rl` and `sft`."""
  from lrjax.config_utils import CONFIG_FILE, mode_phases  # noqa: PLC0415
  try:
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
      mode = json.load(f).get("mode", "")
  except (OSError, ValueError, AttributeError):
    mode = ""
  order = [*reversed(mode_phases(mode if isinstance(mode, str) else "")), "rl", "sft"]
  return list(dict.fromkeys(order))


def resolve_init_folder(path: str) -> str:
  """An HF folder, or a workdir whose newest export (the last phase of its `mode` that
  exported a model, e.g. rl, then latent_sft, then sft) is returned."""
  if os.path.exists(os.path.join(path, "config.json")) and (
      os.path.exists(os.path.join(path, "model.safetensors"))
      or os.path.exists(os.path.join(path, "model.safetensors.index.json"))):
    return path
  for phase in _export_phases(path):
    export_dir = os.path.join(path, phase, "export")
    if os.path.exists(os.path.join(export_dir, "config.json")):
      return export_dir
  raise ConfigError(f"config.init={path!r} is neither an HF model folder nor a workdir with an export")


SIDECAR = "lrjax_rule.safetensors"


def save_sidecar(path: str, rule: str, rule_params: dict) -> None:
  """Thought-rule parameters beside an HF export (transformers ignores the file)."""
  save_tree(os.path.join(path, SIDECAR), rule_params, metadata={"rule": rule})


def load_sidecar(path: str) -> tuple[str, dict] | None:
  """(rule name, params) from an export's sidecar, or None when there is none."""
  from safetensors import safe_open
  f = os.path.join(path, SIDECAR)
  if not os.path.exists(f):
    return None
  with safe_open(f, framework="np") as h:
    rule = (h.metadata() or {}).get("rule", "")
  return rule, load_tree(f)
