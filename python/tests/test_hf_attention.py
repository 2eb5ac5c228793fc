"""moba.hf: the "moba" attention of transformers on a tiny random LlamaForCausalLM (CPU,
float32, no download), against transformers' eager attention and a plain PyTorch MoBA."""

from __future__ import annotations

import functools
import pathlib
import sys

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AttentionInterface, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # hf_support, any import mode
import hf_support  # noqa: E402
from hf_support import reference_attention_forward, tiny_llama_config  # noqa: E402

T = 64  # four blocks of 16


@pytest.fixture()
def hf():
    hf_support.ops()
    import moba.hf

    return moba.hf


def make_model(impl="eager", seed=0, **config):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation=impl, **config))
    return model.eval()


def tokens(b=2, t=T, seed=1, vocab=97):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def test_register_returns_the_name_and_checks_arguments(hf):
    assert hf.register(16, 4) == "moba"
    assert "moba" in AttentionInterface()
    with pytest.raises(ValueError, match="moba_chunk_size"):
        hf.register(0, 2)
    with pytest.raises(ValueError, match="moba_topk"):
        hf.register(16, 1.5)


def test_topk_covering_every_block_equals_eager(hf):
    hf.register(moba_chunk_size=16, moba_topk=4)
    model = make_model("eager")
    ids = tokens()
    ref = logits(model, ids)
    model.set_attn_implementation("moba")
    out = logits(model, ids)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_sparse_topk_differs_from_eager_and_matches_plain_moba(hf):
    hf.register(moba_chunk_size=16, moba_topk=2)
    AttentionInterface.register(
        "moba_plain", functools.partial(reference_attention_forward, chunk=16, topk=2))
    model = make_model("eager")
    ids = tokens()
    dense = logits(model, ids)
    model.set_attn_implementation("moba")
    out = logits(model, ids)
    model.set_attn_implementation("moba_plain")
    plain = logits(model, ids)
    assert (out - dense).abs().max() > 1e-3  # blocks were left out
    torch.testing.assert_close(out[:, :32], dense[:, :32], rtol=1e-5, atol=1e-5)  # K covers them
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)


def test_loss_backward_runs(hf):
    hf.register(16, 2)
    model = make_model("moba").train()
    ids = tokens()
    loss = model(ids, labels=ids).loss
    loss.backward()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        g = getattr(model.model.layers[0].self_attn, name).weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_backward_matches_eager_when_dense(hf):
    hf.register(16, 4)
    grads = {}
    for impl in ("eager", "moba"):
        model = make_model(impl).train()
        ids = tokens()
        model(ids, labels=ids).loss.backward()
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad
    torch.testing.assert_close(grads["moba"], grads["eager"], rtol=1e-4, atol=1e-6)


def test_packed_batch_by_position_ids_equals_separate_sequences(hf):
    hf.register(16, 2)
    model = make_model("moba")
    lengths = [40, 7, 17]
    docs = [tokens(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    packed = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    out = logits(model, packed, position_ids=pos)[0]
    # the same with the boundaries given as transformers' flash-attention kwargs
    cu = torch.tensor([0, 40, 47, 64], dtype=torch.int32)
    out_cu = logits(model, packed, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                    max_length_q=40, max_length_k=40)[0]
    start = 0
    for doc in docs:
        alone = logits(model, doc[None])[0]
        torch.testing.assert_close(out[start:start + len(doc)], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_cu[start:start + len(doc)], alone, rtol=1e-5, atol=1e-5)
        start += len(doc)


def test_cu_seqlens_from_position_ids(hf):
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [5, 6, 7, 8, 0, 1]])
    cu, max_len = hf.cu_seqlens_from_position_ids(pos, 2, 6, "cpu")
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 3, 5, 6, 10, 12] and max_len == 4
    cu, max_len = hf.cu_seqlens_from_position_ids(None, 3, 4, "cpu")
    assert cu.tolist() == [0, 4, 8, 12] and max_len == 4


