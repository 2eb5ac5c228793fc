"""Checkpoints both ways: `moba export-hf` read by transformers with no code of ours gives
`moba logits`'s logits (CPU float32, 1e-4 relative), its tokenizer gives our ids;
`moba import-hf` then `moba export-hf` gives the same tensors; import-hf refuses what our
model does not have; `moba train --resume` continues an imported run. Needs the CLI
(MOBA_BIN, default build/src/cli/moba)."""

from __future__ import annotations

import json
import pathlib
import random
import shutil
import sys

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # hf_support, any import mode
import hf_support  # noqa: E402
from hf_support import run_moba, tiny_llama_config  # noqa: E402

WORDS = ("the cat sat on a mat while dogs ran far away from home under blue skies and "
         "green trees 42 7 3.14 naïve café über 日本").split()

RUNS = {
    # byte-level data, tied embeddings, every layer MoBA, head_dim 16 (not width / heads)
    "byte": dict(vocab=256, tied="true", extra="", model="head_dim = 16\n"),
    # BPE data, untied LM head, a hybrid (last layer full)
    "bpe": dict(vocab=300, tied="false", extra="full_attention_last_layers = 1\n", model=""),
}


def run_config(kind, data):
    r = RUNS[kind]
    return f"""name = "hf-{kind}"
data = "{data}"
[model]
vocab_size = {r['vocab']}
width = 32
layers = 2
heads = 4
kv_heads = 2
{r['model']}mlp_multiple_of = 16
seq_len = 64
tied_embeddings = {r['tied']}
rope_theta = 500.0
[attention]
kind = "moba"
block_size = 8
top_k = 2
{r['extra']}[train]
batch_size = 4
steps = 10
lr = 3e-3
[eval]
windows = 2
batch_size = 2
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    hf_support.moba_bin()
    d = tmp_path_factory.mktemp("hf_ckpt")
    text = d / "text"
    text.mkdir()
    rng = random.Random(0)
    for i in range(12):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(60)]
        (text / f"doc{i}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for kind, extra in (("byte", []), ("bpe", ["--vocab-size", "300"])):
        run_moba("prepare", text, "-o", d / f"data_{kind}", "--tokenizer", kind,
                 "--val-fraction", "0.2", "--no-progress", *extra)
        (d / f"{kind}.toml").write_text(run_config(kind, d / f"data_{kind}"))
        run_moba("train", "--config", d / f"{kind}.toml", "--out", d / f"run_{kind}")
        out = run_moba("export-hf", d / f"run_{kind}", d / f"hf_{kind}")
        assert f"tokenizer: {kind}" in out.stdout
    return d


def moba_logits(work, kind, seqs, attention):
    toks = work / "tokens.txt"
    toks.write_text("".join(" ".join(map(str, s.tolist())) + "\n" for s in seqs))
    out = work / f"logits_{kind}_{attention}.safetensors"
    run_moba("logits", "--run", work / f"run_{kind}", "--tokens", toks, "--out", out,
             "--attention", attention)
    lg = load_file(out)
    return [lg[f"logits.{i}"] for i in range(len(seqs))]


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_export_gives_mobas_logits(work, kind):
    vocab = RUNS[kind]["vocab"]
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, vocab, (n,), generator=g) for n in (64, 23, 1)]
    ours = moba_logits(work, kind, seqs, "full")
    model = LlamaForCausalLM.from_pretrained(work / f"hf_{kind}").eval()
    assert model.config.tie_word_embeddings == (RUNS[kind]["tied"] == "true")
    for s, ref in zip(seqs, ours):
        with torch.no_grad():
            out = model(s[None]).logits[0]
        assert rel_diff(out, ref) < 1e-4


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_export_with_moba_attention_gives_mobas_moba_logits(work, kind):
    hf_support.ops()
    import moba.hf

    moba.hf.register()  # S, K and the MoBA layers from config.json's "moba" key
    vocab = RUNS[kind]["vocab"]
    seqs = [torch.randint(0, vocab, (64,), generator=torch.Generator().manual_seed(4))]
    ours = moba_logits(work, kind, seqs, "auto")[0]
    full = moba_logits(work, kind, seqs, "full")[0]
    assert rel_diff(ours, full) > 1e-3  # MoBA left blocks out
    model = LlamaForCausalLM.from_pretrained(work / f"hf_{kind}", attn_implementation="moba")
    cfg = model.config.moba
    assert (cfg["block_size"], cfg["top_k"]) == (8, 2)
    assert cfg["moba_layers"] == ([0, 1] if kind == "byte" else [0])
    with torch.no_grad():
        out = model.eval()(seqs[0][None]).logits[0]
    assert rel_diff(out, ours) < 1e-4


def sentencepiece_ids(model_file, text):
    """Our BPE encoding: SentencePiece line by line, each newline the byte piece <0x0A>."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    ids, lines = [], text.split("\n")
    for i, line in enumerate(lines):
        if line:
            ids += sp.encode(line)
        if i + 1 < len(lines):
            ids.append(sp.piece_to_id("<0x0A>"))
    return ids


