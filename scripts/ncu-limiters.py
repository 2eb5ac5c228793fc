#!/usr/bin/env python3
"""Issue 16's "limiter per kernel" table from Nsight Compute console output (ncu's default text
format, as bench/perf_session.sh's steps ncu, ncubar and ncugate write it), as Markdown.

One row per kernel and launch shape (short name, grid, block; per input file when several are
given): the launches profiled (n), the mean duration per launch in us (the JSON also has the
total), the mean of every other figure over those launches: Compute (SM) throughput, Memory
throughput and its units (DRAM, L1/TEX, L2), registers per thread, achieved and theoretical
occupancy, warp cycles per issued instruction, and the top warp stall with its share (from
ncu's rule text "... being stalled <reason> ... about X% of the total"; the stall most launches
name, with its mean share). Rows by total duration (n x mean), longest first. Short names keep
the template arguments and drop "void" and the argument list.

The limiter, from the Speed of Light figures (means) of the row:
  compute                 SM throughput >= 60% and >= memory throughput
  memory (DRAM|L2|L1)     otherwise, memory throughput >= 60%; the busiest of DRAM, L2, L1/TEX
  latency (<top stall>)   otherwise (neither unit near its peak: warps wait)
  + occupancy             appended when achieved occupancy < 70% of theoretical
A figure a dump lacks (section not collected, "no data") prints "-"; a limiter that needs a
missing figure prints "-".

    scripts/ncu-limiters.py out/ncubar-moba-s24.txt --md out/ncubar-moba-limiters-s24.md
    scripts/ncu-limiters.py a.txt b.txt --top 10 --filter 'bwd|gate' --json limiters.json
    scripts/ncu-limiters.py --per-launch out/ncugate-1m-s24.txt

A file with no kernel in it, or a figure the table needs that is not a number, is an error
naming the file (and line)."""
import argparse
import json
import os
import re
import sys

# Thresholds of the limiter rule (docstring above; the table's legend line repeats them).
BOUND_PCT = 60.0
OCC_FRACTION = 0.7
LEGEND = (f"Limiter: compute if SM >= {BOUND_PCT:.0f}% and SM >= memory; else memory (busiest "
          f"of DRAM / L2 / L1) if memory >= {BOUND_PCT:.0f}%; else latency (top warp stall "
          f"from ncu's rule text); \"+ occupancy\" if achieved < {OCC_FRACTION:.0%} of "
          "theoretical occupancy. \"-\": not in the dump.")

# (section title, metric name) -> our key. Sections as ncu's console prints them.
SOL = "GPU Speed Of Light Throughput"
METRICS = {
    (SOL, "Duration"): "duration_us",
    (SOL, "Compute (SM) Throughput"): "sm_pct",
    (SOL, "Memory Throughput"): "mem_pct",
    (SOL, "DRAM Throughput"): "dram_pct",
    (SOL, "L1/TEX Cache Throughput"): "l1_pct",
    (SOL, "L2 Cache Throughput"): "l2_pct",
    ("Launch Statistics", "Registers Per Thread"): "regs",
    ("Occupancy", "Achieved Occupancy"): "achieved_occ_pct",
    ("Occupancy", "Theoretical Occupancy"): "theoretical_occ_pct",
    ("Warp State Statistics", "Warp Cycles Per Issued Instruction"): "warp_cycles_per_issue",
    ("Compute Workload Analysis", "SM Busy"): "sm_busy_pct",
    ("Compute Workload Analysis", "Issue Slots Busy"): "issue_busy_pct",
}
FIGURES = list(dict.fromkeys(METRICS.values()))
TIME_UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3,
              "msecond": 1e3, "s": 1e6, "second": 1e6}
NO_VALUE = {"no data", "n/a", "N/A", "-"}

# "  void k<128, 8>(AttnParams) (16, 256, 1)x(256, 1, 1), Context 1, Stream 7, Device 0, CC 9.0"
KERNEL_RE = re.compile(r"^  (\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\), "
                       r"Context \d+, Stream \d+")
SECTION_RE = re.compile(r"^\s+Section: (.+?)\s*$")
DASHES_RE = re.compile(r"^\s*-+( +-+)+\s*$")
RULE_RE = re.compile(r"^    (OPT|WRN|INF|ERR)\s+(.*)$")
NUMBER_RE = re.compile(r"^-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?([eE][-+]?\d+)?$")
STALL_RE = re.compile(r"being stalled (.+?)\. .*?represents about ([\d.]+)% of the total")

