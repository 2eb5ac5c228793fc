#!/usr/bin/env bash
# Here, on the CPU machine, after one or more device sweeps of a study (docs/sweep.md): put
# the runs that bench/sweep_session.sh packed on the device into one results folder, and
# write the analysis beside them. Unlike scripts/h100-small-results.sh, the run folders are
# committed packed (runs.tar.xz: a study's metrics.jsonl files are tens of MB as text, and
# every device call carries the tracked tree within its 64 MiB), and unpacked into the
# ignored DEST/runs/ to be analysed.
#   scripts/study-results.sh DEST ARCHIVE[:GLOB] [ARCHIVE[:GLOB] ...]
#   scripts/study-results.sh --add DEST ARCHIVE[:GLOB] ...   (a later piece of the same study)
#   scripts/study-results.sh --replace DEST ARCHIVE[:GLOB] ... (start DEST anew: its committed
#                                                              runs are dropped)
# Each ARCHIVE is a <preset>-runs.tar.xz from the device; GLOB (default *) picks its run
# folders by name. Runs of every archive go into DEST/runs/; a name met twice is an error.
# Runs that an archive holds but GLOB leaves out go into DEST/runs-aside/ (packed with the
# rest, not analysed): e.g. a seed sweep's seed-1 runs that repeat the ladder's own.
# DEST then holds (all tracked but runs/ and runs-aside/):
#   runs.tar.xz                 runs/ and runs-aside/, every run's metrics.jsonl, run.json,
#                               config.toml (no checkpoints); unpack: tar -xJf DEST/runs.tar.xz -C DEST
#   plans/<archive>.json        each sweep's plan.json (order.txt: the order they came in);
#                               plan.json: their runs in one plan
#   logs.tar.xz                 each sweep's sweep.log and session.txt, in <archive>/
#   fit.txt, fits.json          moba fit (both FLOP conventions)
#   figures/*.{png,svg}         moba plot: LM loss, trailing loss, bucket 2 (4K-6K)
#   report.md                   moba report: ratios, paired intervals, seed noise, verdict
# DEST/README.md is not written: it is the study's own text.
# MOBA (build/src/cli/moba) is the moba binary.
# With DEST alone, the folder's committed runs.tar.xz is unpacked and the analysis rewritten.
# With --add, the committed runs, plans and logs are kept and the archives' runs added to them
# (a sweep resumed in a later session on a fresh device holds only its new runs, e.g. `--set
# ladder.layers=[8]`). Plans are merged in the order they were added (plans/order.txt): a run
# planned twice takes its latest plan's entry.
set -euo pipefail
cd "$(dirname "$0")/.."
add=0 replace=0
if [[ ${1:-} == --add ]]; then add=1; shift
elif [[ ${1:-} == --replace ]]; then replace=1; shift; fi
dest=${1:?usage: scripts/study-results.sh [--add|--replace] DEST [ARCHIVE[:GLOB] ...]}
shift
((add + replace == 0 || $# > 0)) || { echo "study-results: --add and --replace need archives" >&2; exit 1; }
moba=${MOBA:-build/src/cli/moba}
[[ -x $moba ]] || { echo "study-results: no moba binary at $moba (set MOBA)" >&2; exit 1; }
die() { echo "study-results: $*" >&2; exit 1; }

mkdir -p "$dest"
# Archives into a folder that already holds a study: its runs would be dropped for the
# archives' alone. Say so and ask which was meant.
if (($#)) && ((!add && !replace)) && [[ -f $dest/runs.tar.xz ]]; then
  die "$dest already holds a study (runs.tar.xz, $(tar -tJf "$dest/runs.tar.xz" | grep -c '/run.json$') runs): pass --add to add these archives' runs to it, or --replace to start it anew from them alone"
fi
if (($#)); then
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  rm -rf "$dest/runs" "$dest/runs-aside"
  if ((add)); then
    [[ -f $dest/runs.tar.xz ]] || die "--add: $dest/runs.tar.xz is missing"
    tar -xJf "$dest/runs.tar.xz" -C "$dest"
    mkdir -p "$stage/logs"
    [[ -f $dest/logs.tar.xz ]] && tar -xJf "$dest/logs.tar.xz" -C "$stage/logs"
    if [[ ! -f $dest/plans/order.txt ]] && compgen -G "$dest/plans/*.json" >/dev/null; then
      (cd "$dest/plans" && ls -1 ./*.json | sed 's#^./##') >"$dest/plans/order.txt"
    fi
  else
    rm -rf "$dest/plans"
  fi
  mkdir -p "$dest/runs" "$dest/runs-aside" "$dest/plans" "$stage/logs"
  for spec in "$@"; do
    archive=${spec%%:*}
    glob='*'
    [[ $spec == *:* ]] && glob=${spec#*:}
    [[ -f $archive ]] || die "no archive $archive"
    name=$(basename "$archive" .tar.xz)
    rm -rf "$stage/x" && mkdir -p "$stage/x"
    tar -xJf "$archive" -C "$stage/x"
    compgen -G "$stage/x/runs/*/run.json" >/dev/null || die "$archive holds no runs/<run>/run.json"
    for run in "$stage"/x/runs/*/; do
      run=${run%/}
      base=$(basename "$run")
      # shellcheck disable=SC2053
      if [[ $base == $glob ]]; then target=$dest/runs; else target=$dest/runs-aside; fi
      [[ -e $dest/runs/$base || -e $dest/runs-aside/$base ]] && die "run $base is in two archives"
      mv "$run" "$target/$base"
    done
    # A name already used by an earlier piece gets a number: h200-runs-2, -3, ...
    piece=$name
    n=2
    while [[ -e $dest/plans/$piece.json || -e $stage/logs/$piece ]]; do piece=$name-$n; n=$((n + 1)); done
    if [[ -f $stage/x/plan.json ]]; then
      cp "$stage/x/plan.json" "$dest/plans/$piece.json"
      echo "$piece.json" >>"$dest/plans/order.txt"
    fi
    mkdir -p "$stage/logs/$piece"
    for f in sweep.log session.txt; do
      [[ -f $stage/x/$f ]] && cp "$stage/x/$f" "$stage/logs/$piece/"
    done
  done
  # One plan.json for moba report's "Planned against measured time": the first plan with
  # every plan's runs (the presets of one study share their time model).
  python3 - "$dest/plans" "$dest/plan.json" <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
order = folder / "order.txt"
names = order.read_text().split() if order.exists() else sorted(p.name for p in folder.glob("*.json"))
plans = [folder / n for n in names]
if plans:
    merged = json.loads(plans[0].read_text())
    runs = {}  # name -> entry; a later plan's entry replaces an earlier one's, in its place
    for p in plans:
        for r in json.loads(p.read_text())["runs"]:
            runs[r["name"]] = r
    merged["runs"] = list(runs.values())
    merged["merged_from"] = names
    pathlib.Path(sys.argv[2]).write_text(json.dumps(merged, indent=2) + "\n")
PY
  tar -cJf "$dest/logs.tar.xz" -C "$stage/logs" .
  tar -cJf "$dest/runs.tar.xz" -C "$dest" runs runs-aside
else
  [[ -f $dest/runs.tar.xz ]] || die "$dest/runs.tar.xz is missing: give the device archives"
  rm -rf "$dest/runs" "$dest/runs-aside"
  tar -xJf "$dest/runs.tar.xz" -C "$dest"
fi
n=$(compgen -G "$dest/runs/*/run.json" | wc -l)
echo "study-results: $n runs in $dest/runs ($(compgen -G "$dest/runs-aside/*/run.json" | wc -l) aside)"

rm -rf "$dest/figures"
"$moba" fit "$dest/runs" -o "$dest/fits.json" | sed "s#$dest/runs#$dest/runs (runs.tar.xz)#" | tee "$dest/fit.txt"
"$moba" plot "$dest/runs" -o "$dest/figures" --metric lm --metric trailing --metric bucket:2 \
  --compute both
"$moba" report "$dest/runs" -o "$dest"
grep -q "LM loss (bits/byte)" "$dest/report.md" || die "report.md has no bits per byte"
echo "study-results: wrote $dest/{runs.tar.xz,logs.tar.xz,plans/,fit.txt,fits.json,figures/,report.md}"
