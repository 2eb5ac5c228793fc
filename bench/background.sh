#!/usr/bin/env bash
# Runs a list of device steps in the background on the device machine, so that one call can
# start more work than its 10 minutes and later calls watch it (the machine stays warm only
# 30 s after a call: issue the next call at once). From the repository root:
#   bench/background.sh start NAME 'CMD1' ['CMD2' ...]   run the commands one after another
#                                                        in their own session (setsid); each
#                                                        command's output in /tmp/bg/NAME/K.log
#   bench/background.sh poll NAME [S]                    wait up to S s (default 0) for the
#                                                        list to end; print each command's
#                                                        state and its log's last lines
#   bench/background.sh logs NAME                        pack the logs into $OUT/NAME-logs.tar.xz
#   bench/background.sh collect NAME DIR [S]             poll S s, then pack the logs and DIR
#                                                        (its *.tar.xz copied as they are) into
#                                                        $OUT: what every polling call should
#                                                        end with, since a machine can be gone
#                                                        by the next call (seen 2026-12-03)
# To stop a sweep, kill its process group from its pid file (bench/sweep_session.sh writes
# runs/<preset>.pid), never `pkill -f PATTERN` with a pattern that the `run` call's own command
# line contains: that kills the call itself (seen 2026-12-03).
# A command that fails does not stop the list (its exit status is shown); `start` refuses a
# NAME that is still running. Example (next session, docs/kernel_notes.md "v14", "v15"):
#   bench/background.sh start gpu \
#     'STEPS="build oldbuild test memcheck ab" OUT=/tmp/perf bench/perf_session.sh' \
#     'build-gpu/tests/attention_long_gpu_test' \
#     'PRESET=h200 SWEEP_SET="ladder.layers=[8]" WAIT=0 bench/sweep_session.sh start'
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-out}
action=${1:-}
name=${2:-}
[[ -n $action && -n $name && $name =~ ^[A-Za-z0-9_-]+$ ]] ||
  { echo "usage: bench/background.sh start|poll|logs|collect NAME [...] (NAME: letters, digits, - and _)" >&2; exit 2; }
shift 2
dir=/tmp/bg/$name

running() { [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

show() {
  local n i
  n=$(cat "$dir/count" 2>/dev/null || echo 0)
  for ((i = 1; i <= n; i++)); do
    local state="waiting"
    if [[ -f $dir/$i.rc ]]; then state="exit $(cat "$dir/$i.rc")"
    elif [[ -f $dir/$i.started ]]; then state="running since $(cat "$dir/$i.started")"; fi
    echo "== [$i/$n] $state: $(cat "$dir/$i.cmd")"
    [[ -f $dir/$i.log ]] && tail -n "${LINES_SHOWN:-8}" "$dir/$i.log"
  done
  if running; then echo "== $name: running"; else echo "== $name: ended"; fi
}

case $action in
  start)
    (($#)) || { echo "background.sh: start needs commands" >&2; exit 2; }
    if running; then echo "background.sh: $name is still running (pid $(cat "$dir/pid"))" >&2; exit 2; fi
    rm -rf "$dir" && mkdir -p "$dir"
    i=0
    for c in "$@"; do i=$((i + 1)); printf '%s\n' "$c" >"$dir/$i.cmd"; done
    echo "$i" >"$dir/count"
    runner='n=$(cat "$1/count"); for ((i = 1; i <= n; i++)); do date +%T >"$1/$i.started";
      bash -c "$(cat "$1/$i.cmd")" >"$1/$i.log" 2>&1 </dev/null; echo $? >"$1/$i.rc"; done'
    setsid nohup bash -c "$runner" _ "$dir" >/dev/null 2>&1 </dev/null &
    echo $! >"$dir/pid"
    echo "== $name: started $i command(s), pid $(cat "$dir/pid")"
    ;;
  poll)
    [[ -d $dir ]] || { echo "background.sh: nothing named $name here (a fresh machine?)" >&2; exit 1; }
    wait_s=${1:-0}
    t=$SECONDS
    while running && ((SECONDS - t < wait_s)); do sleep 2; done
    show
    ;;
  logs)
    [[ -d $dir ]] || { echo "background.sh: nothing named $name here" >&2; exit 1; }
    mkdir -p "$OUT"
    tar -cJf "$OUT/$name-logs.tar.xz" -C /tmp/bg "$name" && ls -la "$OUT/$name-logs.tar.xz"
    ;;
  collect)
    [[ -d $dir ]] || { echo "background.sh: nothing named $name here (a fresh machine?)" >&2; exit 1; }
    src=${1:?background.sh: collect needs a folder}
    wait_s=${2:-0}
    t=$SECONDS
    while running && ((SECONDS - t < wait_s)); do sleep 2; done
    show
    mkdir -p "$OUT"
    tar -cJf "$OUT/$name-logs.tar.xz" -C /tmp/bg "$name"
    if [[ -d $src ]]; then
      tar -cJf "$OUT/$name-$(basename "$src").tar.xz" --exclude='*.tar.xz' -C "$(dirname "$src")" "$(basename "$src")"
      find "$src" -name '*.tar.xz' -exec cp {} "$OUT"/ \;
    else
      echo "background.sh: $src is not there yet"
    fi
    ls -la "$OUT"
    ;;
  *) echo "background.sh: unknown action $action (start, poll, logs, collect)" >&2; exit 2 ;;
esac