# ncu's stall descriptions (Profiling Guide, warp stall reasons) -> the reason's short name.
STALLS = [
    ("fixed latency execution dependency", "fixed-latency wait"),
    ("scoreboard dependency on a L1TEX", "long scoreboard (L1TEX)"),
    ("scoreboard dependency on a MIO", "short scoreboard (MIO)"),
    ("sibling warps at a CTA barrier", "barrier"),
    ("execution pipe to be available", "math pipe throttle"),
    ("MIO (memory input/output) instruction queue", "MIO throttle"),
    ("L1 instruction queue for local and global", "LG throttle"),
    ("memory barrier", "membar"),
    ("instruction cache miss", "no instruction"),
    ("branch target", "branch resolving"),
    ("dispatch", "dispatch stall"),
    ("texture", "tex throttle"),
    ("GMMA", "GMMA"),
]


class InputError(Exception):
    pass


def short_name(name):
    """Drops a leading "void" and the trailing argument list (the last balanced "(...)")."""
    if name.startswith("void "):
        name = name[5:]
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                if i > 0:
                    name = name[:i]
                break
    return name.strip()


def number(text, where, metric):
    if text in NO_VALUE:
        return None
    if not NUMBER_RE.match(text):
        raise InputError(f"{where}: malformed number {text!r} for {metric!r}")
    return float(text.replace(",", ""))


def stall_name(phrase):
    for needle, short in STALLS:
        if needle.lower() in phrase.lower():
            return short
    return re.sub(r"^(waiting (on|for) )", "", phrase)


