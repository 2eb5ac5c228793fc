#!/usr/bin/env bash
# A scaling sweep on the device machine, run in the background across several device calls
# (docs/sweep.md, "h100-small on the device"). From the repository root:
#   bench/sweep_session.sh start     build `moba` (CUDA), unpack and prepare the books,
#                                    print the plan, start the sweep in its own session
#                                    (setsid: it outlives the call) and return
#   bench/sweep_session.sh poll [S]  waits up to S seconds (default 0) for the sweep to end,
#                                    then prints its state and last progress lines; once it
#                                    has ended, also collects (below) [= bench/sweep_poll.sh S]
#   bench/sweep_session.sh prepare   build and prepare the data only (start does both too)
#   bench/sweep_session.sh collect   every run's metrics.jsonl, run.json and config.toml,
#                                    plan.json, the sweep's log and the session facts in ONE
#                                    file, $OUT/<preset>-runs.tar.xz (never checkpoints);
#                                    while the sweep runs it packs what exists so far
# Each step can be called again: start builds incrementally, prepares the data once and
# starts the sweep only if it is not running (a rerun of `moba sweep` skips finished runs,
# resumes interrupted ones and retries failed ones).
# Needs .deps/include and .deps/googletest (as bench/gpu_session.sh) and the corpus archive
# at data/books.tar.xz (a copy of the books archive, carried; data/ is ignored
# by git). Settings (environment): PRESET (h100-small), CONFIG (sweeps/$PRESET.toml),
# DEVICE (cuda), BUILD (build-gpu), RUNS_DIR (runs/$PRESET), DATA (data/books-byte),
# ARCHIVE (data/books.tar.xz), JOBS (16), WAIT (30: seconds start watches the sweep),
# SWEEP_SET (`;`-separated `--set` overrides of the preset, e.g. the lr-search's extension:
# SWEEP_SET='ladder.layers=[4];search.lr_multipliers=[0.0625, 0.125]').
# A later piece of the same preset on the same machine (another SWEEP_SET after a finished
# sweep) needs its own RUNS_DIR: `start` does not restart a finished sweep (moba sweep itself
# would: its plan.json keeps the earlier plan's other runs). Rename the first archive, e.g.
#   cp out/h200-32k-runs.tar.xz out/h200-32k-p1-runs.tar.xz
#   PRESET=h200-32k RUNS_DIR=runs/h200-32k-p2 SWEEP_SET='ladder.layers=[7]' bench/sweep_session.sh start
# and give scripts/study-results.sh both archives.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-out}
PRESET=${PRESET:-h100-small}
CONFIG=${CONFIG:-sweeps/$PRESET.toml}
DEVICE=${DEVICE:-cuda}
BUILD=${BUILD:-build-gpu}
RUNS=${RUNS_DIR:-runs/$PRESET}
DATA=${DATA:-data/books-byte}
ARCHIVE=${ARCHIVE:-data/books.tar.xz}
CORPUS=${CORPUS:-data/corpus}
JOBS=${JOBS:-16}
WAIT=${WAIT:-30}
MOBA=$BUILD/src/cli/moba
LOG=$RUNS.log        # the sweep's output (plan, progress, every trainer line)
PIDFILE=$RUNS.pid    # the background shell that runs `moba sweep`
RCFILE=$RUNS.rc      # its exit status, written when it ends
T0FILE=$RUNS.started
INFO=$RUNS.info      # build, device and commit facts, packed with the runs
TAR=$OUT/$PRESET-runs.tar.xz
mkdir -p "$OUT" "$(dirname "$RUNS")"

say() { echo "== $(date +%T) $*"; }
die() { echo "sweep_session: FAILED: $*" >&2; exit 1; }

# running | finished | failed (rc N) | died (no exit status: killed?) | not started
state() {
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then echo running
  elif [[ -f $RCFILE ]]; then
    local rc; rc=$(cat "$RCFILE")
    if [[ $rc == 0 ]]; then echo finished; else echo "failed (moba sweep exit status $rc)"; fi
  elif [[ -f $PIDFILE ]]; then echo "died (no exit status: killed, or the machine restarted?)"
  else echo "not started"; fi
}

