#!/usr/bin/env bash
# Runs a config on one GPU node, the mesh over all its GPUs (one process).
#
#   launch/gpu.sh --config=configs/hrpo.py [--config.a.b=v ...]
#   launch/gpu.sh --dry-run ...     # print the exact commands, run nothing (no GPU needed)
#
# Options: --gpus=N (the first N GPUs; default: those in CUDA_VISIBLE_DEVICES, else
#   every GPU nvidia-smi lists)
#   --install (launch/setup_host.sh --platform=gpu: a venv with a Python >= 3.11,
#   jax[cuda12] and lrjax from --source)
#   --source=DIR|git+URL@ref (default: this checkout; a git source is always
#   installed, and run as the installed package from ~/lrjax)
#   --venv=~/lrjax-venv (used when it exists or with --install; else `python`)
#   --workdir=W (default lrjax.main's: runs/<config name>, relative to the run
#   directory: this checkout, or ~/lrjax for a git source)
#   --mesh=DATA,FSDP,TENSOR or --config.mesh.* (default: the config's own mesh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

parse_common "$@"
check_options gpus= install venv=
GPUS="$(option gpus "")"
VENV="$(option venv "$HOME/lrjax-venv")"
if [[ -n "$GPUS" ]]; then
  [[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus=$GPUS: want a positive number of GPUs"
  VISIBLE="$(seq -s, 0 $(( GPUS - 1 )))"
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then  # a scheduler chose them
  VISIBLE="$CUDA_VISIBLE_DEVICES"
  GPUS="$(tr ',' '\n' <<< "$VISIBLE" | grep -c .)"
elif command -v nvidia-smi >/dev/null; then
  GPUS="$(nvidia-smi -L | grep -c '^GPU')"
  (( GPUS > 0 )) || die "nvidia-smi lists no GPU"
  VISIBLE="$(seq -s, 0 $(( GPUS - 1 )))"
elif (( DRY_RUN )); then  # a dry run needs no GPU: every GPU the node will list
  GPUS="" VISIBLE=""
else
  die "no nvidia-smi on this machine: is it a GPU node? (or pass --gpus=N)"
fi
if [[ -n "$GPUS" ]]; then
  resolve_mesh "$GPUS"
  summary "$GPUS GPUs, 1 process"
else
  resolve_mesh 0
  summary "every GPU nvidia-smi lists on the node, 1 process"
fi
if is_local_source; then
  RUN_DIR="$ROOT"
else
  RUN_DIR="$HOME/lrjax"  # not the checkout: the installed package runs
fi
echo "# workdir: $(workdir_note "$RUN_DIR")"
INSTALL=0
if flag install || ! is_local_source; then  # a git source is there to be installed
  INSTALL=1
fi
if (( INSTALL )); then  # a dry run prints the setup's own commands
  setup=(bash "$ROOT/launch/setup_host.sh" --platform=gpu "--source=$SOURCE" "--venv=$VENV")
  if (( DRY_RUN )); then
    echo "# $(q "${setup[@]}"):"
    "${setup[@]}" --dry-run
  else
    run "${setup[@]}"
  fi
fi
PYTHON=python
if (( INSTALL )) || [[ -x "$VENV/bin/python" ]]; then
  PYTHON="$VENV/bin/python"
fi
if (( DRY_RUN )); then
  echo "cd $(q "$RUN_DIR")"
else
  mkdir -p "$RUN_DIR"
  cd "$RUN_DIR"
fi
lrjax_argv
# XLA_PYTHON_CLIENT_MEM_FRACTION: JAX's default preallocation (75%) leaves room unused
run env ${VISIBLE:+"CUDA_VISIBLE_DEVICES=$VISIBLE"} XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 \
  "$PYTHON" -m lrjax.main "${LRJAX_ARGV[@]}"
