#!/usr/bin/env bash
# Sets up one host to run lrjax: a Python that jax accepts, a virtualenv, JAX for
# the platform and lrjax from the source; prints the versions.
#
#   launch/setup_host.sh --platform=tpu|gpu|cpu --source=DIR|FILE.tgz|git+URL[@ref]
#   launch/setup_host.sh --dry-run ...    # print the exact commands, run nothing
#
# Options: --venv=~/lrjax-venv (the virtualenv to make or reuse)
#   --src-dir=~/lrjax (where a .tgz source is unpacked; the run directory)
#   --system-site-packages (the venv also sees the packages of the Python it is
#   made from: what is installed there already is not downloaded again)
#
# Python: jax / jaxlib 0.10 and flax 0.12 require Python >= 3.11. The first of
# python3.13, python3.12, python3.11, python3 that is >= 3.11 makes the venv.
# When there is none (the Cloud TPU images, tpu-ubuntu2204-base and the
# v2-alpha-* images, are Ubuntu 22.04 with Python 3.10), uv
# (https://docs.astral.sh/uv/) makes the venv with a CPython 3.11 it downloads
# (a python-build-standalone build): no root, no apt source (deadsnakes) and the
# same on every Linux image; it is fetched with the system pip, else uv's
# installer.
# Runs on a worker: the TPU launchers copy it there and run it on every worker.
set -euo pipefail

PROG="${0##*/}"
MIN_PY="3.11"
PLATFORM=""
SOURCE=""
VENV="$HOME/lrjax-venv"
SRC_DIR="$HOME/lrjax"
SYSTEM_SITE=0
DRY_RUN=0

die() {
  echo "$PROG: $*" >&2
  exit 2
}

for arg in "$@"; do
  case "$arg" in
    --platform=*) PLATFORM="${arg#--platform=}" ;;
    --source=*) SOURCE="${arg#--source=}"; SOURCE="${SOURCE/#\~\//$HOME/}" ;;
    --venv=*) VENV="${arg#--venv=}" ;;
    --src-dir=*) SRC_DIR="${arg#--src-dir=}" ;;
    --system-site-packages) SYSTEM_SITE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done
case "$PLATFORM" in
  tpu) JAX='jax[tpu]>=0.10' ;;
  gpu) JAX='jax[cuda12]>=0.10' ;;
  cpu) JAX='jax>=0.10' ;;
  *) die "--platform=tpu|gpu|cpu is required (got '${PLATFORM}')" ;;
esac
[[ -n "$SOURCE" ]] || die "--source=DIR|FILE.tgz|git+URL[@ref] is required"

# q ARGS...: one line a shell reads back as the same arguments.
q() {
  local out="" arg sq="'\\''"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+~-]+$ && "$arg" != "~"* ]]; then
      out+="${out:+ }$arg"
    else
      out+="${out:+ }'${arg//\'/$sq}'"
    fi
  done
  printf '%s' "$out"
}

run() {
  if (( DRY_RUN )); then
    q "$@"
    echo
  else
    echo "+ $(q "$@")" >&2
    "$@"
  fi
}

# What pip installs lrjax from.
case "$SOURCE" in
  git+*) TARGET="$SOURCE" ;;
  *.tgz|*.tar.gz)
    [[ -f "$SOURCE" ]] || (( DRY_RUN )) || die "--source=$SOURCE: no such file"
    TARGET="$SRC_DIR" ;;
  *)
    [[ -f "$SOURCE/setup.py" ]] || die "--source=$SOURCE: not an lrjax checkout (no setup.py)"
    TARGET="$(cd "$SOURCE" && pwd)" ;;
esac

# A python >= MIN_PY on PATH, or nothing.
find_python() {
  local c
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c \
        "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PY'.split('.'))))" 2>/dev/null; then
      command -v "$c"
      return
    fi
  done
}

PY="$(find_python || true)"
SITE=()
(( SYSTEM_SITE )) && SITE=(--system-site-packages)
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c \
    "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PY'.split('.'))))" 2>/dev/null; then
  echo "# python: reusing the venv $VENV ($("$VENV/bin/python" --version 2>&1))"
elif [[ -n "$PY" ]]; then
  echo "# python: $PY ($("$PY" --version 2>&1)) makes the venv $VENV"
  run "$PY" -m venv "${SITE[@]}" "$VENV"
else
  old="$(command -v python3 >/dev/null && python3 --version 2>&1 || echo 'no python3')"
  echo "# python: $old on this host, jax needs >= $MIN_PY: uv makes the venv $VENV with CPython $MIN_PY"
  UV="$(command -v uv || true)"
  if [[ -z "$UV" ]]; then
    if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
      run python3 -m pip install --user -q uv
    else
      run sh -c 'curl -LsSf https://astral.sh/uv/install.sh | sh'
    fi
    UV="$HOME/.local/bin/uv"
  fi
  run "$UV" venv --seed --python "$MIN_PY" "${SITE[@]}" "$VENV"
fi

if [[ "$TARGET" == "$SRC_DIR" ]]; then  # a tarball: unpack it where the job runs (runs/ stays)
  run mkdir -p "$SRC_DIR"
  run find "$SRC_DIR" -mindepth 1 -maxdepth 1 ! -name runs -exec rm -rf {} +
  run tar -xzf "$SOURCE" -C "$SRC_DIR"
fi
# one resolve for JAX and lrjax, so the JAX the platform needs satisfies lrjax's pins
run "$VENV/bin/python" -m pip install -q "$JAX" "$TARGET"
run "$VENV/bin/python" -c "import sys, jax, flax, lrjax; print('python', sys.version.split()[0], \
'jax', jax.__version__, 'flax', flax.__version__, 'lrjax', lrjax.__file__, 'devices', jax.devices())"
