#!/usr/bin/env python3
"""Per-kernel SASS comparison of the CUDA objects of two build folders (compile-only checks).

    scripts/sass-compare.py OLD_BUILD NEW_BUILD [--objects SUBDIR] [--kernel REGEX] [--diff]

For every object file (*.o) under SUBDIR (default: the attention library's objects) that
both folders hold, and every kernel in it, prints one row of a Markdown table:
  instructions   old -> new (NOPs not counted)
  same           how far the two are the same, strongest first:
                   bytes     every instruction and its control bits (stalls, barriers) equal
                   text      every instruction equal, in order (control bits differ)
                   regs      equal in order once register names (R, UR, P, UP, B) and branch
                             targets are replaced by placeholders
                   multiset  the same instructions (register names normalised), another order
                   opcodes   the same opcode histogram (operands differ)
                   no        the opcode histograms differ (the differing opcodes follow)
  changed        instructions of old (register names included) not matched, in order, in new
  regs, stack, local, shared (static)  from cuobjdump -res-usage, old -> new
  LDL/STL        spill loads and stores in the SASS, old -> new
With --diff, the in-order unified diff of the normalised text of each kernel that is not the
same up to register names.

cuobjdump: $CUOBJDUMP, else the one on PATH, else the triton wheel's copy (pip download
--no-deps triton -d /tmp/cuobj && unzip it: x/triton/backends/nvidia/bin/cuobjdump). Exit
status 0 when every kernel is the same at least up to its opcode histogram and no kernel
is missing on either side, 1 otherwise, 2 on bad usage.
"""
import argparse
import collections
import difflib
import os
import re
import shutil
import subprocess
import sys

DEFAULT_OBJECTS = "src/attention/CMakeFiles/moba_attention_cuda.dir"
TRITON_CUOBJDUMP = "/tmp/cuobj/x/triton/backends/nvidia/bin/cuobjdump"

INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\*\s*(0x[0-9a-f]+)\s*\*/\s*$")
CONTROL = re.compile(r"^\s*/\*\s*(0x[0-9a-f]+)\s*\*/\s*$")
FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
RES_FUNCTION = re.compile(r"^\s*Function\s+(\S+):\s*$")
RES_LINE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
REGISTER = re.compile(r"\b(UR|R|UP|P|B)(\d+)\b")
BRANCH_OPS = ("BRA", "BSSY", "CALL", "JMP", "BRX", "RET")


def fail(msg):
    print(f"sass-compare: {msg}", file=sys.stderr)
    sys.exit(2)


def find_cuobjdump():
    for c in (os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump"), TRITON_CUOBJDUMP):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    fail("no cuobjdump: set CUOBJDUMP, put one on PATH, or unpack the triton wheel "
         f"(expected at {TRITON_CUOBJDUMP})")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "does not contain device code" in r.stderr:
        return ""  # a host-only object: no kernels
    if r.returncode != 0:
        fail(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def stable_name(mangled):
    """The name without the per-build hash of an anonymous namespace (same length, so that
    the mangling stays valid)."""
    return re.sub(r"(_GLOBAL__N__)[0-9a-f]{8}_", r"\g<1>00000000_", mangled)


def strip_parameters(name):
    """`void f<...>(args)` -> `f<...>` (the parameter list is the last balanced (...))."""
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return re.sub(r"^void ", "", name)


def parse_sass(text):
    """{mangled name: [(instruction text, encoding + control)]}"""
    kernels, cur, pending = {}, None, None
    for line in text.splitlines():
        m = FUNCTION.match(line)
        if m:
            cur = kernels.setdefault(stable_name(m.group(1)), [])
            pending = None
            continue
        if cur is None:
            continue
        m = INSTR.match(line)
        if m:
            pending = [m.group(2).strip(), m.group(3)]
            cur.append(pending)
            continue
        m = CONTROL.match(line)
        if m and pending is not None:
            pending[1] += m.group(1)
            pending = None
    return kernels


def parse_res(text):
    res, cur = {}, None
    for line in text.splitlines():
        m = RES_FUNCTION.match(line)
        if m:
            cur = stable_name(m.group(1))
            continue
        m = RES_LINE.search(line)
        if m and cur is not None:
            res[cur] = tuple(int(x) for x in m.groups())
            cur = None
    return res


def opcode(instr):
    body = re.sub(r"^@!?U?P[T\d]+\s+", "", instr)  # predicate guard
    return body.split()[0] if body else ""


def normalise(instr):
    s = REGISTER.sub(lambda m: m.group(1), instr).replace(".reuse", "")
    if opcode(instr).split(".")[0] in BRANCH_OPS:
        s = re.sub(r"0x[0-9a-f]+", "ADDR", s)
    return s


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                         text=True).stdout.splitlines()
    short = {}
    for n, d in zip(names, out):
        d = d.replace("moba::attn::cuda::", "").replace("(anonymous namespace)::", "")
        short[n] = strip_parameters(d)
    return short


