#!/usr/bin/env bash
# Runs a config on every worker of a Cloud TPU pod slice, the mesh over all its chips.
#
#   launch/tpu_pod.sh --zone=us-central2-b --accelerator=v4-32 --bucket=my-bucket \
#     --config=configs/hrpo.py [--config.a.b=v ...]
#   launch/tpu_pod.sh --dry-run ...    # print the exact commands, run nothing
#   launch/tpu_pod.sh --logs ...       # the same arguments: follow worker 0's log
#
# Every worker runs one lrjax process (LRJAX_DISTRIBUTED=1: JAX joins them from
# the pod's metadata); all of them read and write the same workdir, so it must be
# a folder every worker sees: --bucket=B mounts gs://B at /mnt/B with gcsfuse on
# every worker (workdir /mnt/B/runs/<config name>), or --workdir=/abs/path on a
# shared file system (NFS, Filestore). Options as launch/tpu_vm.sh: --name=lrjax
# --accelerator=v4-16 --version --project --no-create --source --mesh=DATA,FSDP,TENSOR
# or --config.mesh.* (default: the config's own mesh), --attach, --logs,
# --delete-when-done, --spot (with --bucket) --poll=60.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_tpu.sh"

parse_common "$@"
tpu_options v4-16
tpu_topology
if [[ -z "$BUCKET" && "$WORKDIR" != /* ]]; then
  die "a pod slice needs a workdir every worker sees: --bucket=B (gcsfuse) or --workdir=/shared/path"
fi
resolve_mesh "$DEVICES"
summary "$DEVICES devices of $ACCEL over $HOSTS hosts"
WHERE="$(workdir_note "$(tpu_run_dir)")"
for (( i = 0; i < HOSTS; i++ )); do
  echo "# worker $i: process $i of $HOSTS, workdir $WHERE"
done
tpu_remote_command LRJAX_DISTRIBUTED=1
tpu_launch
