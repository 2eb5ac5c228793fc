#!/bin/sh
# scripts/ncu-limiters.py on the two Nsight Compute dumps of results/attention/v7/logs.tar.xz
# (extracted here, at test time): the backward kernels' figures, limiters and stall, --top,
# --json; then the MoBA dump edited (SM throughput 75%, achieved occupancy 6%, a Launch
# Statistics section, a second stall rule) for the compute and occupancy rules and registers; a malformed number
# and an empty file refused with their messages.
#   ncu_limiters_test.sh PYTHON SCRIPT LOGS_TAR_XZ WORKDIR
set -eu
py=$1 script=$2 tarball=$3 w=$4
rm -rf "$w" && mkdir -p "$w"
tar -xJf "$tarball" -C "$w" ncu_moba_bwd.txt ncu_dense_bwd.txt
fail() { echo "FAIL: $*" >&2; exit 1; }
has() { grep -qF -- "$2" "$1" || { cat "$1"; fail "$3: expected the line: $2"; }; }

moba="| ncu_moba_bwd.txt | \`attn_bwd_kernel<128, 8, 64, 1>\` | (16, 256, 1)x(256, 1, 1) | 1 | 5470.0 | 31.60 | 55.37 | 16.48 | 55.69 | 36.84 | - | 12.47 | 12.50 | 7.52 | fixed-latency wait (32.6%) | latency (fixed-latency wait) |"
dense="| ncu_dense_bwd.txt | \`attn_bwd_kernel<128, 8, 64, 0>\` | (16, 256, 1)x(256, 1, 1) | 1 | 47190.0 | 42.76 | 71.70 | 8.50 | 71.76 | 45.28 | - | 12.50 | 12.50 | 7.62 | - | memory (L1) |"
"$py" "$script" "$w/ncu_moba_bwd.txt" "$w/ncu_dense_bwd.txt" --md "$w/both.md" \
  --json "$w/both.json" >"$w/both.out" 2>&1 || { cat "$w/both.out"; fail "the v7 dumps"; }
cmp -s "$w/both.out" "$w/both.md" || fail "--md differs from what was printed"
has "$w/both.md" "$moba" "MoBA backward"
has "$w/both.md" "$dense" "dense backward"
has "$w/both.md" "Limiter: compute if SM >= 60% and SM >= memory" "legend"
# Longest first: dense (47 ms) above MoBA (5.5 ms).
[ "$(grep -n 'attn_bwd_kernel<128, 8, 64, 0>' "$w/both.md" | cut -d: -f1)" -lt \
  "$(grep -n 'attn_bwd_kernel<128, 8, 64, 1>' "$w/both.md" | cut -d: -f1)" ] || fail "row order"
"$py" - "$w/both.json" <<'EOF' || fail "--json"
import json, sys
rows = {r["kernel"]: r for r in json.load(open(sys.argv[1]))["rows"]}
r = rows["attn_bwd_kernel<128, 8, 64, 1>"]
want = {"duration_us": 5470.0, "sm_pct": 31.6, "mem_pct": 55.37, "regs": None,
        "top_stall": "fixed-latency wait", "top_stall_pct": 32.6,
        "limiter": "latency (fixed-latency wait)", "launches": 1}
bad = {k: (r[k], v) for k, v in want.items() if (r[k] is None) != (v is None) or
       (v is not None and (abs(r[k] - v) > 1e-9 if isinstance(v, float) else r[k] != v))}
assert not bad, f"got, expected: {bad}"
assert rows["attn_bwd_kernel<128, 8, 64, 0>"]["limiter"] == "memory (L1)"
EOF
"$py" "$script" "$w/ncu_moba_bwd.txt" "$w/ncu_dense_bwd.txt" --top 1 >"$w/top.out" 2>&1 ||
  { cat "$w/top.out"; fail "--top"; }
has "$w/top.out" "$dense" "--top 1"
if grep -qF "attn_bwd_kernel<128, 8, 64, 1>" "$w/top.out"; then fail "--top 1 kept two rows"; fi

# Compute bound, achieved occupancy under 70% of theoretical, registers from Launch Statistics,
# a second (smaller) stall named: the top stall stays the larger.
sed -e 's/^\(    Compute (SM) Throughput  *%  *\)31.60$/\175.00/' \
    -e 's/^\(    Achieved Occupancy  *%  *\)12.47$/\1 6.00/' "$w/ncu_moba_bwd.txt" |
  awk '/^    Section: Occupancy/ {
         print "    Section: Launch Statistics"
         print "    -------------------------------- --------------- ---------------"
         print "    Metric Name                          Metric Unit    Metric Value"
         print "    -------------------------------- --------------- ---------------"
         print "    Function Cache Configuration                     CachePreferNone"
         print "    Registers Per Thread             register/thread             168"
         print "    Threads                                   thread       1,048,576"
         print "    -------------------------------- --------------- ---------------"
         print ""
         print "    OPT   Est. Local Speedup: 12%"
         print "          On average, each warp of this workload spends 0.9 cycles being stalled waiting for a"
         print "          scoreboard dependency on a L1TEX (local, global, surface, texture) operation. This stall"
         print "          type represents about 12.0% of the total average of 7.5 cycles between issuing two"
         print "          instructions."
         print "" }
       { print }' >"$w/edited.txt"
grep -q "75.00" "$w/edited.txt" && grep -q " 6.00" "$w/edited.txt" || fail "the edit of the dump"
"$py" "$script" --per-launch "$w/edited.txt" >"$w/edited.out" 2>&1 || { cat "$w/edited.out"; fail "edited"; }
has "$w/edited.out" "| \`attn_bwd_kernel<128, 8, 64, 1>\` | (16, 256, 1)x(256, 1, 1) | 1 | 5470.0 | 75.00 | 55.37 | 16.48 | 55.69 | 36.84 | 168 | 6.00 | 12.50 | 7.52 | fixed-latency wait (32.6%) | compute + occupancy |" "edited dump"

# A malformed number: refused, naming the file, the line and the metric.
sed 's/^\(    Duration  *ms  *\)5.47$/\15,4.7/' "$w/ncu_moba_bwd.txt" >"$w/malformed.txt"
if "$py" "$script" "$w/malformed.txt" >"$w/malformed.out" 2>&1; then fail "malformed number accepted"; fi
has "$w/malformed.out" "ncu-limiters: $w/malformed.txt:21: malformed number '5,4.7' for 'Duration'" "malformed"

# An empty file, and a file of text with no kernel: refused, naming the file.
: >"$w/empty.txt"
if "$py" "$script" "$w/ncu_moba_bwd.txt" "$w/empty.txt" >"$w/empty.out" 2>&1; then fail "empty file accepted"; fi
has "$w/empty.out" "ncu-limiters: $w/empty.txt: no kernel found" "empty"
head -5 "$w/ncu_moba_bwd.txt" >"$w/nokernel.txt"
if "$py" "$script" "$w/nokernel.txt" >"$w/nokernel.out" 2>&1; then fail "no kernel accepted"; fi
has "$w/nokernel.out" "ncu-limiters: $w/nokernel.txt: no kernel found" "no kernel"
echo "ncu-limiters: v7 backward rows, --top, --json, compute + occupancy, malformed, empty: ok"