def objects(build, sub):
    root = os.path.join(build, sub)
    if not os.path.isdir(root):
        fail(f"{root}: no such folder (build the CUDA targets first)")
    found = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".o"):
                p = os.path.join(d, f)
                found[os.path.relpath(p, root)] = p
    return found


def load(cuobjdump, path):
    sass = parse_sass(run([cuobjdump, "-sass", path]))
    res = parse_res(run([cuobjdump, "-res-usage", path]))
    return sass, res


def compare(old, new):
    """(label, opcode differences) for two instruction lists."""
    if [i for i, _ in old] == [i for i, _ in new]:
        return ("bytes" if old == new else "text"), ""
    no = [normalise(i) for i, _ in old]
    nn = [normalise(i) for i, _ in new]
    if no == nn:
        return "regs", ""
    if collections.Counter(no) == collections.Counter(nn):
        return "multiset", ""
    ho = collections.Counter(opcode(i) for i, _ in old)
    hn = collections.Counter(opcode(i) for i, _ in new)
    if ho == hn:
        return "opcodes", ""
    keys = sorted(set(ho) | set(hn))
    diff = ", ".join(f"{k} {ho[k]}->{hn[k]}" for k in keys if ho[k] != hn[k])
    return "no", diff


def changed(old, new):
    """Instructions of old (text, register names included) that the in-order alignment with
    new does not match: 0 for the same text."""
    sm = difflib.SequenceMatcher(None, [i for i, _ in old], [i for i, _ in new], autojunk=False)
    return len(old) - sum(b.size for b in sm.get_matching_blocks())


def count(instrs, pred):
    return sum(1 for i, _ in instrs if pred(opcode(i)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_build")
    ap.add_argument("new_build")
    ap.add_argument("--objects", default=DEFAULT_OBJECTS,
                    help=f"folder of the objects inside each build (default {DEFAULT_OBJECTS})")
    ap.add_argument("--kernel", default="", help="only kernels whose demangled name matches")
    ap.add_argument("--diff", action="store_true",
                    help="print the normalised in-order diff of kernels that differ")
    a = ap.parse_args()
    cuobjdump = find_cuobjdump()
    old_objs = objects(a.old_build, a.objects)
    new_objs = objects(a.new_build, a.objects)
    ok = True
    for rel in sorted(set(old_objs) - set(new_objs)):
        print(f"only in {a.old_build}: {rel}")
        ok = False
    for rel in sorted(set(new_objs) - set(old_objs)):
        print(f"only in {a.new_build}: {rel}")
        ok = False
    print("| object | kernel | instructions | same | changed | regs | stack | local | shared | LDL/STL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    diffs = []
    kernel_filter = re.compile(a.kernel) if a.kernel else None
    for rel in sorted(set(old_objs) & set(new_objs)):
        so, ro = load(cuobjdump, old_objs[rel])
        sn, rn = load(cuobjdump, new_objs[rel])
        names = sorted(set(so) | set(sn))
        short = demangle(names)
        obj = os.path.basename(rel).replace(".cu.o", ".cu")
        for n in names:
            if kernel_filter and not kernel_filter.search(short[n]):
                continue
            if n not in so or n not in sn:
                print(f"| {obj} | {short[n]} | only in {'new' if n in sn else 'old'} | no | | | | | | |")
                ok = False
                continue
            io = [x for x in so[n] if opcode(x[0]) != "NOP"]
            inn = [x for x in sn[n] if opcode(x[0]) != "NOP"]
            label, opdiff = compare(io, inn)
            if label == "no":
                ok = False
            r_o, r_n = ro.get(n, (0, 0, 0, 0)), rn.get(n, (0, 0, 0, 0))

            def pair(x, y):
                return f"{x}" if x == y else f"{x} -> {y}"

            spills = pair(count(io, lambda op: op.startswith(("LDL", "STL"))),
                          count(inn, lambda op: op.startswith(("LDL", "STL"))))
            same = label + (f" ({opdiff})" if opdiff else "")
            diff_count = 0 if label in ("bytes", "text") else changed(io, inn)
            print(f"| {obj} | {short[n]} | {pair(len(io), len(inn))} | {same} | {diff_count} | {pair(r_o[0], r_n[0])} "
                  f"| {pair(r_o[1], r_n[1])} | {pair(r_o[3], r_n[3])} | {pair(r_o[2], r_n[2])} | {spills} |")
            if a.diff and label in ("multiset", "opcodes", "no"):
                d = difflib.unified_diff([normalise(i) for i, _ in io], [normalise(i) for i, _ in inn],
                                         f"old {short[n]}", f"new {short[n]}", lineterm="", n=1)
                diffs.append("\n".join(d))
    for d in diffs:
        print()
        print(d)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
