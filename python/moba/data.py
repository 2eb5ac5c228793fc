"""Token shards written by `moba prepare` (docs/data.md, "Format"), read from Python.

    ds = moba.data.Shards("data/books-byte")           # checks manifest, headers, checksums lazily
    docs = ds.documents("train")                        # list of 1-d numpy views (uint16/uint32)
    for tokens, position_ids in ds.packed_batches("train", seq_len=4096, batch=4, seed=0):
        ...                                             # (batch, seq_len) int64 tensors

Packed batches are padding-free: each row concatenates whole documents or pieces of them,
and position_ids restart at 0 where a document starts, which is how transformers' flash
path (and moba.hf) finds the document boundaries.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Iterator

import numpy as np

_HEADER = 64
_SHARD_MAGIC = b"MOBATOKS"
_INDEX_MAGIC = b"MOBAIDX1"


class DataError(ValueError):
    """A prepared folder that is missing, incomplete or corrupt; the message names the file."""


def _fnv1a64(data: bytes, h: int = 0xCBF29CE484222325) -> int:
    # Only used for the small headers; shard bodies are checked in numpy (see _checksum).
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _checksum(body: np.ndarray, header: bytes) -> int:
    # FNV-1a 64 over the body bytes, continued over header bytes [0, 32): sequential by
    # definition, so it is computed in chunks with Python ints over a uint8 view.
    h = 0xCBF29CE484222325
    mv = memoryview(np.ascontiguousarray(body).view(np.uint8))
    step = 1 << 20
    for i in range(0, len(mv), step):
        h = _fnv1a64(mv[i:i + step].tobytes(), h)
    return _fnv1a64(header[:32], h)


@dataclass
class _Shard:
    split: str
    tokens: np.ndarray   # (num_tokens,) uint16 or uint32, memory-mapped
    offsets: np.ndarray  # (num_docs + 1,) uint64


class Shards:
    """A folder written by `moba prepare`. Raises DataError naming the file on any problem."""

    def __init__(self, folder: str | os.PathLike, verify_checksums: bool = False):
        self.folder = os.fspath(folder)
        path = os.path.join(self.folder, "manifest.json")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no manifest.json (not a folder written by `moba prepare`, "
                            "or an interrupted one)")
        try:
            with open(path, encoding="utf-8") as f:
                self.manifest = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: {e}") from None
        if self.manifest.get("format") != "moba-data":
            raise DataError(f"{path}: format is {self.manifest.get('format')!r}, not 'moba-data'")
        self.vocab_size = int(self.manifest["vocab_size"])
        self.tokenizer = self.manifest.get("tokenizer", {})
        self._shards = [self._open(s, verify_checksums) for s in self.manifest["shards"]]

    def _open(self, entry: dict, verify: bool) -> _Shard:
        bin_path = os.path.join(self.folder, os.path.basename(entry["bin"]))
        idx_path = os.path.join(self.folder, os.path.basename(entry["index"]))
        for p in (bin_path, idx_path):
            if not os.path.isfile(p):
                raise DataError(f"{p}: missing (named in manifest.json)")
        with open(bin_path, "rb") as f:
            head = f.read(_HEADER)
        if len(head) < _HEADER or head[:8] != _SHARD_MAGIC:
            raise DataError(f"{bin_path}: not a moba token shard (bad magic)")
        version, width, vocab, _, n_tok, checksum = struct.unpack_from("<IIIIQQ", head, 8)
        if width not in (2, 4):
            raise DataError(f"{bin_path}: dtype of {width} bytes per id (2 or 4 expected)")
        if vocab != self.vocab_size or n_tok != int(entry["tokens"]):
            raise DataError(f"{bin_path}: header says vocabulary {vocab}, {n_tok} tokens; "
                            f"manifest.json says {self.vocab_size}, {entry['tokens']}")
        if os.path.getsize(bin_path) != _HEADER + n_tok * width:
            raise DataError(f"{bin_path}: {os.path.getsize(bin_path)} bytes, the header implies "
                            f"{_HEADER + n_tok * width} (truncated or extended)")
        dtype = np.uint16 if width == 2 else np.uint32
        tokens = np.memmap(bin_path, dtype=dtype, mode="r", offset=_HEADER, shape=(n_tok,))
        with open(idx_path, "rb") as f:
            ihead = f.read(_HEADER)
            if len(ihead) < _HEADER or ihead[:8] != _INDEX_MAGIC:
                raise DataError(f"{idx_path}: not a moba document index (bad magic)")
            n_docs, n_tok_idx, _ = struct.unpack_from("<QQQ", ihead, 16)
            offsets = np.frombuffer(f.read(), dtype="<u8")
        if n_tok_idx != n_tok or len(offsets) != n_docs + 1 or offsets[0] != 0 or \
                offsets[-1] != n_tok or np.any(np.diff(offsets.astype(np.int64)) <= 0):
            raise DataError(f"{idx_path}: document offsets do not describe {bin_path}")
        if verify and _checksum(np.asarray(tokens), head) != checksum:
            raise DataError(f"{bin_path}: checksum mismatch (corrupt shard)")
        return _Shard(entry["split"], tokens, offsets)

    def documents(self, split: str = "train") -> list[np.ndarray]:
        """Every document of the split, in shard order, as 1-d views of the shards."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        out = []
        for s in self._shards:
            if s.split == split:
                o = s.offsets
                out.extend(s.tokens[o[i]:o[i + 1]] for i in range(len(o) - 1))
        if not out:
            raise DataError(f"{self.folder}: no documents in split {split!r}")
        return out

    def packed_batches(self, split: str, seq_len: int, batch: int, seed: int = 0,
                       steps: int | None = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """(tokens, position_ids), each (batch, seq_len + 1) int64: rows of seq_len + 1 tokens
        cut at uniform random starts of the split's documents concatenated (the next token of
        position t is at t + 1); position_ids restart at 0 at every document start."""
        import torch

        if seq_len < 1 or batch < 1:
            raise ValueError(f"seq_len and batch must be >= 1, got {seq_len} and {batch}")
        docs = self.documents(split)
        stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
        starts = np.zeros(len(stream), dtype=bool)
        starts[np.cumsum([0] + [len(d) for d in docs[:-1]])] = True
        if len(stream) < seq_len + 1:
            raise DataError(f"{self.folder}: split {split!r} holds {len(stream)} tokens, fewer "
                            f"than one row of {seq_len + 1}")
        rng = np.random.default_rng(seed)
        step = 0
        while steps is None or step < steps:
            rows = rng.integers(0, len(stream) - seq_len, size=batch)
            tok = np.stack([stream[r:r + seq_len + 1] for r in rows])
            pos = np.empty_like(tok)
            for i, r in enumerate(rows):
                s = starts[r:r + seq_len + 1].copy()
                s[0] = True  # a row starts a (piece of a) document
                seg = np.cumsum(s) - 1
                first = np.flatnonzero(s)
                pos[i] = np.arange(seq_len + 1) - first[seg]
            yield torch.from_numpy(tok), torch.from_numpy(pos)
            step += 1
