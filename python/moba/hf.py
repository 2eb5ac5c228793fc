"""MoBA as a Hugging Face transformers attention implementation.

    import moba.hf
    moba.hf.register(moba_chunk_size=512, moba_topk=3)
    model = LlamaForCausalLM.from_pretrained(path, attn_implementation="moba")
    # or: LlamaForCausalLM(LlamaConfig(..., attn_implementation="moba"))
    # or: model.set_attn_implementation("moba")

`register` adds an attention function named "moba" to transformers' public
`AttentionInterface` (and a matching mask function to `AttentionMaskInterface`). The
function takes what every transformers attention takes,
`(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs)` with
query (B, Hq, T, D) and key/value (B, Hkv, T, D), and returns ((B, T, Hq, D), None).

What runs where (docs/hf.md):
- Training and prefill (query length = key length, no padding): our varlen ops on the
  flattened (B*T, H, D) tokens, K/V never repeated (GQA native): `moba.moba_attn_varlen`
  for the layers that use MoBA, `moba.flash_attn_varlen` (dense causal) for the others.
  Sequence boundaries come from `cu_seq_lens_q` (with `max_length_q`) when the caller
  passes them, as to transformers' flash-attention path; else from `position_ids`: a new
  sequence starts at every row start and wherever position_ids does not increase by 1
  (padding-free packed batches, positions restarting at 0 for each document; the rule
  transformers' masks use for packed sequences); else every row is one sequence.
- Decode (query shorter than the keys, e.g. one token against a KV cache) and padded
  batches (an attention_mask with zeros): dense attention, transformers' own "sdpa"
  function with transformers' mask. MoBA's sparsity is not used there.
- torch.compile: boundaries from position_ids are data-dependent (a graph break); with
  cu_seq_lens_q/k and max_length_q/k ints, fullgraph=True compiles the whole forward.
- Refused with ValueError: dropout > 0 while training, sliding windows, logit soft-capping,
  attention sinks, non-causal attention.

Which layers use MoBA: `config.moba["moba_layers"]` (written by `moba export-hf`) when the
config has it, else every layer. Block size and top-k: the arguments of `register`, or,
when they are None, `config.moba["block_size"]` and `config.moba["top_k"]`.
"""

from __future__ import annotations

import functools
import weakref

import torch

import moba as _moba

__all__ = ["register", "moba_attention_forward", "cu_seqlens_from_position_ids"]

_settings: dict = {"moba_chunk_size": None, "moba_topk": None}
_cu_cache: dict = {"ref": None, "version": -1, "shape": None, "value": None}


def _positive_int(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"moba.hf.register: {name} must be an integer >= 1 or None, got {value!r}")
    return value


