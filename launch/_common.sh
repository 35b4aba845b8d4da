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
WORKDIR=""
MESH=""           # data,fsdp,tensor (-1 = the rest)
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

# Splits "$@" into CONFIG / OVERRIDES / WORKDIR / MESH / SOURCE / DRY_RUN and EXTRA.
parse_common() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      --config=*) CONFIG="${arg#--config=}" ;;
      --config.mesh.*) die "set the mesh with --mesh=DATA,FSDP,TENSOR, not $arg" ;;
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
  if [[ -z "$WORKDIR" ]]; then  # lrjax.main's default: runs/<config name>
    local name
    name="$(basename "$file" .py)"
    [[ "$CONFIG" == *:* ]] && name="$name-${CONFIG#*:}"
    WORKDIR="runs/$name"
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

# Sets MESH_DATA MESH_FSDP MESH_TENSOR from --mesh (default -1,1,1) for N devices.
resolve_mesh() {
  local n="$1" d f t known
  IFS=, read -r d f t <<< "${MESH:--1,1,1}"
  for v in "$d" "$f" "$t"; do
    [[ "$v" =~ ^(-1|[1-9][0-9]*)$ ]] || die "--mesh=$MESH: want DATA,FSDP,TENSOR (integers, one may be -1)"
  done
  known=$(( (d < 0 ? 1 : d) * (f < 0 ? 1 : f) * (t < 0 ? 1 : t) ))
  if (( (d < 0) + (f < 0) + (t < 0) > 1 )); then
    die "--mesh=$MESH: at most one axis may be -1"
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

# Sets LRJAX_ARGV: the lrjax.main command (run from the repository root).
lrjax_argv() {
  LRJAX_ARGV=(python -m lrjax.main "--config=$CONFIG" "--workdir=$WORKDIR"
    "--config.mesh.data=$MESH_DATA" "--config.mesh.fsdp=$MESH_FSDP"
    "--config.mesh.tensor=$MESH_TENSOR" "${OVERRIDES[@]}")
}

# The lrjax.main command as one quoted line (for a remote shell).
lrjax_command() {
  lrjax_argv
  q "${LRJAX_ARGV[@]}"
}

# What the dry run (and a real run) reports first: the config, the mesh, the workdir.
summary() {
  local devices="$1"
  echo "# config: $CONFIG${OVERRIDES[*]:+ ${OVERRIDES[*]}}"
  echo "# mesh: data=$MESH_DATA fsdp=$MESH_FSDP tensor=$MESH_TENSOR ($devices)"
}
