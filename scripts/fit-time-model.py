#!/usr/bin/env python3
"""Fits the sweep planner's time model ([estimate] in sweeps/*.toml, docs/sweep.md) to runs.

The model (src/scaling/plan.h, ThroughputModel): a run takes
    token equivalents x (seconds_per_token + matmul FLOPs per token / matmul rate
                         + full attention FLOPs per token / full rate
                         + MoBA attended FLOPs per token / MoBA rate)
seconds, token equivalents = training tokens + validation window tokens / 3. The figures
are chosen to make the largest relative error over the runs smallest (a Chebyshev fit: a
linear program in seconds_per_token and the three inverse rates, solved exactly by trying
every vertex: each set of k + 1 runs on which the error can equioscillate, k the number of
free parameters, with every subset of parameters pinned at 0).

What it reads, all written by moba itself:
  - each preset's plan (`moba sweep --plan-only --plan-json`): per run its token equivalents
    and executed FLOPs per token by part (matmul, full attention, MoBA attention);
  - the runs' measured seconds (`moba report RUNS` -> plan_times.json: the run's clock from
    the start of its training loop to its last step plus the final validation);
  - optionally a kernel benchmark (`moba bench attention --json`, e.g.
    results/attention/v13/d64-call4.json): dense and MoBA forward + backward rates per T,
    to compare with the fitted attention rates and to carry them to another T.

Usage (the fit in sweeps/h200*.toml):
  .venv/bin/python scripts/fit-time-model.py --moba build-cpu/src/cli/moba \\
      --runs results/h200/runs --preset sweeps/h200.toml --preset sweeps/h200-seeds.toml \\
      --bench results/attention/v13/d64-call4.json --target-T 32768
(results/h200/runs: `tar -xJf results/h200/runs.tar.xz -C results/h200`.)
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

PARTS = ["per_token", "matmul", "full_attention", "moba_attention"]


def chebyshev(A, b=None, free=None):
    """min over x >= 0 (x[j] = 0 where not free) of max_i |A[i] x - b[i]| (b: ones):
    (x, that max).

    Tries every vertex of the linear program: for each subset F of the free parameters,
    every |F| + 1 rows i with signs s_i solving A[i, F] x_F - s_i e = b[i]; keeps the
    feasible (x_F >= 0, e >= 0) solution of the smallest max over all rows.
    """
    n, k_all = A.shape
    b = np.ones(n) if b is None else np.asarray(b, dtype=float)
    free = [True] * k_all if free is None else free
    # Columns of one scale (seconds per token and per FLOP differ by 1e14): the solves are
    # on A / scale, the solution is scaled back.
    scale = np.where(np.abs(A).max(axis=0) > 0, np.abs(A).max(axis=0), 1.0)
    A = A / scale
    best_x, best_err = None, np.inf
    free_idx = [j for j in range(k_all) if free[j]]
    for k in range(1, len(free_idx) + 1):
        for F in itertools.combinations(free_idx, k):
            sub = A[:, F]
            for rows in itertools.combinations(range(n), k + 1):
                for signs in itertools.product((1.0, -1.0), repeat=k + 1):
                    M = np.hstack([sub[list(rows)], -np.array(signs)[:, None]])
                    if abs(np.linalg.det(M)) < 1e-12:
                        continue
                    sol = np.linalg.solve(M, b[list(rows)])
                    xF, e = sol[:k], sol[k]
                    if e < -1e-12 or (xF < 0).any():
                        continue
                    x = np.zeros(k_all)
                    x[list(F)] = xF
                    err = np.abs(A @ x - b).max()
                    if err < best_err - 1e-12:
                        best_x, best_err = x, err
    return best_x / scale, best_err


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fit-time-model: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def rate(x):
    return 1.0 / x if x > 0 else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moba", required=True, help="the moba binary (a CPU build does)")
    ap.add_argument("--runs", required=True, help="the runs' folder (with plan.json beside)")
    ap.add_argument("--preset", action="append", required=True,
                    help="a preset that planned some of the runs (repeatable)")
    ap.add_argument("--bench", help="`moba bench attention --json` output at the runs' head dim")
    ap.add_argument("--target-T", type=int, action="append", default=[],
                    help="also carry the attention rates to this T with the bench (repeatable)")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        plans = {}
        for i, preset in enumerate(a.preset):
            path = os.path.join(tmp, f"plan{i}.json")
            run([a.moba, "sweep", "--config", preset, "--plan-only", "--device", "cuda",
                 "--plan-json", path])
            for r in json.load(open(path))["runs"]:
                plans[r["name"]] = r
        run([a.moba, "report", a.runs, "-o", os.path.join(tmp, "report")])
        times = json.load(open(os.path.join(tmp, "report", "plan_times.json")))

    rows = []
    for t in times["runs"]:
        if t["measured_s"] is None:
            continue
        if t["run"] not in plans:
            sys.exit(f"fit-time-model: run {t['run']} is in no preset's plan (--preset)")
        p = plans[t["run"]]
        f = p["exec_per_token"]
        rows.append({"run": t["run"], "attention": p["attention"], "T": p["seq_len"],
                     "measured": t["measured_s"], "teq": p["token_equivalents"],
                     "x": np.array([1.0, f["matmul"], f["full_attention"], f["moba_attention"]])})
    if not rows:
        sys.exit("fit-time-model: no run has a measured time")
    n = len(rows)
    X = np.array([r["teq"] * r["x"] for r in rows])  # seconds per unit of each parameter
    m = np.array([r["measured"] for r in rows])
    A = X / m[:, None]  # relative: |A x - 1| is each run's |error|
    Ts = sorted({r["T"] for r in rows})

    fits = []  # (name, seconds by part per run (n x 4), figures text)

    # The old form: seconds_per_token + every FLOP at one rate.
    x, e = chebyshev(np.column_stack([A[:, 0], A[:, 1:].sum(axis=1)]))
    fits.append(("one rate (the two-figure form)", e,
                 np.column_stack([X[:, 0] * x[0], X[:, 1:] * x[1]]),
                 f"seconds_per_token = {x[0]:.4g}, flops_per_s = {rate(x[1]):.4g}"))
    # Every part free.
    x, e = chebyshev(A)
    fits.append(("a rate per part, all four free", e, X * x,
                 f"seconds_per_token = {x[0]:.4g}, matmul_flops_per_s = {rate(x[1]):.4g}, "
                 f"attention_flops_per_s.full = {rate(x[2]):.4g}, attention_flops_per_s.moba = "
                 f"{rate(x[3]):.4g}"))
    free = x
    bench_fit = None
    if a.bench:
        b = json.load(open(a.bench))
        by_T = {row["T"]: row for row in b["rows"]}
        print(f"kernel benchmark {a.bench} ({b.get('device', '?')}, D {b['head_dim']}, "
              f"H {b['heads']}, B {b['batch']}, S {b['block_size']}, K {b['top_k']}): "
              "forward + backward FLOP/s (MoBA: attended FLOPs over its whole time, the gate's "
              "included)\n")
        print("| T | dense | MoBA | MoBA density |\n|---|---|---|---|")
        for T in sorted(by_T):
            r = by_T[T]
            print(f"| {T} | {r['dense_tflops_fwd_bwd'] * 1e12:.4g} | "
                  f"{r['moba_attended_tflops_fwd_bwd'] * 1e12:.4g} | {r['density']:.3f} |")
        print()
        for T in Ts + a.target_T:
            if T not in by_T:
                sys.exit(f"fit-time-model: the bench has no row at T = {T}")
        dense = lambda T: by_T[T]["dense_tflops_fwd_bwd"] * 1e12
        moba = lambda T: by_T[T]["moba_attended_tflops_fwd_bwd"] * 1e12
        # Attention at the bench's rates at each run's T: the runs fit the rest.
        att = np.array([(X[i, 2] / dense(r["T"]) + X[i, 3] / moba(r["T"])) for i, r in enumerate(rows)])
        x, e = chebyshev(A[:, :2], 1 - att / m)
        bench_fit = x
        fits.append(("attention at the bench's rates, per-token time and matmul rate fitted", e,
                     np.column_stack([X[:, 0] * x[0], X[:, 1] * x[1],
                                      [X[i, 2] / dense(r["T"]) for i, r in enumerate(rows)],
                                      [X[i, 3] / moba(r["T"]) for i, r in enumerate(rows)]]),
                     f"seconds_per_token = {x[0]:.4g}, matmul_flops_per_s = {rate(x[1]):.4g}, "
                     "attention_flops_per_s at the bench's rates"))
        # The check: the bench's attention times scaled by one free factor.
        x, e = chebyshev(np.column_stack([A[:, 0], A[:, 1], att / m]))
        fits.append(("the bench's attention times x a fitted factor (a check)", e,
                     np.column_stack([X[:, 0] * x[0], X[:, 1] * x[1],
                                      [x[2] * X[i, 2] / dense(r["T"]) for i, r in enumerate(rows)],
                                      [x[2] * X[i, 3] / moba(r["T"]) for i, r in enumerate(rows)]]),
                     f"seconds_per_token = {x[0]:.4g}, matmul_flops_per_s = {rate(x[1]):.4g}, "
                     f"attention time = {x[2]:.3f} x the bench's"))

    print(f"{n} runs at T = {Ts} (measured: {a.runs}; plans: {', '.join(a.preset)})\n")
    for name, e, parts, figures in fits:
        print(f"- {name}: {figures}; max |error| {100 * e:.2f}%")
    for name, e, parts, figures in fits:
        print(f"\n{name} (max |error| {100 * e:.2f}%):\n")
        print("| run | measured (s) | planned (s) | error | per token | matmuls | full attn. | "
              "MoBA attn. |\n|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(rows):
            t = parts[i].sum()
            print(f"| {r['run']} | {r['measured']:.2f} | {t:.2f} | "
                  f"{100 * (t / r['measured'] - 1):+.1f}% | "
                  + " | ".join(f"{v:.2f}" for v in parts[i]) + " |")

    if a.bench:
        for T0 in Ts:
            print(f"\nat T = {T0} the free fit's attention rates are {rate(free[2]) / dense(T0):.3f}x "
                  f"(full) and {rate(free[3]) / moba(T0):.3f}x (MoBA) the bench's")
        print("\n[estimate] of the bench form, per T:")
        for T in sorted(set(Ts + a.target_T)):
            print(f"  T = {T}: seconds_per_token = {bench_fit[0]:.3g}, matmul_flops_per_s = "
                  f"{rate(bench_fit[1]):.3g}, attention_flops_per_s.full = {dense(T):.3g}, "
                  f"attention_flops_per_s.moba = {moba(T):.3g}")


if __name__ == "__main__":
    main()
