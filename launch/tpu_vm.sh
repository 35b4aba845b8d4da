#!/usr/bin/env bash
# Creates a single-host Cloud TPU VM, sets it up (launch/setup_host.sh: a Python
# >= 3.11 venv with jax[tpu] and lrjax) and runs a config there, detached.
#
#   launch/tpu_vm.sh --zone=us-central2-b --config=configs/hrpo.py [--config.a.b=v ...]
#   launch/tpu_vm.sh --dry-run ...     # print the exact commands, run nothing
#   launch/tpu_vm.sh --logs ...        # the same arguments: follow the run's log
#
# Options: --name=lrjax --accelerator=v4-8 --version=(per TPU type) --project=P
#   --no-create (the VM exists) --source=DIR|git+URL[@ref] (default: this checkout)
#   --workdir=W (default lrjax.main's, runs/<config name>, under ~/lrjax on the VM,
#   or under /mnt/B with --bucket=B: gs://B mounted with gcsfuse)
#   --mesh=DATA,FSDP,TENSOR or --config.mesh.* (default: the config's own mesh)
#   The run is detached (it survives the ssh session; its log is
#   <workdir>/logs/<host>.log): --attach follows it, --delete-when-done waits for
#   the end and deletes the VM, --spot creates a spot VM and supervises it from
#   here (every --poll=60 seconds; a preempted VM is re-created and the command
#   re-run, resuming from the workdir, which must be in --bucket).
#   Slices of several hosts: launch/tpu_pod.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_tpu.sh"

parse_common "$@"
tpu_options v4-8
tpu_topology
(( HOSTS == 1 )) || die "--accelerator=$ACCEL has $HOSTS hosts: use launch/tpu_pod.sh"
resolve_mesh "$DEVICES"
summary "$DEVICES devices of $ACCEL, 1 host"
echo "# workdir: $(workdir_note "$(tpu_run_dir)") on $TPU_NAME"
tpu_remote_command
tpu_launch