def register(moba_chunk_size: int | None = None, moba_topk: int | None = None,
             name: str = "moba") -> str:
    """Registers the attention implementation `name` ("moba") with transformers.

    moba_chunk_size (S) and moba_topk (K, the current block included) apply to every model
    that runs it; None takes them from each model's `config.moba` (block_size, top_k).
    Returns the name, for `attn_implementation=`.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    chunk = _positive_int("moba_chunk_size", moba_chunk_size)
    topk = _positive_int("moba_topk", moba_topk)
    fn = functools.partial(moba_attention_forward, moba_chunk_size=chunk, moba_topk=topk)
    functools.update_wrapper(fn, moba_attention_forward)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, _moba_mask)
    _settings.update(moba_chunk_size=chunk, moba_topk=topk)
    return name


def _moba_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
               attention_mask=None, **kwargs):
    """transformers' mask for "moba": None where the varlen ops run (no padding, query
    length = key length: causality and packing are the ops' business, from position_ids),
    else transformers' sdpa mask, for the dense fallback."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    padded = attention_mask is not None and not (
        attention_mask.shape[-1] == kv_length and bool(attention_mask.all()))
    if not padded and q_length == kv_length:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                     q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function or causal_mask_function,
                     attention_mask=attention_mask, **kwargs)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor | None, batch: int, seqlen: int,
                                 device) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32 (S+1), max_seqlen) of the flattened (batch*seqlen) tokens: a sequence
    starts at every row start and wherever position_ids does not increase by 1."""
    if position_ids is None:
        cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
        return cu, seqlen
    pos = position_ids.to(device)
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    if pos.shape[-1] != seqlen or pos.shape[0] not in (1, batch):
        raise ValueError(f"moba attention: position_ids has shape {tuple(position_ids.shape)}, "
                         f"expected ({batch}, {seqlen}) or (1, {seqlen})")
    pos = pos.expand(batch, seqlen)
    starts = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    idx = starts.reshape(-1).nonzero().reshape(-1).to(torch.int32)
    end = torch.tensor([batch * seqlen], dtype=torch.int32, device=device)
    cu = torch.cat([idx, end])
    return cu, int((cu[1:] - cu[:-1]).max())


def _cached_cu_seqlens(position_ids, batch, seqlen, device):
    # Every layer of one forward gets the same position_ids tensor: compute its boundaries
    # once (one device sync) unless it changed (a new tensor, or written in place).
    if position_ids is None or torch.compiler.is_compiling():
        return cu_seqlens_from_position_ids(position_ids, batch, seqlen, device)
    c = _cu_cache
    key_shape = (tuple(position_ids.shape), batch, seqlen, str(device))
    if (c["ref"] is not None and c["ref"]() is position_ids
            and c["version"] == position_ids._version and c["shape"] == key_shape):
        return c["value"]
    value = cu_seqlens_from_position_ids(position_ids, batch, seqlen, device)
    c.update(ref=weakref.ref(position_ids), version=position_ids._version, shape=key_shape,
             value=value)
    return value


def _layer_settings(module, moba_chunk_size, moba_topk):
    """(uses MoBA, S, K) of this attention module."""
    config = getattr(module, "config", None)
    cm = getattr(config, "moba", None)
    cm = cm if isinstance(cm, dict) else {}
    layers = cm.get("moba_layers")
    layer = getattr(module, "layer_idx", None)
    use_moba = layers is None or layer in layers
    chunk = moba_chunk_size if moba_chunk_size is not None else cm.get("block_size")
    topk = moba_topk if moba_topk is not None else cm.get("top_k")
    if use_moba and (chunk is None or topk is None):
        raise ValueError("moba attention: no block size / top-k: pass them to "
                         "moba.hf.register(moba_chunk_size, moba_topk) or set config.moba = "
                         "{'block_size': S, 'top_k': K}")
    return use_moba, chunk, topk


def _dense_fallback(module, query, key, value, attention_mask, scaling, dropout, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    tq, tk = query.shape[2], key.shape[2]
    if attention_mask is None and 1 < tq < tk:
        # Queries are the last tq positions of the keys (chunked prefill): causal from the
        # bottom right, which sdpa's is_causal (top left) would get wrong.
        attention_mask = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril(tk - tq)
        attention_mask = attention_mask[None, None]
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def moba_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           *, moba_chunk_size=None, moba_topk=None, **kwargs):
    """transformers attention: query (B, Hq, T, D), key/value (B, Hkv, Tk, D) ->
    ((B, T, Hq, D), None). See the module docstring for what runs where."""
    for arg in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(arg) is not None:
            raise ValueError(f"moba attention: {arg} is not supported (got {kwargs[arg]!r})")
    is_causal = kwargs.pop("is_causal", None)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if not is_causal:
        raise ValueError("moba attention: non-causal attention is not supported")
    if dropout and getattr(module, "training", False):
        raise ValueError(f"moba attention: attention dropout {dropout} while training is not "
                         "supported (set config.attention_dropout = 0)")
    b, hq, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    if attention_mask is not None or tq != tk:
        return _dense_fallback(module, query, key, value, attention_mask, scaling, dropout, kwargs)

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    compiling = torch.compiler.is_compiling()
    if cu_q is not None:
        if cu_k is not None and cu_k is not cu_q and not compiling and not torch.equal(cu_q, cu_k):
            raise ValueError("moba attention: cu_seq_lens_q and cu_seq_lens_k differ "
                             "(cross-attention is not supported)")
        cu = cu_q.to(device=query.device, dtype=torch.int32)
        # (no data-dependent check while compiling: with max_length_q an int, the graph
        # stays whole under torch.compile(fullgraph=True))
        if not compiling and int(cu[-1]) != b * tq:
            raise ValueError(f"moba attention: cu_seq_lens_q ends at {int(cu[-1])}, the batch "
                             f"holds {b * tq} tokens")
        max_len = kwargs.get("max_length_q")
        max_len = int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max())
    else:
        cu, max_len = _cached_cu_seqlens(kwargs.get("position_ids"), b, tq, query.device)

    use_moba, chunk, topk = _layer_settings(module, moba_chunk_size, moba_topk)
    q = query.transpose(1, 2).reshape(b * tq, hq, d)
    k = key.transpose(1, 2).reshape(b * tk, hkv, d)
    v = value.transpose(1, 2).reshape(b * tk, hkv, value.shape[-1])
    if q.is_cuda and q.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        dt = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if use_moba:
        out = _moba.moba_attn_varlen(q, k, v, cu, max_len, chunk, topk, softmax_scale=scaling)
    else:
        out = _moba.flash_attn_varlen(q, k, v, cu, max_len, causal=True, softmax_scale=scaling)
    return out.reshape(b, tq, hq, out.shape[-1]), None
