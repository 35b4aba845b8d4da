#!/usr/bin/env bash
# Creates a single-host Cloud TPU VM, installs JAX for TPUs and lrjax, runs a config.
#
#   launch/tpu_vm.sh --zone=us-central2-b --config=configs/hrpo.py [--config.a.b=v ...]
#   launch/tpu_vm.sh --dry-run ...     # print the exact commands, run nothing
#
# Options: --name=lrjax --accelerator=v4-8 --version=(per TPU type) --project=P
#   --no-create (the VM exists) --source=DIR|git+URL[@ref] (default: this checkout)
#   --workdir=runs/<config name> (on the VM, under ~/lrjax) --mesh=DATA,FSDP,TENSOR
#   (default -1,1,1: data parallel over every chip). Slices of several hosts:
#   launch/tpu_pod.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_tpu.sh"

parse_common "$@"
tpu_options v4-8
tpu_topology
(( HOSTS == 1 )) || die "--accelerator=$ACCEL has $HOSTS hosts: use launch/tpu_pod.sh"
resolve_mesh "$DEVICES"
summary "$DEVICES devices of $ACCEL, 1 host"
echo "# workdir: ~/lrjax/$WORKDIR on $TPU_NAME"
tpu_setup 0
tpu_gcloud ssh "$TPU_NAME" --worker=0 "--command=cd ~/lrjax && $(lrjax_command)"
echo "# when done: gcloud compute tpus tpu-vm delete $TPU_NAME --zone=$ZONE"
