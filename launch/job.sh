#!/usr/bin/env bash
# Runs an lrjax command detached on this host, so it survives the ssh session
# that started it; its output goes to <workdir>/logs/<host>.log.
#
#   job.sh start  'CMD'   # CMD: a shell line ending in `python -m lrjax.main ...`
#   job.sh attach 'CMD'   # follow the log until the job ends; exit with its status
#   job.sh status 'CMD'   # prints running | done | failed <status> | none
#
# The workdir is the one CMD writes (`CMD --print_workdir`). Next to the log:
# <host>.pid while it runs, <host>.exit (its exit status) when it has ended.
# The launchers (launch/tpu_vm.sh, launch/tpu_pod.sh) copy it to every worker.
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: job.sh start|attach|status 'CMD'" >&2; exit 2; }
ACTION="$1" CMD="$2"
W="$(bash -c "$CMD --print_workdir" | tail -n 1)"
[[ "$W" == /* ]] || { echo "job.sh: '$CMD --print_workdir' printed no workdir" >&2; exit 1; }
LOGS="$W/logs" HOST="$(hostname)"
LOG="$LOGS/$HOST.log" PID="$LOGS/$HOST.pid" EXIT="$LOGS/$HOST.exit"

running() {
  [[ -f "$PID" ]] && kill -0 "$(cat "$PID")" 2>/dev/null
}

case "$ACTION" in
  start)
    if running; then
      echo "# already running on $HOST (pid $(cat "$PID")), log $LOG"
      exit 0
    fi
    mkdir -p "$LOGS"
    rm -f "$EXIT"
    # setsid + nohup: no controlling terminal, no SIGHUP when the ssh session ends
    nohup setsid bash -c "$CMD; echo \$? > $(printf '%q' "$EXIT")" >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PID"
    echo "# started on $HOST (pid $!), log $LOG"
    ;;
  attach)
    [[ -f "$LOG" ]] || { echo "no log at $LOG: not started here" >&2; exit 1; }
    if running; then
      tail -n +1 --pid="$(cat "$PID")" -F "$LOG" 2>/dev/null
    else
      cat "$LOG"
    fi
    exit "$(cat "$EXIT" 2>/dev/null || echo 1)"
    ;;
  status)
    if running; then
      echo running
    elif [[ -f "$EXIT" ]]; then
      rc="$(cat "$EXIT")"
      if [[ "$rc" == 0 ]]; then echo done; else echo "failed $rc"; fi
    else
      echo none
    fi
    ;;
  *) echo "job.sh: unknown action '$ACTION' (start, attach, status)" >&2; exit 2 ;;
esac
