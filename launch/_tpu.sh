# Shared by launch/tpu_vm.sh and launch/tpu_pod.sh (sourced after _common.sh).
#
# A Cloud TPU slice is named by its accelerator type; JAX sees one device per
# chip on v4, v5p, v5e (v5litepod) and v6e, one per core on v2/v3.

TPU_OPTIONS=(name= zone= accelerator= version= project= no-create)

# tpu_options DEFAULT_ACCELERATOR [MORE_OPTION_NAMES...]: sets TPU_NAME ZONE ACCEL
# VERSION PROJECT from the launcher options (ZONE may come from the environment).
tpu_options() {
  local default_accel="$1"
  shift
  check_options "${TPU_OPTIONS[@]}" "$@"
  TPU_NAME="$(option name lrjax)"
  ZONE="$(option zone "${ZONE:-}")"
  ACCEL="$(option accelerator "$default_accel")"
  VERSION="$(option version "")"
  PROJECT="$(option project "")"
  [[ -n "$ZONE" ]] || die "--zone=ZONE is required (e.g. --zone=us-central2-b), or set ZONE"
}

# Sets DEVICES (JAX devices of the slice), HOSTS and VERSION (default software) for ACCEL.
tpu_topology() {
  local size="${ACCEL##*-}" per_host default
  [[ "$size" =~ ^[0-9]+$ ]] || die "--accelerator=$ACCEL: want TYPE-SIZE, e.g. v4-8, v5litepod-16"
  case "$ACCEL" in
    v2-*|v3-*) DEVICES=$size; per_host=8; default=tpu-ubuntu2204-base ;;
    v4-*) DEVICES=$(( size / 2 )); per_host=4; default=tpu-ubuntu2204-base ;;
    v5p-*) DEVICES=$(( size / 2 )); per_host=4; default=v2-alpha-tpuv5 ;;
    v5litepod-*) DEVICES=$size; per_host=$(( size <= 8 ? size : 4 )); default=v2-alpha-tpuv5-lite ;;
    v6e-*) DEVICES=$size; per_host=$(( size <= 8 ? size : 4 )); default=v2-alpha-tpuv6e ;;
    *) die "--accelerator=$ACCEL: unknown TPU type (v2, v3, v4, v5p, v5litepod, v6e)" ;;
  esac
  (( DEVICES >= 1 )) || die "--accelerator=$ACCEL: too small"
  HOSTS=$(( (DEVICES + per_host - 1) / per_host ))
  VERSION="${VERSION:-$default}"
}

# gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone ... [--project ...] ARGS...
tpu_gcloud() {
  local sub="$1" first="$2"
  shift 2
  run gcloud compute tpus tpu-vm "$sub" "$first" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} "$@"
}

# Creates the VM (unless --no-create), copies or clones the source onto WORKERS
# (a worker index, or all), installs JAX for TPUs and lrjax.
tpu_setup() {
  local workers="$1"
  if ! flag no-create; then
    tpu_gcloud create "$TPU_NAME" "--accelerator-type=$ACCEL" "--version=$VERSION"
  fi
  local fetch
  if is_local_source; then  # this checkout, without its runs and git history
    run tar -czf /tmp/lrjax-src.tgz -C "$SOURCE" --exclude=./runs --exclude=./.git .
    tpu_gcloud scp /tmp/lrjax-src.tgz "$TPU_NAME:lrjax-src.tgz" "--worker=$workers"
    fetch="rm -rf ~/lrjax && mkdir -p ~/lrjax && tar -xzf ~/lrjax-src.tgz -C ~/lrjax"
  else
    local url="${SOURCE#git+}" ref=""
    if [[ "$url" == *@* && "${url##*@}" != *[/:]* ]]; then
      ref="${url##*@}"
      url="${url%@*}"
    fi
    fetch="rm -rf ~/lrjax && git clone --depth 1 ${ref:+--branch $(printf '%q' "$ref") }$(printf '%q' "$url") ~/lrjax"
  fi
  tpu_gcloud ssh "$TPU_NAME" "--worker=$workers" \
    "--command=$fetch && pip install -U \"jax[tpu]\" && pip install -e ~/lrjax"
}
