# Shared by launch/tpu_vm.sh, launch/tpu_pod.sh and launch/gpu.sh (sourced, not run).
#
# Every launcher takes the lrjax config and its overrides as lrjax.main does
# (--config=FILE[:preset] --config.a.b=value ...), its own options, and
# --dry-run, which prints the exact commands instead of running them.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="$(basename "$0")"

DRY_RUN=0
CONFIG=""         # --config=FILE[:preset]
OVERRIDES=()      # --config.a.b=value ...
WORKDIR=""        # "" = lrjax.main's default (runs/<config.name>, in the run directory)
MESH=""           # data,fsdp,tensor (-1 = the rest); "" = the config's own mesh
MESH_OVERRIDES=() # --config.mesh.a=value ...
SOURCE="$ROOT"    # what to install: this checkout, or a git URL (git+https://...[@ref])
EXTRA=()          # the launcher's own options, parsed by the launcher

# --help: the launcher's leading comment.
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "$PROG: $*" >&2
  exit 2
}

# Splits "$@" into CONFIG / OVERRIDES (MESH_OVERRIDES: the --config.mesh.* ones) /
# WORKDIR / MESH / SOURCE / DRY_RUN and EXTRA.
parse_common() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      --config=*) CONFIG="${arg#--config=}" ;;
      --config.mesh.*=*) MESH_OVERRIDES+=("$arg"); OVERRIDES+=("$arg") ;;
      --config.*=*) OVERRIDES+=("$arg") ;;
      --config.*) die "a config override needs a value: $arg=VALUE" ;;
      --workdir=*) WORKDIR="${arg#--workdir=}" ;;
      --mesh=*) MESH="${arg#--mesh=}" ;;
      --source=*) SOURCE="${arg#--source=}" ;;
      -h|--help) usage; exit 0 ;;
      --*) EXTRA+=("$arg") ;;
      *) die "unexpected argument '$arg' (see --help)" ;;
    esac
  done
  [[ -n "$CONFIG" ]] || die "--config=FILE[:preset] is required (e.g. --config=configs/hrpo.py)"
  local file="${CONFIG%%:*}"
  if is_local_source && [[ ! -f "$SOURCE/$file" ]]; then
    die "no config file $file in $SOURCE (give it relative to the repository root)"
  fi
  if [[ -n "$MESH" && ${#MESH_OVERRIDES[@]} -gt 0 ]]; then
    die "give the mesh once: --mesh=$MESH or ${MESH_OVERRIDES[*]}"
  fi
}

is_local_source() {
  [[ "$SOURCE" != *://* && "$SOURCE" != git@* ]]
}

# The value of the launcher option --NAME=VALUE in EXTRA, or DEFAULT.
option() {
  local name="$1" default="$2" arg
  for arg in "${EXTRA[@]}"; do
    [[ "$arg" == "--$name="* ]] && { echo "${arg#--$name=}"; return; }
  done
  echo "$default"
}

# Whether the launcher flag --NAME was given.
flag() {
  local arg
  for arg in "${EXTRA[@]}"; do
    [[ "$arg" == "--$1" ]] && return 0
  done
  return 1
}

# Refuses launcher options not in the list "$@" (names without --, NAME= for valued ones).
check_options() {
  local arg known ok
  for arg in "${EXTRA[@]}"; do
    ok=0
    for known in "$@"; do
      if [[ "$known" == *= && "$arg" == "--$known"* ]] || [[ "$arg" == "--$known" ]]; then
        ok=1
      fi
    done
    (( ok )) || die "unknown option $arg (see --help)"
  done
}

# q ARGS...: the arguments as one line a shell reads back as the same arguments
# (plain words as they are, anything else in single quotes).
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

# run ARGS...: runs the command, or prints it (--dry-run).
run() {
  if (( DRY_RUN )); then
    q "$@"
    echo
  else
    echo "+ $(q "$@")" >&2
    "$@"
  fi
}

# Checks --mesh=DATA,FSDP,TENSOR against N devices (0: not known) and sets MESH_DATA
# MESH_FSDP MESH_TENSOR; without --mesh the config's own mesh (or --config.mesh.*) stands.
resolve_mesh() {
  local n="$1" d f t known
  MESH_DATA="" MESH_FSDP="" MESH_TENSOR=""
  [[ -n "$MESH" ]] || return 0
  IFS=, read -r d f t <<< "$MESH"
  for v in "$d" "$f" "$t"; do
    [[ "$v" =~ ^(-1|[1-9][0-9]*)$ ]] || die "--mesh=$MESH: want DATA,FSDP,TENSOR (integers, one may be -1)"
  done
  known=$(( (d < 0 ? 1 : d) * (f < 0 ? 1 : f) * (t < 0 ? 1 : t) ))
  if (( (d < 0) + (f < 0) + (t < 0) > 1 )); then
    die "--mesh=$MESH: at most one axis may be -1"
  fi
  if (( n == 0 )); then  # the device count is not known here: lrjax resolves the -1
    MESH_DATA=$d MESH_FSDP=$f MESH_TENSOR=$t
    return 0
  fi
  if (( d < 0 || f < 0 || t < 0 )); then
    (( n % known == 0 )) || die "--mesh=$MESH: $n devices are not divisible by $known"
    (( d < 0 )) && d=$(( n / known ))
    (( f < 0 )) && f=$(( n / known ))
    (( t < 0 )) && t=$(( n / known ))
  fi
  (( d * f * t == n )) || die "mesh data=$d x fsdp=$f x tensor=$t = $(( d * f * t )) does not match the $n devices"
  MESH_DATA=$d MESH_FSDP=$f MESH_TENSOR=$t
}

# Sets LRJAX_ARGV: the lrjax.main arguments after `python -m lrjax.main` (--config
# as CONFIG_ARG, default CONFIG); the mesh only when --mesh was given, the workdir
# only when --workdir was given (else lrjax.main's default).
lrjax_argv() {
  LRJAX_ARGV=("--config=${CONFIG_ARG:-$CONFIG}")
  [[ -n "$WORKDIR" ]] && LRJAX_ARGV+=("--workdir=$WORKDIR")
  if [[ -n "$MESH_DATA" ]]; then
    LRJAX_ARGV+=("--config.mesh.data=$MESH_DATA" "--config.mesh.fsdp=$MESH_FSDP"
                 "--config.mesh.tensor=$MESH_TENSOR")
  fi
  LRJAX_ARGV+=("${OVERRIDES[@]}")
}

# What the dry run (and a real run) reports first: the config, the mesh.
summary() {
  local devices="$1"
  echo "# config: $CONFIG${OVERRIDES[*]:+ ${OVERRIDES[*]}}"
  if [[ -n "$MESH_DATA" ]]; then
    echo "# mesh: data=$MESH_DATA fsdp=$MESH_FSDP tensor=$MESH_TENSOR ($devices)"
  elif (( ${#MESH_OVERRIDES[@]} )); then
    echo "# mesh: the config's, with ${MESH_OVERRIDES[*]} ($devices)"
  else
    echo "# mesh: the config's own ($devices)"
  fi
}

# The workdir as the summary states it, relative to the run directory DIR.
workdir_note() {
  local dir="$1"
  if [[ -z "$WORKDIR" ]]; then
    echo "$dir/runs/<config name> (lrjax.main's default; <config name>-<mode> for eval / span_probe)"
  elif [[ "$WORKDIR" == /* ]]; then
    echo "$WORKDIR"
  else
    echo "$dir/$WORKDIR"
  fi
}

# The source tarball: the checkout without virtualenvs, runs, caches, build
# outputs and git history.
TAR_EXCLUDES=(--exclude=./runs --exclude=./.git --exclude=.venv --exclude=venv
  --exclude=.env --exclude='*-venv' --exclude=__pycache__ --exclude=.pytest_cache
  --exclude=.hypothesis --exclude=.ipynb_checkpoints --exclude='*.egg-info'
  --exclude=./build --exclude=./dist)
