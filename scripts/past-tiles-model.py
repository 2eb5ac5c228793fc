#!/usr/bin/env python3
"""Counts the MoBA forward's past-block tiles (gather-index tiles of at most R entries of one
(chunk, block, kv head) bucket) for the single pass and for chunks of C query tokens, with
each token picking its K-1 past blocks uniformly among the earlier ones (as random inputs
do), and prints the ratio: the past kernel's time follows the tile count
(docs/kernel_notes.md, "v14-v16 on the H200": measured 2.11x at 128K with C 4096, 1.43x with
C 8192; this model gives 2.12x and 1.37x). Also the same work with 64-row tiles.
    scripts/past-tiles-model.py [T ...]     (default 32768 131072; S 512, K 3, 16 heads)
Needs numpy (the .venv of scripts/setup.sh)."""
import sys

import numpy as np


def bucket_counts(T, S, kp, C, rng):
    """Entries per (chunk, block) of one head: (T // C, T // S), C = T for the single pass."""
    nb = T // S
    counts = np.zeros((T // C, nb), np.int64)
    for t0 in range(S, T, S):
        c = t0 // S
        k = min(kp, c)
        picks = np.array([rng.choice(c, k, replace=False) for _ in range(S)]).ravel()
        counts[t0 // C] += np.bincount(picks, minlength=nb)
    return counts


def main():
    Ts = [int(a) for a in sys.argv[1:]] or [32768, 131072]
    S, kp, heads = 512, 2, 16
    print("| T | C | 128-row tiles, chunked / single pass | mean fill of a tile (single / chunked) "
          "| 64-row tiles' work, chunked / single pass's 128-row tiles |")
    print("|---|---|---|---|---|")
    for T in Ts:
        single = bucket_counts(T, S, kp, T, np.random.default_rng(0))
        n = single.sum()
        ts = np.ceil(single / 128).sum()
        for C in (4096, 8192, 16384):
            if C >= T:
                continue
            ch = bucket_counts(T, S, kp, C, np.random.default_rng(0))
            tc = np.ceil(ch / 128).sum()
            t64 = np.ceil(ch / 64).sum()
            print(f"| {T} | {C} | {tc / ts:.2f} | {n / (128 * ts):.2f} / {n / (128 * tc):.2f} "
                  f"| {t64 / (2 * ts):.2f} |")
    print(f"(one head; every head alike, {heads} at the bench's shape)")


if __name__ == "__main__":
    main()