def test_layers_from_config_moba(hf):
    """config.moba (as export-hf writes it): layer 0 MoBA, layer 1 full; S and K from it."""
    hf.register()  # S and K from config.moba
    moba_cfg = {"block_size": 16, "top_k": 2, "moba_layers": [0]}
    model = make_model("moba", moba=moba_cfg)
    ids = tokens()
    out = logits(model, ids)
    plain = functools.partial(reference_attention_forward, chunk=16, topk=2)
    # (a name without a mask function gets no mask: sdpa is causal on its own, eager is not)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def mixed(module, *args, **kw):
        return (plain if module.layer_idx == 0 else sdpa_attention_forward)(module, *args, **kw)

    AttentionInterface.register("moba_mixed", mixed)
    model.set_attn_implementation("moba_mixed")
    torch.testing.assert_close(out, logits(model, ids), rtol=1e-4, atol=1e-4)
    model.config.moba = {"block_size": 16, "top_k": 2, "moba_layers": []}  # all full
    model.set_attn_implementation("moba")
    dense = make_model("eager", moba=moba_cfg)
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), rtol=1e-5, atol=1e-5)


def test_decode_with_cache_falls_back_to_dense(hf):
    hf.register(16, 4)  # K covers every block: MoBA = dense, so decode can be checked
    model = make_model("moba")
    ids = tokens(1, 50)
    full = logits(make_model("eager"), ids)
    with torch.no_grad():
        pre = model(ids[:, :45], use_cache=True)       # prefill: the varlen op
        step = model(ids[:, 45:46], past_key_values=pre.past_key_values, use_cache=True)
        chunk = model(ids[:, 46:50], past_key_values=step.past_key_values, use_cache=True)
    torch.testing.assert_close(pre.logits, full[:, :45], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.logits, full[:, 45:46], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk.logits, full[:, 46:50], rtol=1e-5, atol=1e-5)


def test_generate_runs(hf):
    hf.register(16, 2)
    model = make_model("moba")
    out = model.generate(tokens(1, 40), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 45)


def test_padded_batch_falls_back_to_dense(hf):
    hf.register(16, 2)
    ids = tokens(2, 40)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :7] = 0  # left padding
    eager = logits(make_model("eager"), ids, attention_mask=mask)
    out = logits(make_model("moba"), ids, attention_mask=mask)
    torch.testing.assert_close(out[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, 7:], eager[1, 7:], rtol=1e-5, atol=1e-5)


def test_refusals(hf):
    hf.register(16, 2)
    model = make_model("moba", attention_dropout=0.1).train()
    ids = tokens()
    with pytest.raises(ValueError, match="dropout"):
        model(ids)
    model.eval()
    model(ids)  # dropout is off in eval
    attn = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 8, 16)
    kv = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="sliding_window"):
        hf.moba_attention_forward(attn, q, kv, kv, None, sliding_window=4)
    with pytest.raises(ValueError, match="non-causal"):
        hf.moba_attention_forward(attn, q, kv, kv, None, is_causal=False)
    hf.register()  # no S, K, and the config has no moba key
    with pytest.raises(ValueError, match="block size"):
        make_model("moba")(ids)


def test_compiles_whole_with_cu_seq_lens(hf):
    """torch.compile(fullgraph=True) of the model: no graph break when the boundaries come as
    cu_seq_lens_q/k with max_length_q/k ints (position_ids alone need a data-dependent step)."""
    hf.register(16, 2)
    torch._dynamo.reset()
    model = make_model("moba", num_hidden_layers=1)
    ids = tokens(1, T)
    cu = torch.tensor([0, 40, T], dtype=torch.int32)
    pos = torch.cat([torch.arange(40), torch.arange(T - 40)])[None]
    kw = dict(position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=40,
              max_length_k=40)
    ref = logits(model, ids, **kw)
    out = logits(torch.compile(model, fullgraph=True), ids, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