build() {
  say "build: moba (Release, CUDA) in $BUILD"
  if [[ ! -f $BUILD/CMakeCache.txt ]]; then
    [[ -d .deps/include && -d .deps/googletest ]] ||
      die "build: .deps/include and .deps/googletest are missing (carry .deps)"
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOBA_CUDA=ON \
      -DMOBA_EXTRA_INCLUDE="$PWD/.deps/include" -DMOBA_GTEST_SOURCE="$PWD/.deps/googletest" \
      -DMOBA_BUILD_BENCH=OFF >"$OUT/cmake.log" 2>&1 ||
      { tail -30 "$OUT/cmake.log"; rm -rf "$BUILD"; die "build: cmake configure (log: $OUT/cmake.log)"; }
  fi
  local t=$SECONDS
  cmake --build "$BUILD" -j "$JOBS" --target moba >"$OUT/build.log" 2>&1 ||
    { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; die "build: moba (log: $OUT/build.log)"; }
  rm -f "$OUT/cmake.log" "$OUT/build.log"
  say "build: done in $((SECONDS - t)) s"
  "$MOBA" info | tee "$INFO" || die "build: $MOBA does not run"
  grep -q "CUDA kernels: compiled" "$INFO" || [[ $DEVICE != cuda ]] ||
    die "build: $MOBA has no CUDA kernels (nvcc not found by cmake?)"
}

prepare() {
  if [[ -f $DATA/manifest.json ]]; then
    say "data: $DATA is prepared"
    return
  fi
  if [[ ! -f $CORPUS/.unpacked ]]; then
    if [[ ! -f $ARCHIVE ]] && compgen -G "${ARCHIVE%.tar.xz}.part-*" >/dev/null; then
      # The archive in pieces: with the tracked tree at ~35 MB the 34 MB archive and .deps no
      # longer fit one call's 64 MiB, so a first call carries data/books.part-aa and copies
      # it to /tmp/ (kept while the machine stays warm), the next carries the rest.
      local parts=() n
      for n in $(ls /tmp/"$(basename "${ARCHIVE%.tar.xz}")".part-* "${ARCHIVE%.tar.xz}".part-* 2>/dev/null |
                 xargs -n1 basename | sort -u); do
        if [[ -f $(dirname "$ARCHIVE")/$n ]]; then parts+=("$(dirname "$ARCHIVE")/$n"); else parts+=("/tmp/$n"); fi
      done
      say "data: joining ${parts[*]}"
      cat "${parts[@]}" > "$ARCHIVE.tmp" && xz -t "$ARCHIVE.tmp" &&
        mv "$ARCHIVE.tmp" "$ARCHIVE" || die "data: the pieces of $ARCHIVE do not join into a valid archive"
    fi
    [[ -f $ARCHIVE ]] || die "data: $ARCHIVE is missing (copy the books archive there and carry it)"
    say "data: unpacking $ARCHIVE into $CORPUS"
    rm -rf "$CORPUS" "$CORPUS.tmp" && mkdir -p "$CORPUS.tmp" &&
      tar -xJf "$ARCHIVE" -C "$CORPUS.tmp" && mv "$CORPUS.tmp" "$CORPUS" ||
      die "data: could not unpack $ARCHIVE"
    touch "$CORPUS/.unpacked"  # a dot file: moba prepare skips it
  fi
  say "data: moba prepare $CORPUS -o $DATA --strip-gutenberg --tokenizer byte"
  rm -rf "$DATA"  # a folder without manifest.json is an interrupted prepare
  "$MOBA" prepare "$CORPUS" -o "$DATA" --strip-gutenberg --tokenizer byte --no-progress \
    >"$OUT/prepare.log" 2>&1 || { tail -20 "$OUT/prepare.log"; die "data: moba prepare (log: $OUT/prepare.log)"; }
  tail -8 "$OUT/prepare.log"
  rm -f "$OUT/prepare.log"
}

