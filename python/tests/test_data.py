"""moba.data reads what `moba prepare` writes: the same documents, packed rows whose
position_ids restart at document starts, and named errors for broken folders."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

from moba.data import DataError, Shards

REPO = pathlib.Path(__file__).resolve().parents[2]
MOBA_BIN = os.environ.get("MOBA_BIN", str(REPO / "build" / "src" / "cli" / "moba"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not os.access(MOBA_BIN, os.X_OK):
        pytest.skip(f"the moba CLI is not built ({MOBA_BIN}; set MOBA_BIN)")
    root = tmp_path_factory.mktemp("data")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    texts = {}
    for i in range(12):
        words = rng.choice(["alpha", "beta", "gamma", "delta", "moba", "block"], size=50 + 40 * i)
        texts[f"doc{i:02d}.txt"] = " ".join(words) + "\n"
        (corpus / f"doc{i:02d}.txt").write_text(texts[f"doc{i:02d}.txt"])
    out = root / "byte"
    subprocess.run([MOBA_BIN, "prepare", str(corpus), "-o", str(out), "--tokenizer", "byte",
                    "--no-progress"], check=True, capture_output=True)
    return out, texts


def test_documents_are_the_texts(prepared):
    out, texts = prepared
    ds = Shards(out, verify_checksums=True)
    assert ds.vocab_size == 256
    docs = ds.documents("train")
    try:
        docs += ds.documents("val")
    except DataError:  # a split may be empty with a dozen documents
        pass
    got = sorted(bytes(np.asarray(d, dtype=np.uint8)).decode() for d in docs)
    assert got == sorted(texts.values())


def test_packed_rows_restart_positions_at_documents(prepared):
    out, _ = prepared
    ds = Shards(out)
    docs = ds.documents("train")
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    starts = set(np.cumsum([0] + [len(d) for d in docs[:-1]]).tolist())
    batches = list(ds.packed_batches("train", seq_len=64, batch=3, seed=1, steps=4))
    assert len(batches) == 4
    for tok, pos in batches:
        assert tok.shape == pos.shape == (3, 65)
        for row_t, row_p in zip(tok.numpy(), pos.numpy()):
            # Locate the row in the stream: its positions say where documents begin.
            cands = [s for s in range(len(stream) - 64) if np.array_equal(stream[s:s + 65], row_t)]
            assert cands, "a row is a window of the training stream"
            s = cands[0]
            expect, p = [], 0
            for j in range(65):
                if j > 0 and (s + j) in starts:
                    p = 0
                expect.append(p)
                p += 1
            assert row_p.tolist() == expect
    # The same seed gives the same rows.
    again = list(ds.packed_batches("train", seq_len=64, batch=3, seed=1, steps=4))
    assert all((a[0] == b[0]).all() for a, b in zip(batches, again))


def test_broken_folders_are_named(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(DataError, match="no manifest.json"):
        Shards(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    m = json.loads((bad / "manifest.json").read_text())
    shard = bad / os.path.basename(m["shards"][0]["bin"])
    data = bytearray(shard.read_bytes())
    data[70] ^= 0xFF  # a token byte
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch"):
        Shards(bad, verify_checksums=True)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="truncated or extended"):
        Shards(bad)
    with pytest.raises(ValueError, match="split must be"):
        Shards(out).documents("test")