def sample_texts(work):
    texts = [p.read_text(encoding="utf-8") for p in sorted((work / "text").glob("*.txt"))]
    rng = random.Random(1)
    alphabet = list("the cat sat  on mat\t日本語 émoji😀 0123456789<unk>\r\n ▁")
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
              for _ in range(200)]
    return texts


def test_byte_tokenizer_gives_byte_values(work):
    tok = AutoTokenizer.from_pretrained(work / "hf_byte")
    for text in sample_texts(work):
        ids = tok(text).input_ids
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_bpe_tokenizer_gives_sentencepiece_ids(work):
    tok = AutoTokenizer.from_pretrained(work / "hf_bpe")
    model_file = work / "data_bpe" / "tokenizer.model"
    for text in sample_texts(work):
        ids = tok(text).input_ids
        assert ids == sentencepiece_ids(model_file, text), repr(text[:60])
        if "<unk>" not in text and "\u2581" not in text:  # SentencePiece's space symbol
            assert tok.decode(ids) == text


def save_random_llama(path, dtype=torch.float32, shard=None, **config):
    torch.manual_seed(5)
    model = LlamaForCausalLM(tiny_llama_config(**config)).to(dtype)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def load_all(folder):
    """Every tensor of an HF folder, single file or shards."""
    tensors = {}
    for f in sorted(pathlib.Path(folder).glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


@pytest.mark.parametrize("tied,dtype,shard", [(False, torch.float32, None),
                                              (True, torch.float32, None),
                                              (False, torch.bfloat16, None),
                                              (True, torch.float32, "40KB")])
def test_import_then_export_gives_identical_tensors(tmp_path, tied, dtype, shard):
    src = save_random_llama(tmp_path / "src", dtype, shard, tie_word_embeddings=tied)
    assert (src / "model.safetensors.index.json").exists() == bool(shard)
    run_moba("import-hf", src, "--out", tmp_path / "run", "--steps", "5")
    run_moba("export-hf", tmp_path / "run", tmp_path / "back")
    a, b = load_all(src), load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        assert b[name].dtype == torch.float32
        assert torch.equal(a[name].float(), b[name]), name
    ca = json.loads((src / "config.json").read_text())
    cb = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "num_hidden_layers", "rms_norm_eps", "vocab_size",
                "tie_word_embeddings", "rope_parameters"):
        assert ca[key] == cb[key], key


def test_import_keeps_the_tokenizer_for_export(work, tmp_path):
    run_moba("import-hf", work / "hf_bpe", "--out", tmp_path / "run", "--steps", "1",
             "--data", work / "data_bpe")
    out = run_moba("export-hf", tmp_path / "run", tmp_path / "back")
    assert "tokenizer: copied" in out.stdout
    for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        assert (tmp_path / "back" / f).read_bytes() == (work / "hf_bpe" / f).read_bytes(), f
    a, b = load_file(work / "hf_bpe" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a) and set(a) == set(b)


