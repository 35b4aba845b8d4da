#!/usr/bin/env bash
# Runs a config on every worker of a Cloud TPU pod slice, the mesh over all its chips.
#
#   launch/tpu_pod.sh --zone=us-central2-b --accelerator=v4-32 --bucket=my-bucket \
#     --config=configs/hrpo.py [--config.a.b=v ...]
#   launch/tpu_pod.sh --dry-run ...    # print the exact commands, run nothing
#
# Every worker runs one lrjax process (LRJAX_DISTRIBUTED=1: JAX joins them from
# the pod's metadata); all of them read and write the same workdir, so it must be
# a folder every worker sees: --bucket=B mounts gs://B at /mnt/B with gcsfuse on
# every worker (workdir /mnt/B/runs/<config name>), or --workdir=/abs/path on a
# shared file system (NFS, Filestore). Options as launch/tpu_vm.sh: --name=lrjax
# --accelerator=v4-16 --version --project --no-create --source --mesh=DATA,FSDP,TENSOR
# (default -1,1,1: data parallel over every chip).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_tpu.sh"

parse_common "$@"
tpu_options v4-16 bucket=
tpu_topology
BUCKET="$(option bucket "")"
if [[ -n "$BUCKET" ]]; then
  [[ "$WORKDIR" == /* ]] || WORKDIR="/mnt/$BUCKET/$WORKDIR"
elif [[ "$WORKDIR" != /* ]]; then
  die "a pod slice needs a workdir every worker sees: --bucket=B (gcsfuse) or --workdir=/shared/path"
fi
resolve_mesh "$DEVICES"
summary "$DEVICES devices of $ACCEL over $HOSTS hosts"
for (( i = 0; i < HOSTS; i++ )); do
  echo "# worker $i: process $i of $HOSTS, workdir $WORKDIR"
done
tpu_setup all
if [[ -n "$BUCKET" ]]; then
  tpu_gcloud ssh "$TPU_NAME" --worker=all "--command=$(cat <<CMD | tr '\n' ' '
{ command -v gcsfuse >/dev/null || { echo "deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
&& curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -
&& sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }; }
&& sudo mkdir -p /mnt/$BUCKET && sudo chown \$USER /mnt/$BUCKET
&& { mountpoint -q /mnt/$BUCKET || gcsfuse --implicit-dirs --rename-dir-limit=200000 $BUCKET /mnt/$BUCKET; }
CMD
)"
fi
tpu_gcloud ssh "$TPU_NAME" --worker=all "--command=cd ~/lrjax && LRJAX_DISTRIBUTED=1 $(lrjax_command)"
echo "# when done: gcloud compute tpus tpu-vm delete $TPU_NAME --zone=$ZONE"
