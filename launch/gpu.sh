#!/usr/bin/env bash
# Runs a config on one GPU node, the mesh over all its GPUs (one process).
#
#   launch/gpu.sh --config=configs/hrpo.py [--config.a.b=v ...]
#   launch/gpu.sh --dry-run ...     # print the exact commands, run nothing
#
# Options: --gpus=N (the first N GPUs; default: those in CUDA_VISIBLE_DEVICES, else
#   every GPU nvidia-smi lists)
#   --install (pip install JAX for CUDA 12 and --source, default this checkout)
#   --workdir=runs/<config name> (relative to the repository root)
#   --mesh=DATA,FSDP,TENSOR (default -1,1,1: data parallel over every GPU)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

parse_common "$@"
check_options gpus= install
GPUS="$(option gpus "")"
if [[ -n "$GPUS" ]]; then
  [[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus=$GPUS: want a positive number of GPUs"
  VISIBLE="$(seq -s, 0 $(( GPUS - 1 )))"
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then  # a scheduler chose them
  VISIBLE="$CUDA_VISIBLE_DEVICES"
  GPUS="$(tr ',' '\n' <<< "$VISIBLE" | grep -c .)"
else
  command -v nvidia-smi >/dev/null || die "no nvidia-smi on this machine: is it a GPU node? (or pass --gpus=N)"
  GPUS="$(nvidia-smi -L | grep -c '^GPU')"
  (( GPUS > 0 )) || die "nvidia-smi lists no GPU"
  VISIBLE="$(seq -s, 0 $(( GPUS - 1 )))"
fi
resolve_mesh "$GPUS"
summary "$GPUS GPUs, 1 process"
echo "# workdir: $WORKDIR (in $ROOT)"
if flag install; then
  run pip install -U "jax[cuda12]"
  if is_local_source; then
    run pip install -e "$SOURCE"
  else
    run pip install "${SOURCE#git+}"
  fi
fi
cd "$ROOT"
(( DRY_RUN )) && echo "cd $(q "$ROOT")"
# XLA_PYTHON_CLIENT_MEM_FRACTION: JAX's default preallocation (75%) leaves room unused
lrjax_argv
run env "CUDA_VISIBLE_DEVICES=$VISIBLE" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 "${LRJAX_ARGV[@]}"
