"""Latent thoughts as a transcript: the samples every evaluation writes.

    python -m lrjax.inspect --workdir=runs/hrpo [--phase=rl] [--step=-1] [--n=3]

Reads `<workdir>/samples.jsonl` (written when `eval.show_samples` > 0) and
prints, for the chosen evaluation (default: the last one), each problem's
prompt, the completion with its reward, and every latent position in the
rule's readable form: the (token, weight) pairs of a soft mixture (LEPO,
Latent-GRPO), the nearest vocabulary tokens by cosine (Coconut, LatR), or the
token and the gate's token share (HRPO).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags


def read_samples(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "samples.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no samples (run with eval.show_samples > 0)")
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
  return out


def pick(samples: list[dict], phase: str | None, step: int) -> list[dict]:
  """The samples of one evaluation: `phase` (default: the last one's) at `step`
  (−1: that phase's last evaluation)."""
  if phase is None:
    phase = samples[-1]["phase"]
  mine = [s for s in samples if s["phase"] == phase]
  if not mine:
    raise ValueError(f"no samples of phase {phase!r} (phases: "
                     f"{', '.join(dict.fromkeys(s['phase'] for s in samples))})")
  steps = sorted({s["step"] for s in mine})
  at = steps[-1] if step < 0 else step
  if at not in steps:
    raise ValueError(f"no samples of phase {phase!r} at step {at} (steps: {steps})")
  return [s for s in mine if s["step"] == at]


def describe(pos: dict) -> str:
  """One latent position as text."""
  if "mix" in pos:
    return " + ".join(f"{w:.2f}·{tok!r}" for tok, w in pos["mix"])
  if "nearest" in pos:
    return "≈ " + ", ".join(f"{tok!r} ({sim:.2f})" for tok, sim in pos["nearest"])
  if "token_share" in pos:
    return f"{pos['token']!r} (token share {pos['token_share']:.3f})"
  return json.dumps(pos)


def transcript(samples: list[dict], n: int) -> str:
  lines = []
  for s in samples[:n]:
    lines += [f"── {s['phase']} step {s['step']} ── reward {s['reward']:g} (answer {s['answer']!r})",
              f"prompt:     {s['prompt']!r}", f"completion: {s['completion']!r}"]
    for pos in s.get("latent", []):
      lines.append(f"  t={pos['t']:>3}  {describe(pos)}")
    lines.append("")
  return "\n".join(lines)


def main(argv, workdir: str, phase: str | None, step: int, n: int) -> None:
  del argv
  try:
    chosen = pick(read_samples(workdir), phase, step)
  except (OSError, ValueError) as e:
    sys.exit(f"lrjax.inspect: {e}")
  print(transcript(chosen, n))


if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "a run's workdir", required=True)
  _PHASE = flags.DEFINE_string("phase", None, "phase (default: the last evaluated)")
  _STEP = flags.DEFINE_integer("step", -1, "evaluation step (-1: the phase's last)")
  _N = flags.DEFINE_integer("n", 3, "problems to show")
  app.run(lambda argv: main(argv, _WORKDIR.value, _PHASE.value, _STEP.value, _N.value))
