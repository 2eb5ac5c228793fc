#!/usr/bin/env python3
"""Train a small HF LlamaForCausalLM with MoBA attention on `moba prepare` shards, on one GPU.

The path a PyTorch user takes: transformers' own model, our kernels as its attention.

    moba prepare CORPUS -o data/books-byte --strip-gutenberg --tokenizer byte
    python examples/train_hf_llama.py data/books-byte --steps 300 --out runs/hf-moba

Rows are packed without padding (documents cut at random starts, position_ids restarting at
each document start); moba.hf's attention turns the position_ids into cu_seqlens, so no
query attends across a document boundary, as in `moba train`. Parameters stay in float32
(AdamW on them); the forward and backward run under bf16 autocast. Prints step, loss,
tokens/s; validates on the val split at the start and the end; writes metrics.jsonl and the
model (save_pretrained) to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a folder written by `moba prepare`")
    ap.add_argument("--out", default="runs/hf-moba")
    ap.add_argument("--attention", default="moba", choices=["moba", "sdpa", "eager"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512, help="MoBA block size S")
    ap.add_argument("--topk", type=int, default=3, help="MoBA top-k K (current block included)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("this example trains on a CUDA GPU (moba's ops run the CPU reference elsewhere, "
                 "far too slow to train)")

    from transformers import LlamaConfig, LlamaForCausalLM

    import moba
    import moba.hf
    from moba.data import Shards

    torch.manual_seed(a.seed)
    ds = Shards(a.data)
    width = a.heads * a.head_dim
    cfg = LlamaConfig(vocab_size=ds.vocab_size, hidden_size=width,
                      intermediate_size=int(math.ceil(8 * width / 3 / 64)) * 64,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
                      max_position_embeddings=a.seq_len, rope_theta=10000.0,
                      tie_word_embeddings=False)
    if a.attention == "moba":
        moba.hf.register(moba_chunk_size=a.chunk, moba_topk=a.topk)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation=a.attention).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(1, a.steps)))))

    def loss_of(tokens, pos):
        tokens, pos = tokens.cuda(non_blocking=True), pos.cuda(non_blocking=True)
        # One packed row of documents per batch element: flatten to (1, B*T) so that
        # position_ids carry every boundary (transformers' padding-free convention).
        x, y, p = tokens[:, :-1].reshape(1, -1), tokens[:, 1:].reshape(1, -1), pos[:, :-1].reshape(1, -1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, position_ids=p).logits
        return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    @torch.no_grad()
    def validate():
        model.eval()
        losses = [loss_of(t, p).item() for t, p in
                  ds.packed_batches("val", a.seq_len, a.batch, seed=12345, steps=a.val_batches)]
        model.train()
        return sum(losses) / len(losses)

    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "metrics.jsonl"), "w")
    print(f"model: LlamaForCausalLM, {n_params / 1e6:.2f}M parameters, {a.layers} layers, width "
          f"{width}, attention {a.attention}" + (f" (S {a.chunk}, K {a.topk})" if a.attention == "moba" else "")
          + f"; rows {a.batch} x {a.seq_len} tokens from {a.data}", flush=True)
    v0 = validate()
    print(f"val  step 0 | loss {v0:.4f}", flush=True)
    log.write(json.dumps({"kind": "val", "step": 0, "loss": v0}) + "\n")
    tokens_per_step = a.batch * a.seq_len
    t_start = time.time()
    t_win, win = time.time(), 0
    for step, (tok, pos) in enumerate(ds.packed_batches("train", a.seq_len, a.batch, seed=a.seed,
                                                        steps=a.steps), start=1):
        loss = loss_of(tok, pos)
        if not torch.isfinite(loss):
            sys.exit(f"step {step}: the loss is {loss.item()}; stopped")
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        win += 1
        if step % 25 == 0 or step == 1 or step == a.steps:
            torch.cuda.synchronize()
            dt = time.time() - t_win
            rate = win * tokens_per_step / dt
            eta = (time.time() - t_start) / step * (a.steps - step)
            print(f"step {step:5d}/{a.steps} | loss {loss.item():.4f} | gnorm {gnorm.item():.3f} | "
                  f"lr {sched.get_last_lr()[0]:.2e} | {rate / 1e3:.1f}k tok/s | ETA {eta:.0f}s", flush=True)
            log.write(json.dumps({"kind": "train", "step": step, "loss": loss.item(),
                                  "tokens_per_s": rate}) + "\n")
            t_win, win = time.time(), 0
    v1 = validate()
    print(f"val  step {a.steps} | loss {v1:.4f} (from {v0:.4f})", flush=True)
    log.write(json.dumps({"kind": "val", "step": a.steps, "loss": v1}) + "\n")
    log.close()
    model.save_pretrained(os.path.join(a.out, "model"))
    print(f"finished: {a.steps} steps in {time.time() - t_start:.0f}s; model in {a.out}/model")


if __name__ == "__main__":
    main()
