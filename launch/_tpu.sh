# Shared by launch/tpu_vm.sh and launch/tpu_pod.sh (sourced after _common.sh).
#
# A Cloud TPU slice is named by its accelerator type; JAX sees one device per
# chip on v4, v5p, v5e (v5litepod) and v6e, one per core on v2/v3.
#
# What a launch does: creates the TPU (--spot: a spot TPU), copies
# launch/setup_host.sh, launch/job.sh and the source (this checkout as a tarball,
# or a git URL) to every worker, runs setup_host.sh there (a Python >= 3.11 venv
# with jax[tpu] and lrjax in ~/lrjax-venv), mounts --bucket, and starts the run
# detached on every worker (launch/job.sh: it survives the ssh session; logs in
# <workdir>/logs/<host>.log). Then --attach follows worker 0's log, --spot
# supervises, --delete-when-done waits for the end and deletes the TPU.

TPU_OPTIONS=(name= zone= accelerator= version= project= no-create bucket= spot attach logs
  delete-when-done poll=)

# tpu_options DEFAULT_ACCELERATOR [MORE_OPTION_NAMES...]: sets TPU_NAME ZONE ACCEL
# VERSION PROJECT BUCKET POLL from the launcher options (ZONE may come from the environment).
tpu_options() {
  local default_accel="$1"
  shift
  check_options "${TPU_OPTIONS[@]}" "$@"
  TPU_NAME="$(option name lrjax)"
  ZONE="$(option zone "${ZONE:-}")"
  ACCEL="$(option accelerator "$default_accel")"
  VERSION="$(option version "")"
  PROJECT="$(option project "")"
  BUCKET="$(option bucket "")"
  POLL="$(option poll 60)"
  [[ -n "$ZONE" ]] || die "--zone=ZONE is required (e.g. --zone=us-central2-b), or set ZONE"
  [[ "$POLL" =~ ^[0-9]+$ ]] || die "--poll=$POLL: want seconds"
  if flag spot && [[ -z "$BUCKET" ]]; then
    die "--spot needs --bucket=B: a re-created TPU has a new disk, the workdir must outlive it"
  fi
  if flag spot && flag no-create; then
    die "--spot creates (and re-creates) the TPU itself: drop --no-create"
  fi
}

# Sets DEVICES (JAX devices of the slice), HOSTS, VERSION (default software) and
# IMAGE_PYTHON (the Python of that image) for ACCEL.
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
  case "$VERSION" in  # the default images are all Ubuntu 22.04
    tpu-ubuntu2204-base|v2-alpha-tpuv5|v2-alpha-tpuv5-lite|v2-alpha-tpuv6e)
      IMAGE_PYTHON="$VERSION is Ubuntu 22.04 with Python 3.10" ;;
    *) IMAGE_PYTHON="$VERSION: its Python is checked on the workers" ;;
  esac
}

# gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone ... [--project ...] ARGS...
tpu_gcloud() {
  local sub="$1" first="$2"
  shift 2
  run gcloud compute tpus tpu-vm "$sub" "$first" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} "$@"
}

# The run directory on the workers (relative workdirs resolve there): /mnt/BUCKET
# with --bucket (the workdir outlives the TPU), else ~/lrjax.
tpu_run_dir() {
  if [[ -n "$BUCKET" ]]; then echo "/mnt/$BUCKET"; else echo "~/lrjax"; fi
}

# REMOTE_CMD: the run as one shell line for the workers (ENV_PREFIX, e.g.
# LRJAX_DISTRIBUTED=1, before python); a config file of this checkout is read
# from its unpacked copy in ~/lrjax, a git source's from the installed package.
tpu_remote_command() {
  local env_prefix="${1:-}" dir
  dir="$(tpu_run_dir)"
  CONFIG_ARG="$CONFIG"
  if is_local_source && [[ "$dir" != "~/lrjax" ]]; then
    CONFIG_ARG="__HOME__/lrjax/$CONFIG"
  fi
  lrjax_argv
  local argv
  argv="$(q "${LRJAX_ARGV[@]}")"
  argv="${argv//--config=__HOME__/--config=\$HOME}"
  REMOTE_CMD="mkdir -p $dir && cd $dir && ${env_prefix:+$env_prefix }~/lrjax-venv/bin/python -m lrjax.main $argv"
}