progress() {
  [[ -f $LOG ]] || { echo "(no log yet: $LOG)"; return; }
  local done total
  done=$(grep -l '"status": *"finished"' "$RUNS"/*/run.json 2>/dev/null | wc -l)
  total=$(grep -c '"name":' "$RUNS/plan.json" 2>/dev/null)
  echo "runs finished: $done/${total:-?}"
  grep -E "^run .* failed:" "$LOG" | tail -5
  grep -E "^=== sweep" "$LOG" | tail -1
  echo "--- last lines of $LOG"
  tail -n "${LINES_SHOWN:-6}" "$LOG"
  echo "---"
  if [[ -f $T0FILE ]]; then
    local now; now=$(date +%s)
    echo "since start: $(( (now - $(cat "$T0FILE")) / 60 ))m$(( (now - $(cat "$T0FILE")) % 60 ))s; log written $(( now - $(stat -c %Y "$LOG") )) s ago"
  fi
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total --format=csv,noheader 2>/dev/null
  fi
  return 0
}

start() {
  local s; s=$(state)
  if [[ $s == running ]]; then
    say "sweep already running (pid $(cat "$PIDFILE")): not started again"
    progress
    return
  fi
  if [[ $s == finished ]]; then
    say "sweep already finished: not started again (runs in $RUNS)"
    progress
    collect
    return
  fi
  build
  prepare
  say "plan"
  local plan_args=(--config "$CONFIG" --device "$DEVICE" -o "$RUNS")
  [[ $DATA == data/books-byte ]] || plan_args+=(--data "$DATA")
  local sets=()
  [[ -n ${SWEEP_SET:-} ]] && IFS=';' read -ra sets <<<"$SWEEP_SET"
  for kv in "${sets[@]}"; do plan_args+=(--set "$kv"); done
  "$MOBA" sweep "${plan_args[@]}" --plan-only | tee "$OUT/plan.md" ||
    die "plan: moba sweep --plan-only failed"
  grep -q "refused as it stands" "$OUT/plan.md" && die "plan: the sweep is refused (above)"
  mkdir -p "$RUNS"
  # A previous attempt (failed, or killed) keeps its lines: the log is appended to.
  [[ -f $LOG ]] && echo "=== $(date -u +%FT%TZ) sweep_session: started again (it was: $s)" >>"$LOG"
  rm -f "$RCFILE"
  date +%s >"$T0FILE"
  { echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "started: $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo "command: $MOBA sweep ${plan_args[*]}"; } >>"$INFO"
  say "starting in the background: $MOBA sweep ${plan_args[*]} > $LOG"
  # A new session (setsid), so the sweep outlives this call; the shell records its own pid
  # and, when moba ends, moba's exit status.
  setsid nohup bash -c 'pidf=$0 rcf=$1; shift; echo $$ >"$pidf"; "$@"; echo $? >"$rcf.tmp"; mv "$rcf.tmp" "$rcf"' \
    "$PIDFILE" "$RCFILE" "$MOBA" sweep "${plan_args[@]}" >>"$LOG" 2>&1 </dev/null &
  # Watch it for WAIT seconds (the plan, the first run's first steps), less if it ends.
  for _ in $(seq 1 "$WAIT"); do
    sleep 1
    [[ -f $RCFILE ]] && break
  done
  say "sweep: $(state)"
  progress
  case $(state) in running | finished) ;; *) collect; die "the sweep stopped (above)" ;; esac
}

collect() {
  [[ -d $RUNS ]] || die "collect: no runs in $RUNS"
  local stage; stage=$(mktemp -d) || die "collect: mktemp"
  mkdir -p "$stage/runs"
  local n=0
  for d in "$RUNS"/*/; do
    d=${d%/}
    [[ -f $d/run.json || -f $d/metrics.jsonl ]] || continue
    mkdir -p "$stage/runs/${d##*/}"
    for f in metrics.jsonl run.json config.toml; do
      [[ -f $d/$f ]] && cp "$d/$f" "$stage/runs/${d##*/}/"
    done
    n=$((n + 1))
  done
  [[ -f $RUNS/plan.json ]] && cp "$RUNS/plan.json" "$stage/"
  [[ -f $LOG ]] && cp "$LOG" "$stage/sweep.log"
  { cat "$INFO" 2>/dev/null; echo "collected: $(date -u +%FT%TZ), sweep $(state)"; } >"$stage/session.txt"
  tar -cJf "$TAR" -C "$stage" . || { rm -rf "$stage"; die "collect: tar"; }
  rm -rf "$stage"
  local size; size=$(stat -c %s "$TAR")
  say "collected $n run folders (sweep $(state)) into $TAR: $size bytes ($(( size / 1024 )) KiB)"
  (( size < 16 * 1024 * 1024 )) || echo "WARNING: $TAR is over 16 MiB: the device will not return it"
}

poll() {
  # Wait up to $1 seconds (0: none) for the sweep to end, so that a call spends no device
  # time sleeping past the end; then report (and collect, if it has ended).
  local wait_s=${1:-0} t=$SECONDS
  while [[ $(state) == running ]] && (( SECONDS - t < wait_s )); do sleep 5; done
  (( wait_s > 0 )) && say "waited $((SECONDS - t)) s of at most $wait_s"
  local s; s=$(state)
  say "sweep $PRESET: $s"
  progress
  [[ $s == running || $s == "not started" ]] || collect
}

case ${1:-} in
  start) start ;;
  prepare) build && prepare ;;  # the data alone (e.g. while the GPU runs tests), no sweep
  poll) poll "${2:-0}" ;;
  collect) collect ;;
  state) state ;;
  *) echo "usage: $0 start|prepare|poll [SECONDS]|collect|state   (docs/sweep.md, \"h100-small on the device\")" >&2; exit 2 ;;
esac
