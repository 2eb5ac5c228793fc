#!/bin/sh
# scripts/study-results.sh on synthetic runs packed as bench/sweep_session.sh packs a device
# sweep: a first piece, a second added with --add, archives into a folder that already
# holds a study refused without --add or --replace (its runs.tar.xz left as it was), a run
# in two archives refused, --replace starting anew.
#   study_results_test.sh SCRIPT MOBA MAKE_SYNTHETIC_RUNS WORKDIR
set -eu
script=$1 moba=$2 mk=$3 w=$4
rm -rf "$w" && mkdir -p "$w"
"$mk" "$w/syn" >/dev/null
piece() {  # piece NAME RUN...: $w/NAME.tar.xz holding runs/<run>/ and session.txt
  name=$1; shift
  mkdir -p "$w/stage-$name/runs"
  for r in "$@"; do cp -r "$w/syn/$r" "$w/stage-$name/runs/"; done
  echo "commit: test" >"$w/stage-$name/session.txt"
  tar -cJf "$w/$name.tar.xz" -C "$w/stage-$name" .
}
piece p1 synthetic-full-0-h4 synthetic-full-1-h5 synthetic-full-2-h6 \
         synthetic-moba-0-h4 synthetic-moba-1-h5 synthetic-moba-2-h6
piece p2 synthetic-full-3-h7 synthetic-full-4-h8 synthetic-moba-3-h7 synthetic-moba-4-h8
runs_in() { tar -tJf "$1" | grep -c '/run.json$'; }
fail() { echo "FAIL: $*" >&2; exit 1; }

MOBA=$moba bash "$script" "$w/dest" "$w/p1.tar.xz" >"$w/log1" 2>&1 || { cat "$w/log1"; fail "first piece"; }
[ "$(runs_in "$w/dest/runs.tar.xz")" = 6 ] || fail "first piece: 6 runs expected"
[ -f "$w/dest/report.md" ] && [ -f "$w/dest/fits.json" ] || fail "first piece: no report or fits"
cp "$w/dest/runs.tar.xz" "$w/first.tar.xz"

# Without --add: refused, naming both ways, and nothing changed.
if MOBA=$moba bash "$script" "$w/dest" "$w/p2.tar.xz" >"$w/log2" 2>&1; then fail "no refusal"; fi
grep -q "already holds a study (runs.tar.xz, 6 runs): pass --add .* or --replace" "$w/log2" ||
  { cat "$w/log2"; fail "refusal message"; }
cmp -s "$w/dest/runs.tar.xz" "$w/first.tar.xz" || fail "the refused call changed runs.tar.xz"

MOBA=$moba bash "$script" --add "$w/dest" "$w/p2.tar.xz" >"$w/log3" 2>&1 || { cat "$w/log3"; fail "--add"; }
[ "$(runs_in "$w/dest/runs.tar.xz")" = 10 ] || fail "--add: 10 runs expected"
grep -q "synthetic-full-4-h8" "$w/dest/report.md" || fail "--add: the added run is not in the report"
cp "$w/dest/runs.tar.xz" "$w/both.tar.xz"

# The same runs again: a run in two archives, refused; the study unchanged.
if MOBA=$moba bash "$script" --add "$w/dest" "$w/p2.tar.xz" >"$w/log4" 2>&1; then fail "a run twice"; fi
grep -q "run synthetic-full-3-h7 is in two archives" "$w/log4" || { cat "$w/log4"; fail "twice message"; }
cmp -s "$w/dest/runs.tar.xz" "$w/both.tar.xz" || fail "the refused --add changed runs.tar.xz"

MOBA=$moba bash "$script" --replace "$w/dest" "$w/p2.tar.xz" >"$w/log5" 2>&1 || { cat "$w/log5"; fail "--replace"; }
[ "$(runs_in "$w/dest/runs.tar.xz")" = 4 ] || fail "--replace: 4 runs expected"
echo "study-results: first piece, refusal, --add, a run twice, --replace: ok"