# Creates the TPU (unless --no-create and not RECREATE), copies the setup and the
# source to every worker, installs, mounts the bucket and starts the run detached.
tpu_start() {
  local recreate="${1:-0}"
  if (( recreate )) || ! flag no-create; then
    tpu_gcloud create "$TPU_NAME" "--accelerator-type=$ACCEL" "--version=$VERSION" \
      ${SPOT:+--spot}
  fi
  local files=("$ROOT/launch/setup_host.sh" "$ROOT/launch/job.sh") source_arg
  if is_local_source; then  # this checkout, without virtualenvs, runs, caches, git history
    local tarball="${TMPDIR:-/tmp}/lrjax-$TPU_NAME/lrjax-src.tgz"
    run mkdir -p "$(dirname "$tarball")"
    run tar -czf "$tarball" "${TAR_EXCLUDES[@]}" -C "$SOURCE" .
    files+=("$tarball")
    source_arg="--source=~/lrjax-src.tgz"
    tpu_gcloud scp "${files[@]}" "$TPU_NAME:~/" --worker=all
  else
    source_arg="--source=$SOURCE"
    tpu_gcloud scp "${files[@]}" "$TPU_NAME:~/" --worker=all
  fi
  echo "# python on the workers: $IMAGE_PYTHON; jax 0.10 needs >= 3.11, so setup_host.sh makes the venv with uv and CPython 3.11 where the image's is older"
  tpu_gcloud ssh "$TPU_NAME" --worker=all \
    "--command=bash ~/setup_host.sh --platform=tpu $(q "$source_arg")"
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
  tpu_gcloud ssh "$TPU_NAME" --worker=all "--command=bash ~/job.sh start $(q "$REMOTE_CMD")"
}

# The TPU's state (READY, CREATING, PREEMPTED, ...), or GONE when gcloud finds none.
tpu_state() {
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} \
    --format='value(state)' 2>/dev/null || echo GONE
}

# The run's status on worker 0 (job.sh status), or "unreachable".
tpu_job_status() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"} \
    --worker=0 "--command=bash ~/job.sh status $(q "$REMOTE_CMD")" 2>/dev/null | tail -n 1 \
    || echo unreachable
}

# --spot: re-creates a preempted TPU and re-runs the same command (which resumes
# from the workdir in the bucket) until the run ends with status 0.
tpu_supervise() {
  local state status
  if (( DRY_RUN )); then
    echo "# supervisor (here): every ${POLL}s gcloud compute tpus tpu-vm describe $TPU_NAME; when" \
      "it is PREEMPTED, TERMINATED or gone: delete, then the create, setup and start above again;" \
      "until worker 0's job.sh status says done"
    return
  fi
  while true; do
    state="$(tpu_state)"
    case "$state" in
      READY)
        status="$(tpu_job_status)"
        case "$status" in
          done) echo "# $TPU_NAME: the run is done" >&2; return 0 ;;
          "failed 143"|none)  # stopped by the host (maintenance) or never started: run again
            echo "# $TPU_NAME: run $status, starting it again (it resumes)" >&2
            tpu_gcloud ssh "$TPU_NAME" --worker=all "--command=bash ~/job.sh start $(q "$REMOTE_CMD")" ;;
          failed*)
            echo "# $TPU_NAME: the run $status; see <workdir>/logs (--logs)" >&2
            return 1 ;;
        esac ;;
      PREEMPTED|TERMINATED|STOPPED|GONE)
        echo "# $TPU_NAME is $state: re-creating it and re-running the command" >&2
        [[ "$state" == GONE ]] || tpu_gcloud delete "$TPU_NAME" --quiet
        tpu_start 1 ;;
    esac
    sleep "$POLL"
  done
}

# After the start: --spot supervises, --attach (or --delete-when-done) follows
# worker 0's log to the end; --delete-when-done then deletes the TPU.
tpu_follow() {
  local rc=0
  if flag spot; then
    tpu_supervise || rc=$?
  elif flag attach || flag delete-when-done; then
    tpu_gcloud ssh "$TPU_NAME" --worker=0 "--command=bash ~/job.sh attach $(q "$REMOTE_CMD")" || rc=$?
  else
    echo "# detached: follow the run with the same command and --logs"
  fi
  if flag delete-when-done; then
    if (( rc == 0 )); then
      tpu_gcloud delete "$TPU_NAME" --quiet
    else
      echo "# the run did not end cleanly (status $rc): $TPU_NAME is kept" >&2
    fi
  elif ! flag spot || (( DRY_RUN )); then
    echo "# when done: gcloud compute tpus tpu-vm delete $TPU_NAME --zone=$ZONE"
  fi
  return "$rc"
}

# The whole launch: --logs only follows a started run's log on worker 0.
tpu_launch() {
  SPOT=""
  flag spot && SPOT=1
  if flag logs; then
    tpu_gcloud ssh "$TPU_NAME" --worker=0 "--command=bash ~/job.sh attach $(q "$REMOTE_CMD")"
    return
  fi
  tpu_start 0
  tpu_follow
}