def test_import_then_train_continues_with_moba(work, tmp_path):
    src = save_random_llama(tmp_path / "src", vocab_size=256, max_position_embeddings=64)
    run = tmp_path / "run"
    out = run_moba("import-hf", src, "--out", run, "--data", work / "data_byte", "--attention",
                   "moba", "--block-size", "8", "--top-k", "2", "--steps", "3", "--seq-len", "32",
                   "--batch-size", "2")
    assert "moba train --out" in out.stdout
    cfg = (run / "config.toml").read_text()
    assert 'kind = "moba"' in cfg and "block_size = 8" in cfg and "top_k = 2" in cfg
    trained = run_moba("train", "--out", run, "--resume")
    # Progress (the run's summary) on stderr, the closing line on stdout.
    assert "resumed after step 0" in trained.stderr and "finished: 3 steps" in trained.stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2, 3]
    # the weights moved from the imported ones
    run_moba("export-hf", run, tmp_path / "back")
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"],
                           b["model.layers.0.self_attn.q_proj.weight"])


def edit(src, dst, config=None, tensors=None):
    """A copy of the HF folder src with config.json keys and tensors changed."""
    shutil.copytree(src, dst)
    if config:
        c = json.loads((dst / "config.json").read_text())
        c.update(config)
        (dst / "config.json").write_text(json.dumps(c))
    if tensors:
        t = load_file(dst / "model.safetensors")
        t = tensors(t)
        save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def refusals():
    def with_bias(t):
        t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
        return t

    def drop(name):
        def f(t):
            del t[name]
            return t
        return f

    def as_f64(t):
        t["model.norm.weight"] = t["model.norm.weight"].double()
        return t

    def head_differs(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1.0
        return t

    return {
        "bias": ({"attention_bias": True}, with_bias, "attention_bias"),
        "extra tensor": (None, with_bias, "self_attn.q_proj.bias"),
        "mlp bias": ({"mlp_bias": True}, None, "mlp_bias"),
        "rope scaling": ({"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                              "rope_theta": 10000.0}}, None, "linear"),
        "rope scaling 4.x": ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, None, "dynamic"),
        "act": ({"hidden_act": "gelu"}, None, "hidden_act 'gelu'"),
        "arch": ({"architectures": ["MistralForCausalLM"]}, None, "MistralForCausalLM"),
        "sliding": ({"sliding_window": 16}, None, "sliding_window"),
        "tied mismatch": ({"tie_word_embeddings": True}, head_differs, "lm_head.weight differs"),
        "untied, no head": (None, drop("lm_head.weight"), "no lm_head.weight"),
        "missing": (None, drop("model.layers.1.mlp.up_proj.weight"), "layers.1.mlp.up_proj"),
        "head_dim": ({"head_dim": 8}, None, "q_proj.weight has shape"),
        "odd head_dim": ({"head_dim": 15}, None, "head_dim 15"),
        "dtype": (None, as_f64, "F64"),
    }


@pytest.mark.parametrize("case", list(refusals()))
def test_import_refuses_what_our_model_lacks(tmp_path, case):
    config, tensors, message = refusals()[case]
    src = save_random_llama(tmp_path / "src")
    bad = edit(src, tmp_path / "bad", config, tensors)
    p = run_moba("import-hf", bad, "--out", tmp_path / "run", "--steps", "5", check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "moba: error:" in p.stderr and message in p.stderr, p.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_import_refuses_pytorch_bin_and_a_used_out_dir(tmp_path):
    src = save_random_llama(tmp_path / "src")
    binonly = tmp_path / "bin"
    binonly.mkdir()
    shutil.copy(src / "config.json", binonly)
    (binonly / "pytorch_model.bin").write_bytes(b"x")
    p = run_moba("import-hf", binonly, "--out", tmp_path / "r1", "--steps", "1", check=False)
    assert p.returncode == 2 and "safetensors" in p.stderr
    p = run_moba("import-hf", src, "--out", tmp_path / "r2", check=False)
    assert p.returncode == 2 and "--steps" in p.stderr
    run_moba("import-hf", src, "--out", tmp_path / "r3", "--steps", "1")
    p = run_moba("import-hf", src, "--out", tmp_path / "r3", "--steps", "1", check=False)
    assert p.returncode == 2 and "not empty" in p.stderr


def test_export_refuses_what_it_cannot_write(work, tmp_path):
    p = run_moba("export-hf", tmp_path / "nothing", tmp_path / "out", check=False)
    assert p.returncode == 2 and "not a run folder" in p.stderr
    p = run_moba("export-hf", work / "run_byte", work / "hf_byte", check=False)
    assert p.returncode == 2 and "not empty" in p.stderr
