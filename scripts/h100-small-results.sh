#!/usr/bin/env bash
# Here, on the CPU machine, after the device sweep (docs/sweep.md, "h100-small on the
# device"): unpack the runs that bench/sweep_session.sh packed on the device and write the
# analysis beside them.
#   scripts/h100-small-results.sh /work/.device/.../h100-small-runs.tar.xz [DEST]
# DEST (default results/h100-small) then holds
#   runs/<run>/{metrics.jsonl,run.json,config.toml}   every run, as trained (no checkpoints);
#                                                     committed packed as runs.tar.xz
#   plan.json                                         the sweep's plan
#   logs.tar.xz (sweep.log, session.txt)              its log and the device facts, packed
#                                                     (results/README.md: logs go in one archive)
#   fit.txt, fits.json                                `moba fit` (both FLOP conventions)
#   figures/*.png, figures/*.svg                      `moba plot` and the report's figures
#   report.md                                         `moba report`: losses in nats per token
#                                                     and bits per byte, fits, MoBA/full ratios
#   README.md                                         what was run, with the exact commands
# Running it again replaces all of these (README.md included) from the archive.
# MOBA (build/src/cli/moba) is the moba binary; it is built (target moba only) if absent.
set -euo pipefail
cd "$(dirname "$0")/.."
tar_file=${1:?usage: scripts/h100-small-results.sh RUNS.tar.xz [DEST]}
dest=${2:-results/h100-small}
moba=${MOBA:-build/src/cli/moba}
[[ -f $tar_file ]] || { echo "h100-small-results: no archive $tar_file" >&2; exit 1; }
if [[ ! -x $moba ]]; then
  [[ -f build/CMakeCache.txt ]] || cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
  cmake --build build -j "$(nproc)" --target moba
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tar -xJf "$tar_file" -C "$stage"
[[ -d $stage/runs ]] && compgen -G "$stage/runs/*/run.json" >/dev/null ||
  { echo "h100-small-results: $tar_file holds no runs/<run>/run.json" >&2; exit 1; }
mkdir -p "$dest"
rm -rf "$dest/runs" "$dest/figures" "$dest/report.md" "$dest/fits.json" "$dest/fit.txt"
mv "$stage/runs" "$dest/runs"
if [[ -f $stage/plan.json ]]; then cp "$stage/plan.json" "$dest/plan.json"; else rm -f "$dest/plan.json"; fi
logs=()
for f in sweep.log session.txt; do [[ -f $stage/$f ]] && logs+=("$f"); done
rm -f "$dest/logs.tar.xz" "$dest/sweep.log" "$dest/session.txt"  # the last two: older layout
if ((${#logs[@]})); then tar -cJf "$dest/logs.tar.xz" -C "$stage" "${logs[@]}"; fi
n=$(compgen -G "$dest/runs/*/run.json" | wc -l)
echo "h100-small-results: $n runs from $tar_file in $dest/runs"

"$moba" fit "$dest/runs" -o "$dest/fits.json" | tee "$dest/fit.txt"
"$moba" plot "$dest/runs" -o "$dest/figures" --metric lm --metric trailing --metric bucket:2 \
  --compute both
"$moba" report "$dest/runs" -o "$dest"
grep -q "LM loss (bits/byte)" "$dest/report.md" ||
  { echo "h100-small-results: report.md has no bits per byte" >&2; exit 1; }

# README.md: what this folder is, from the archive's own facts.
summary=$(grep -E "^sweep .* trained, .* resumed" "$stage/sweep.log" 2>/dev/null | tail -1 || true)
{
  echo "# h100-small: the scaling sweep on one GPU"
  echo
  echo "Written by \`scripts/h100-small-results.sh\` from the archive the device returned."
  echo "The preset, its sizes and the device steps: docs/sweep.md (\"h100-small\", \"h100-small on"
  echo "the device\"). The report: [report.md](report.md) (losses in nats per token and bits per"
  echo "byte; byte-level tokens, so bits per byte = nats / ln 2)."
  echo
  echo "## The session (session.txt in logs.tar.xz, from the device)"
  echo
  echo '```'
  if [[ -f $stage/session.txt ]]; then cat "$stage/session.txt"; else echo "(no session.txt in the archive)"; fi
  echo '```'
  echo
  echo "Sweep: ${summary:-(no closing line in sweep.log: the sweep had not ended when the runs were collected)}"
  echo
  echo "## Commands"
  echo
  echo "On the device, three kinds of call (docs/sweep.md has them in full), each carrying"
  echo "\`.deps\` and \`data/books.tar.xz\`:"
  echo
  echo '```sh'
  echo "bench/sweep_session.sh start   # build moba (CUDA), prepare data/books-byte, start:"
  echo "#   moba sweep --config sweeps/h100-small.toml --device cuda -o runs/h100-small"
  echo "bench/sweep_poll.sh 560      # repeated, back to back (waits up to 560 s; returns when the sweep ends, then packs the runs)"
  echo "bench/sweep_session.sh collect # (if needed) -> \$OUT/h100-small-runs.tar.xz"
  echo '```'
  echo
  echo "Here:"
  echo
  echo '```sh'
  echo "scripts/h100-small-results.sh h100-small-runs.tar.xz   # which runs:"
  echo "moba fit $dest/runs -o $dest/fits.json > $dest/fit.txt"
  echo "moba plot $dest/runs -o $dest/figures --metric lm --metric trailing --metric bucket:2 --compute both"
  echo "moba report $dest/runs -o $dest"
  echo '```'
  echo
  echo "## Files"
  echo
  echo "- \`runs/<run>/\`: each run's \`metrics.jsonl\`, \`run.json\`, \`config.toml\` (docs/run_format.md;"
  echo "  no checkpoints). \`moba fit $dest/runs\` reproduces the fits."
  echo "- \`plan.json\`: the sweep's plan (sizes, tokens, FLOPs, estimated times, data reads, device)."
  echo "- \`logs.tar.xz\`: \`sweep.log\`, the sweep's whole output (plan, every run's progress and"
  echo "  validation lines), and \`session.txt\` (\`tar -xJOf $dest/logs.tar.xz sweep.log\`)."
  echo "- \`fit.txt\`, \`fits.json\`: the fits, both FLOP conventions, every metric (\`moba report\`"
  echo "  rewrites \`fits.json\` with the same settings)."
  echo "- \`figures/\`: PNG and SVG, LM loss, trailing loss and LM loss 4K-6K (bucket 2), 6ND and"
  echo "  executed FLOPs; \`report.md\` shows the PNGs."
} >"$dest/README.md"
# The run folders are committed packed (runs.tar.xz; runs/ and history/ are ignored by git).
packed=(runs); [[ -d $dest/history ]] && packed+=(history)
tar -cJf "$dest/runs.tar.xz" -C "$dest" "${packed[@]}"
echo "h100-small-results: wrote $dest/{report.md,fit.txt,fits.json,figures/,README.md,runs.tar.xz}"