def parse(path):
    """The kernel launches in one ncu console dump: a list of dicts (figures None when absent)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})")
    launches = []
    k = section = cols = None
    in_table = False
    rule = None  # the rule text being read: a list of its lines

    def end_rule():
        nonlocal rule
        if rule is not None and k is not None:
            k["rules"].append(" ".join(" ".join(rule).split()))
        rule = None

    for n, line in enumerate(lines, 1):
        m = KERNEL_RE.match(line)
        if m:
            end_rule()
            g, b = m.group(2, 3, 4), m.group(5, 6, 7)
            k = {"kernel": short_name(m.group(1)), "signature": m.group(1),
                 "grid": "(" + ", ".join(g) + ")", "block": "(" + ", ".join(b) + ")",
                 "file": path, "line": n, "rules": [], **{f: None for f in FIGURES}}
            launches.append(k)
            section, cols, in_table = None, None, False
            continue
        if k is None:
            continue
        if rule is not None:
            if line.startswith("          ") and line.strip():
                rule.append(line.strip())
                continue
            end_rule()
        m = SECTION_RE.match(line)
        if m:
            section, cols, in_table = m.group(1), None, False
            continue
        if DASHES_RE.match(line):
            if in_table:  # the table's closing rule
                in_table, cols = False, None
            else:  # a table's opening rule, or the one under its header
                spans = [mm.span() for mm in re.finditer(r"-+", line)]
                cols = spans if len(spans) == 3 else None
            continue
        if cols and line.strip().startswith("Metric Name"):
            continue  # the header; the rule under it opens the rows
        m = RULE_RE.match(line)
        if m:
            rule = [m.group(2).strip()]
            in_table = False
            continue
        if cols is not None and line.strip():
            in_table = True
            name = line[:cols[0][1]].strip()
            value = line[cols[2][0]:].strip() if len(line) > cols[2][0] else ""
            unit = line[cols[1][0]:cols[1][1]].strip()
            key = METRICS.get((section, name))
            if key is None:
                continue
            where = f"{path}:{n}"
            x = number(value, where, name)
            if x is not None and key == "duration_us":
                if unit not in TIME_UNITS:
                    raise InputError(f"{where}: unknown time unit {unit!r} for 'Duration'")
                x *= TIME_UNITS[unit]
            k[key] = x
    end_rule()
    if not launches:
        raise InputError(f"{path}: no kernel found (expected ncu's console output, a line such "
                         "as '  void k<...>(...) (16, 256, 1)x(256, 1, 1), Context 1, Stream 7, ...')")
    for k in launches:
        stalls = [(float(m.group(2)), stall_name(m.group(1)))
                  for r in k["rules"] for m in [STALL_RE.search(r)] if m]
        top = max(stalls) if stalls else (None, None)
        k["top_stall_pct"], k["top_stall"] = top
    return launches


def limiter(r):
    sm, mem = r.get("sm_pct"), r.get("mem_pct")
    if sm is None or mem is None:
        return "-"
    if sm >= BOUND_PCT and sm >= mem:
        out = "compute"
    elif mem >= BOUND_PCT:
        units = [(r.get(key), name) for key, name in
                 (("dram_pct", "DRAM"), ("l2_pct", "L2"), ("l1_pct", "L1"))]
        units = [u for u in units if u[0] is not None]
        out = f"memory ({max(units)[1]})" if units else "memory"
    else:
        stall = r.get("top_stall")
        out = f"latency ({stall})" if stall else "latency"
    ach, theo = r.get("achieved_occ_pct"), r.get("theoretical_occ_pct")
    if ach is not None and theo and ach < OCC_FRACTION * theo:
        out += " + occupancy"
    return out


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def aggregate(launches, by_file):
    groups = {}
    for k in launches:
        key = (k["file"] if by_file else None, k["kernel"], k["grid"], k["block"])
        groups.setdefault(key, []).append(k)
    rows = []
    for (_, name, grid, block), ks in groups.items():
        r = {"kernel": name, "signature": ks[0]["signature"], "grid": grid, "block": block,
             "file": ks[0]["file"], "launches": len(ks)}
        for f in FIGURES:
            r[f] = mean([k[f] for k in ks])
        durs = [k["duration_us"] for k in ks if k["duration_us"] is not None]
        r["duration_us_total"] = sum(durs) if durs else None
        named = [k["top_stall"] for k in ks if k["top_stall"]]
        if named:
            top = max(dict.fromkeys(named), key=named.count)  # most launches; first on a tie
            r["top_stall"] = top
            r["top_stall_pct"] = mean([k["top_stall_pct"] for k in ks if k["top_stall"] == top])
        else:
            r["top_stall"], r["top_stall_pct"] = None, None
        r["limiter"] = limiter(r)
        rows.append(r)
    return rows


def fmt(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


def table(rows, per_launch, several_files):
    what = ("one row per profiled launch" if per_launch else
            "one row per kernel and launch shape; n = launches profiled, duration = mean per "
            "launch, the other figures means over them")
    head = ["kernel", "grid x block", "n", "duration (us)", "SM %", "memory %", "DRAM %",
            "L1/TEX %", "L2 %", "regs", "achieved occ. %", "theoretical occ. %",
            "warp cycles / issue", "top stall (share)", "limiter"]
    if several_files:
        head.insert(0, "dump")
    lines = [f"Rows: {what}; longest total first.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stall = "-" if not r["top_stall"] else (
            f"{r['top_stall']} ({fmt(r['top_stall_pct'], 1)}%)")
        cells = [f"`{r['kernel']}`", f"{r['grid']}x{r['block']}", str(r["launches"]),
                 fmt(r["duration_us"], 1), fmt(r["sm_pct"]), fmt(r["mem_pct"]),
                 fmt(r["dram_pct"]), fmt(r["l1_pct"]), fmt(r["l2_pct"]), fmt(r["regs"], 0),
                 fmt(r["achieved_occ_pct"]), fmt(r["theoretical_occ_pct"]),
                 fmt(r["warp_cycles_per_issue"]), stall, r["limiter"]]
        if several_files:
            cells.insert(0, os.path.basename(r["file"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", LEGEND]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+", help="ncu console output files")
    ap.add_argument("--md", help="write the Markdown table here too")
    ap.add_argument("--json", help="write the rows' figures here")
    ap.add_argument("--top", type=int, help="only the N rows of longest total duration")
    ap.add_argument("--filter", help="only kernels whose short name matches this regex")
    ap.add_argument("--per-launch", action="store_true", help="one row per launch, no means")
    a = ap.parse_args()
    if a.top is not None and a.top < 1:
        ap.error(f"--top must be >= 1, got {a.top}")
    try:
        pattern = re.compile(a.filter) if a.filter else None
    except re.error as e:
        ap.error(f"--filter {a.filter!r} is not a regular expression: {e}")
    try:
        launches = [k for path in a.dumps for k in parse(path)]
    except InputError as e:
        sys.exit(f"ncu-limiters: {e}")
    several = len(a.dumps) > 1
    if pattern:
        launches = [k for k in launches if pattern.search(k["kernel"])]
        if not launches:
            sys.exit(f"ncu-limiters: no kernel matches --filter {a.filter!r}")
    if a.per_launch:
        rows = []
        for k in launches:
            r = {x: k[x] for x in ("kernel", "signature", "grid", "block", "file", "line",
                                   "top_stall", "top_stall_pct", *FIGURES)}
            r["launches"] = 1
            r["duration_us_total"] = k["duration_us"]
            r["limiter"] = limiter(r)
            rows.append(r)
    else:
        rows = aggregate(launches, several)
    rows.sort(key=lambda r: -(r["duration_us_total"] or 0.0))  # stable: file order on ties
    if a.top:
        rows = rows[:a.top]
    text = table(rows, a.per_launch, several)
    print(text, end="")
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"legend": LEGEND, "per_launch": a.per_launch, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
