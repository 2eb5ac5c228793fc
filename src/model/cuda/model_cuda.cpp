#include "model/cuda/model_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <span>

#include "attention/cuda/attention_cuda.h"
#include "attention/stats.h"
#include "core/cuda_check.cuh"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/context_parallel_cuda.h"
#include "model/cuda/dev_buf.h"
#include "model/cuda/layers_cuda.h"
#include "model/cuda/matmul.h"
#include "model/cuda/model_dims.h"
#include "model/cuda/model_kernels.h"
#include "model/context_parallel_header.h"
#include "model/rope.h"

namespace moba::model::cuda {
namespace {

// (query, key) pairs MoBA attends for one query head over documents `cu`: for the query at
// position t of its document, the keys of its own block up to t, plus min(K-1, t/S) past
// blocks of S keys each (the gate always fills its K-1 past slots when that many exist).
// pos0: the position of every sequence's first token in a longer one (a context-parallel
// shard); 0 on one process.
double moba_pairs_per_head(const std::vector<int64_t>& cu, int64_t S, int64_t K, int64_t pos0 = 0) {
  double pairs = 0.0;
  for (size_t d = 0; d + 1 < cu.size(); ++d)
    for (int64_t t = pos0; t < pos0 + cu[d + 1] - cu[d]; ++t)
      pairs += static_cast<double>(t % S + 1 + std::min(K - 1, t / S) * S);
  return pairs;
}

bool any_moba_layer(const ModelConfig& c) {
  for (int64_t l = 0; l < c.layers; ++l)
    if (layer_uses_moba(c, l, true)) return true;
  return false;
}

}  // namespace

// The GPU model's limits (model_cuda.h), as every build knows them (model::cuda_kernel_limits).
void check_gpu_config(const ModelConfig& cfg) {
  std::string limits;
  for (const std::string& why : cuda_kernel_limits(cfg)) limits += (limits.empty() ? "" : "; ") + why;
  MOBA_CHECK(limits.empty(), limits);
  // The fused projections read [wq; wk; wv] and [w_gate; w_up] as one matrix each, and
  // write their weights' gradients the same way: make_param_layout puts them end to end.
  const ModelConfig c = cfg.resolved();
  const size_t C = static_cast<size_t>(c.width), QD = static_cast<size_t>(c.heads * c.hd()),
               KD = static_cast<size_t>(c.kv() * c.hd()), F = static_cast<size_t>(c.ffn());
  for (const LayerOffsets& o : make_param_layout(c).layers)
    MOBA_CHECK(o.wk == o.wq + QD * C && o.wv == o.wk + KD * C && o.w_up == o.w_gate + F * C,
               "the GPU model needs wq, wk, wv (and w_gate, w_up) adjacent in the parameter "
               "layout");
}

// Profiling categories (ModelCuda::set_profiling).
enum Cat { kOther, kMatmul, kAttention, kGate, kLayers, kOptimizer, kCats };
const char* const kCatNames[kCats] = {"other (uploads, host gaps)", "matmuls (cuBLASLt)",
                                      "attention fwd/bwd", "MoBA gate",
                                      "layer kernels (norm, rope, swiglu, embed, CE)",
                                      "grad norm + AdamW"};

struct ModelCuda::Impl : ModelDims {
  // Profiling: while on, an event after every operation, charged to its category.
  bool profiling = false;
  std::vector<cudaEvent_t> event_pool;
  // Each mark: the category and operation (a static string) of the interval it ends.
  struct Mark {
    int cat;
    const char* op;
    cudaEvent_t e;
  };
  std::vector<Mark> marks;
  double cat_ms[kCats] = {};
  // Per operation (summed over layers): its category, its milliseconds and its count.
  struct OpTime {
    int cat = kOther;
    double ms = 0.0;
    int64_t count = 0;
  };
  std::map<std::string, OpTime> op_ms;
  void tick(int cat, const char* op = "other") {
    if (!profiling) return;
    if (marks.size() >= event_pool.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      event_pool.push_back(e);
    }
    cudaEvent_t e = event_pool[marks.size()];
    CUDA_CHECK(cudaEventRecord(e, stream));
    marks.push_back({cat, op, e});
  }
  void collect_profile() {  // waits; keeps the last mark as the next interval's start
    if (marks.empty()) return;
    CUDA_CHECK(cudaEventSynchronize(marks.back().e));
    for (size_t i = 1; i < marks.size(); ++i) {
      float ms = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i - 1].e, marks[i].e));
      cat_ms[marks[i].cat] += ms;
      OpTime& t = op_ms[marks[i].op];
      t.cat = marks[i].cat;
      t.ms += ms;
      ++t.count;
    }
    std::swap(event_pool[0], event_pool[marks.size() - 1]);
    marks.assign(1, {kOther, "other", event_pool[0]});
  }

  ModelConfig cfg;
  ParamLayout layout;
  RopeTable rope_host;
  std::unique_ptr<RopeTableCuda> rope;
  cudaStream_t stream = nullptr;
  std::unique_ptr<Matmul> mm;
  int64_t n = 0;  // parameters

  // Parameters and optimizer state (layout.total elements each).
  DevBuf P, G, M1, M2, Pb, decay, norm_partial, norm_out;

  // Activations, sized for cap_M tokens.
  int64_t cap_M = 0;
  DevBuf inputs, targets, pos, mask;
  // Kept for the backward. q and k after RoPE, v: contiguous, as the attention kernels
  // read them. ab: the fused gate/up projection's rows [a | b] (M, 2F).
  struct Layer {
    DevBuf x_mid, xn1, q, k, v, o, lse, sel, rstd1, xn2, rstd2, ab, h;
  };
  std::vector<DevBuf> xs;  // (L + 1) residual stream entering layer l; xs[L] the final one
  std::vector<Layer> layers;
  DevBuf xnf, rstdf, logits, losses, lse_ce;
  // rows: one scratch of M x max((Hq + 2 Hkv) D, 2F) bf16 for the fused projections' rows,
  // used in turn by the forward's qkv (before rope_split), the backward's [da | db]
  // (swiglu_backward_rows) and its [dq | dk | dv] (rope_merge); never two at once.
  DevBuf dx, dxn, dout, dq, dk, dv, dh, rows, norm_ws;

  // The last forward's batch.
  int64_t cur_M = 0, cur_counted = 0;
  bool has_mask = false, forward_done = false, backward_pending = false;
  std::vector<int64_t> cu;
  std::vector<bool> layer_moba;
  double flops = 0.0;
  std::unique_ptr<attn::cuda::Plan> plan;
  std::vector<int64_t> plan_cu;
  int64_t plan_pos0 = 0;  // the pairs' counts are for a shard starting there
  // Context parallel (set_context_parallel): the group (on when it has R > 1 ranks), each
  // MoBA layer's fetch state from its forward to its backward, the all-ranks count of the
  // last forward.
  dist::Communicator* cp = nullptr;
  std::vector<std::unique_ptr<dist::cuda::MobaContextParallelState>> cp_states;
  bool cp_on() const { return cp && cp->size() > 1; }
  double dense_pairs = 0.0, moba_pairs = 0.0;  // attended pairs per layer, for plan_cu

  // Host staging: batch upload (pinned, guarded by an event) and the per-token losses of
  // the last two forwards (a ring of two slots, each with its event).
  HostBuf stage;
  cudaEvent_t stage_done = nullptr;
  struct LossSlot {
    HostBuf buf;
    cudaEvent_t ready = nullptr;
    bool pending = false;
    int64_t M = 0, counted = 0;
    std::vector<uint8_t> mask;
  };
  LossSlot slots[2];
  int next_slot = 0, last_slot = -1;
  std::vector<double> ready_losses;

  explicit Impl(const ModelConfig& c)
      : cfg(c.resolved()), layout(make_param_layout(cfg)),
        rope_host(cfg.seq_len, cfg.hd(), cfg.rope_theta) {
    // `c` was validated where it entered (the trainer's reader, the bench's options).
    set_dims(cfg);
    check_gpu_config(cfg);
    stream = create_stream_on_device();
    CUDA_CHECK(cudaEventCreateWithFlags(&stage_done, cudaEventDisableTiming));
    for (LossSlot& s : slots) CUDA_CHECK(cudaEventCreateWithFlags(&s.ready, cudaEventDisableTiming));
    mm = std::make_unique<Matmul>(stream);
    rope = std::make_unique<RopeTableCuda>(rope_host);
    n = static_cast<int64_t>(layout.total);
    P.resize(sizeof(float) * n);
    G.resize(sizeof(float) * n);
    M1.resize(sizeof(float) * n);
    M2.resize(sizeof(float) * n);
    Pb.resize(sizeof(bf16) * n);
    CUDA_CHECK(cudaMemset(P.p, 0, P.bytes));
    CUDA_CHECK(cudaMemset(G.p, 0, G.bytes));
    CUDA_CHECK(cudaMemset(M1.p, 0, M1.bytes));
    CUDA_CHECK(cudaMemset(M2.p, 0, M2.bytes));
    CUDA_CHECK(cudaMemset(Pb.p, 0, Pb.bytes));
    std::vector<uint8_t> dec(static_cast<size_t>(n), 0);
    for (const TensorInfo& t : layout.tensors)
      if (t.decay) std::fill_n(dec.begin() + static_cast<ptrdiff_t>(t.offset), t.size, 1);
    decay.resize(dec.size());
    CUDA_CHECK(cudaMemcpy(decay.p, dec.data(), dec.size(), cudaMemcpyHostToDevice));
    norm_partial.resize(sizeof(double) * std::max<int64_t>(1, sumsq_chunks(n)));
    norm_out.resize(sizeof(double));
    xs.resize(static_cast<size_t>(L + 1));
    layers.resize(static_cast<size_t>(L));
  }

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    for (cudaEvent_t e : event_pool) cudaEventDestroy(e);
    plan.reset();
    if (stage_done) cudaEventDestroy(stage_done);
    for (LossSlot& s : slots)
      if (s.ready) cudaEventDestroy(s.ready);
    mm.reset();
    if (stream) cudaStreamDestroy(stream);
  }

  size_t bytes_now() const {
    size_t b = 0;
    auto add = [&](const DevBuf& d) { b += d.bytes; };
    for (const DevBuf* d : {&P, &G, &M1, &M2, &Pb, &decay, &norm_partial, &norm_out, &inputs,
                            &targets, &pos, &mask, &xnf, &rstdf, &logits, &losses, &lse_ce, &dx,
                            &dxn, &dout, &dq, &dk, &dv, &dh, &rows, &norm_ws})
      add(*d);
    for (const DevBuf& d : xs) add(d);
    for (const Layer& l : layers)
      for (const DevBuf* d : {&l.x_mid, &l.xn1, &l.q, &l.k, &l.v, &l.o, &l.lse, &l.sel, &l.rstd1,
                              &l.xn2, &l.rstd2, &l.ab, &l.h})
        add(*d);
    if (plan) b += plan->workspace_bytes();
    return b + (size_t{32} << 20);  // the matmul workspace
  }

  // Sizes every activation buffer for M tokens (grown only; contents not kept).
  void reserve(int64_t M) {
    if (M <= cap_M) return;
    CUDA_CHECK(cudaStreamSynchronize(stream));
    if (last_slot >= 0) {  // read pending losses out before their buffers are reallocated
      fold(slots[last_slot ^ 1]);
      fold(slots[last_slot]);
    }
    const size_t m = static_cast<size_t>(M), b2 = sizeof(bf16), f4 = sizeof(float);
    const size_t c = static_cast<size_t>(C), qd = static_cast<size_t>(Hq * D),
                 kd = static_cast<size_t>(Hkv * D), f = static_cast<size_t>(F);
    inputs.resize(4 * m);
    targets.resize(4 * m);
    pos.resize(4 * m);
    mask.resize(m);
    for (DevBuf& x : xs) x.resize(b2 * m * c);
    const bool moba_any = any_moba_layer(cfg);
    for (Layer& l : layers) {
      l.x_mid.resize(b2 * m * c);
      l.xn1.resize(b2 * m * c);
      l.q.resize(b2 * m * qd);
      l.k.resize(b2 * m * kd);
      l.v.resize(b2 * m * kd);
      l.o.resize(b2 * m * qd);
      l.lse.resize(f4 * m * static_cast<size_t>(Hq));
      l.sel.resize(moba_any ? 4 * m * static_cast<size_t>(Hq * moba.top_k) : 0);
      l.rstd1.resize(f4 * m);
      l.xn2.resize(b2 * m * c);
      l.rstd2.resize(f4 * m);
      l.ab.resize(b2 * m * 2 * f);
      l.h.resize(b2 * m * f);
    }
    xnf.resize(b2 * m * c);
    rstdf.resize(f4 * m);
    logits.resize(b2 * m * static_cast<size_t>(V));
    losses.resize(f4 * m);
    lse_ce.resize(f4 * m);
    dx.resize(b2 * m * c);
    dxn.resize(b2 * m * c);
    dout.resize(b2 * m * qd);
    dq.resize(b2 * m * qd);
    dk.resize(b2 * m * kd);
    dv.resize(b2 * m * kd);
    dh.resize(b2 * m * f);
    rows.resize(b2 * m * std::max(static_cast<size_t>(QKV), 2 * f));
    norm_ws.resize(rmsnorm_backward_workspace({M, C, static_cast<float>(cfg.norm_eps)}));
    for (LossSlot& s : slots) s.buf.reserve(f4 * m);
    stage.reserve(13 * m);
    cap_M = M;
  }

  // Reads back a finished slot's losses into ready_losses.
  void fold(LossSlot& s) {
    if (!s.pending) return;
    CUDA_CHECK(cudaEventSynchronize(s.ready));
    const float* l = static_cast<const float*>(s.buf.p);
    double sum = 0.0;
    for (int64_t i = 0; i < s.M; ++i)
      if (s.mask.empty() || s.mask[i]) sum += static_cast<double>(l[i]);
    ready_losses.push_back(sum / static_cast<double>(s.counted));
    s.pending = false;
  }

  // Context parallel's checks before a forward: every layer must run MoBA (the same verdict
  // on every rank: it depends on the configuration only), then the shards' header, checked
  // on every rank alike (model/context_parallel_header.h). Returns all ranks' counted
  // positions.
  int64_t context_parallel_setup(const Batch& batch, int64_t local_counted, bool moba_phase) {
    for (int64_t l = 0; l < L; ++l)
      MOBA_CHECK(layer_uses_moba(cfg, l, moba_phase), "context parallel on the GPU: layer ", l,
                 " runs full attention in this forward (",
                 moba_phase ? "model.attention.full_attention_last_layers" : "the MoBA-to-full switch",
                 "), and full layers need ring attention, which the GPU model does not have yet "
                 "(docs/distributed.md); every layer must run MoBA");
    const int64_t counted = check_context_parallel_shards(*cp, batch, local_counted, false, true,
                                                          moba.block_size, cfg.seq_len);
    while (cp_states.size() < static_cast<size_t>(L))
      cp_states.push_back(std::make_unique<dist::cuda::MobaContextParallelState>());
    return counted;
  }

  void forward(const Batch& batch, bool moba_phase, const double* loss_scale) {
    MOBA_CHECK(batch.T <= cfg.seq_len, "batch rows hold T = ", batch.T,
               " tokens, more than model.seq_len = ", cfg.seq_len);
    batch.validate(V);
    const int64_t local_counted = batch.counted_positions();
    // The loss's denominator: this batch's counted positions, or all ranks' (context
    // parallel, after the header every rank checks).
    const int64_t counted =
        cp_on() ? context_parallel_setup(batch, local_counted, moba_phase) : local_counted;
    MOBA_CHECK(counted > 0, "the batch's loss_mask is all zeros (every target starts another "
               "document): no position to average the loss over");
    const int64_t B = batch.B, T = batch.T, M = B * T;
    reserve(M);
    cur_M = M;
    cur_counted = counted;
    has_mask = !batch.loss_mask.empty();

    tick(kOther);
    if (marks.size() > 4096) collect_profile();
    // Stage inputs, targets, positions and the mask in pinned memory, then upload.
    CUDA_CHECK(cudaEventSynchronize(stage_done));  // the previous upload has left the buffer
    int32_t* h_in = static_cast<int32_t*>(stage.p);
    int32_t* h_tg = h_in + M;
    int32_t* h_pos = h_tg + M;
    uint8_t* h_mask = reinterpret_cast<uint8_t*>(h_pos + M);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        h_in[b * T + t] = batch.tokens[b * (T + 1) + t];
        h_tg[b * T + t] = batch.tokens[b * (T + 1) + t + 1];
      }
    cu = batch.boundaries();
    for (size_t d = 0; d + 1 < cu.size(); ++d)
      for (int64_t m = cu[d]; m < cu[d + 1]; ++m) h_pos[m] = static_cast<int32_t>(m - cu[d]);
    const int64_t pos0 = cp_on() ? cp->rank() * T : 0;  // the shard's first global position
    if (pos0)
      for (int64_t m = 0; m < M; ++m) h_pos[m] = static_cast<int32_t>(pos0 + m);
    if (has_mask) std::memcpy(h_mask, batch.loss_mask.data(), static_cast<size_t>(M));
    CUDA_CHECK(cudaMemcpyAsync(inputs.p, h_in, 4 * M, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(targets.p, h_tg, 4 * M, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(pos.p, h_pos, 4 * M, cudaMemcpyHostToDevice, stream));
    if (has_mask) CUDA_CHECK(cudaMemcpyAsync(mask.p, h_mask, M, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(stage_done, stream));

    if (!plan || plan_cu != cu || plan_pos0 != pos0) {  // the plan: the document boundaries
      CUDA_CHECK(cudaStreamSynchronize(stream));
      plan.reset();
      plan = std::make_unique<attn::cuda::Plan>(attn::Layout::varlen(cu, Hq, Hkv, D), moba,
                                                attn::Options{});
      plan_cu = cu;
      plan_pos0 = pos0;
      dense_pairs = attn::dense_pairs(plan->layout());
      moba_pairs = moba_pairs_per_head(cu, moba.block_size, moba.top_k, pos0) * static_cast<double>(Hq);
      if (pos0) dense_pairs = attn::dense_pairs(plan->layout(), pos0);
    }

    const float eps = static_cast<float>(cfg.norm_eps);
    const RmsNormParams rn{M, C, eps};
    const bf16* W = Pb.as<bf16>();
    const float* Pf = P.as<float>();
    embedding_forward({M, V, C}, inputs.as<int32_t>(), W + layout.embed, xs[0].as<bf16>(), stream);
    tick(kLayers, "fwd embedding");
    layer_moba.assign(static_cast<size_t>(L), false);
    double attn_flops = 0.0;
    for (int64_t li = 0; li < L; ++li) {
      const LayerOffsets& o = layout.layers[li];
      Layer& ly = layers[li];
      const bool use_moba = layer_uses_moba(cfg, li, moba_phase);
      layer_moba[li] = use_moba;
      const bf16* x = xs[li].as<bf16>();
      rmsnorm_forward(rn, x, Pf + o.attn_norm, ly.xn1.as<bf16>(), ly.rstd1.as<float>(), stream);
      tick(kLayers, "fwd rmsnorm (attention)");
      // One matmul against [wq; wk; wv] into the rows scratch, then RoPE on q and k and the
      // split into the contiguous q, k, v the attention kernels read.
      mm->forward(M, C, QKV, ly.xn1.as<bf16>(), W + o.wq, rows.as<bf16>());
      tick(kMatmul, "fwd matmul qkv");
      rope_split({M, Hq, Hkv}, *rope, pos.as<int32_t>(), rows.as<bf16>(), ly.q.as<bf16>(),
                 ly.k.as<bf16>(), ly.v.as<bf16>(), stream);
      tick(kLayers, "fwd rope + split");
      if (use_moba && cp_on()) {
        dist::cuda::moba_forward_context_parallel_cuda(
            *cp, plan->layout(), moba, attn::Options{}, ly.q.as<bf16>(), ly.k.as<bf16>(),
            ly.v.as<bf16>(), ly.o.as<bf16>(), ly.lse.as<float>(), *cp_states[li], stream);
        CUDA_CHECK(cudaMemcpyAsync(ly.sel.p, cp_states[li]->selection(),
                                   sizeof(int32_t) * static_cast<size_t>(M * Hq * moba.top_k),
                                   cudaMemcpyDeviceToDevice, stream));
        tick(kAttention, "fwd attention (MoBA, context parallel)");
      } else if (use_moba) {
        attn::cuda::moba_gate(*plan, ly.q.as<bf16>(), ly.k.as<bf16>(), ly.sel.as<int32_t>(), stream);
        tick(kGate, "fwd MoBA gate");
        attn::cuda::moba_forward(*plan, ly.sel.as<int32_t>(), ly.q.as<bf16>(), ly.k.as<bf16>(),
                                 ly.v.as<bf16>(), ly.o.as<bf16>(), ly.lse.as<float>(), stream);
        tick(kAttention, "fwd attention (MoBA)");
      } else {
        attn::cuda::dense_forward(*plan, ly.q.as<bf16>(), ly.k.as<bf16>(), ly.v.as<bf16>(),
                                  ly.o.as<bf16>(), ly.lse.as<float>(), stream);
        tick(kAttention, "fwd attention (dense)");
      }
      attn_flops += attn::attention_fwd_bwd_flops(use_moba ? moba_pairs : dense_pairs, D);
      // x_mid = x + o Wo^T, the residual add fused into the matmul.
      mm->forward(M, Hq * D, C, ly.o.as<bf16>(), W + o.wo, ly.x_mid.as<bf16>(), x);
      tick(kMatmul, "fwd matmul wo (+ residual)");
      rmsnorm_forward(rn, ly.x_mid.as<bf16>(), Pf + o.mlp_norm, ly.xn2.as<bf16>(),
                      ly.rstd2.as<float>(), stream);
      tick(kLayers, "fwd rmsnorm (mlp)");
      // One matmul against [w_gate; w_up]: rows [a | b].
      mm->forward(M, C, 2 * F, ly.xn2.as<bf16>(), W + o.w_gate, ly.ab.as<bf16>());
      tick(kMatmul, "fwd matmul gate/up");
      swiglu_forward_rows(M, F, ly.ab.as<bf16>(), ly.h.as<bf16>(), stream);
      tick(kLayers, "fwd swiglu");
      mm->forward(M, F, C, ly.h.as<bf16>(), W + o.w_down, xs[li + 1].as<bf16>(),
                  ly.x_mid.as<bf16>());
      tick(kMatmul, "fwd matmul down (+ residual)");
    }
    rmsnorm_forward(rn, xs[L].as<bf16>(), Pf + layout.final_norm, xnf.as<bf16>(),
                    rstdf.as<float>(), stream);
    tick(kLayers, "fwd rmsnorm (final)");
    mm->forward(M, C, V, xnf.as<bf16>(), W + layout.lm_head, logits.as<bf16>());
    tick(kMatmul, "fwd matmul lm head");
    const CrossEntropyParams ce{M, V, LogitsType::kBf16};
    const uint8_t* mk = has_mask ? mask.as<uint8_t>() : nullptr;
    if (loss_scale) {  // the logits become their gradient, in place
      cross_entropy_fused(ce, logits.p, targets.as<int32_t>(), mk,
                          static_cast<float>(*loss_scale / static_cast<double>(counted)),
                          losses.as<float>(), lse_ce.as<float>(), logits.p, stream);
      tick(kLayers, "cross-entropy (fwd + grad)");
    } else {
      cross_entropy_forward(ce, logits.p, targets.as<int32_t>(), mk, losses.as<float>(),
                            lse_ce.as<float>(), stream);
      tick(kLayers, "cross-entropy (fwd)");
    }
    flops = matmul_flops_per_token(cfg) * static_cast<double>(M) + attn_flops;

    // Queue the per-token losses for the host.
    LossSlot& s = slots[next_slot];
    fold(s);
    CUDA_CHECK(cudaMemcpyAsync(s.buf.p, losses.p, sizeof(float) * M, cudaMemcpyDeviceToHost,
                               stream));
    CUDA_CHECK(cudaEventRecord(s.ready, stream));
    s.pending = true;
    s.M = M;
    s.counted = counted;
    s.mask = batch.loss_mask;
    last_slot = next_slot;
    next_slot ^= 1;
    forward_done = true;
  }

  ModelCuda::GradReadyHook grad_ready;  // set_grad_ready_hook

  void backward() {
    const int64_t M = cur_M;
    const RmsNormParams rn{M, C, static_cast<float>(cfg.norm_eps)};
    const bf16* W = Pb.as<bf16>();
    const float* Pf = P.as<float>();
    float* Gf = G.as<float>();
    bf16 *dx_ = dx.as<bf16>(), *dxn_ = dxn.as<bf16>();
    // The logits hold their gradient (cross_entropy_fused).
    mm->backward_data(M, C, V, logits.as<bf16>(), W + layout.lm_head, dxn_, false);
    tick(kMatmul, "bwd matmul lm head (data)");
    mm->backward_weight(M, C, V, xnf.as<bf16>(), logits.as<bf16>(), Gf + layout.lm_head);
    tick(kMatmul, "bwd matmul lm head (weight)");
    rmsnorm_backward(rn, xs[L].as<bf16>(), Pf + layout.final_norm, rstdf.as<float>(), dxn_, dx_,
                     Gf + layout.final_norm, false, norm_ws.p, stream);
    tick(kLayers, "bwd rmsnorm (final)");
    if (grad_ready) grad_ready(layout.final_norm, stream);  // final_norm, an untied lm_head
    for (int64_t li = L - 1; li >= 0; --li) {
      const LayerOffsets& o = layout.layers[li];
      Layer& ly = layers[li];
      // x_out = x_mid + w_down(swiglu(a, b)): dx flows on unchanged and into the MLP.
      mm->backward_data(M, F, C, dx_, W + o.w_down, dh.as<bf16>(), false);
      tick(kMatmul, "bwd matmul down (data)");
      mm->backward_weight(M, F, C, ly.h.as<bf16>(), dx_, Gf + o.w_down);
      tick(kMatmul, "bwd matmul down (weight)");
      // [da | db] rows, then one matmul each for dxn (K = 2F) and for the gradient of
      // [w_gate; w_up] (N = 2F).
      bf16* dab = rows.as<bf16>();
      swiglu_backward_rows(M, F, ly.ab.as<bf16>(), dh.as<bf16>(), dab, stream);
      tick(kLayers, "bwd swiglu");
      mm->backward_data(M, C, 2 * F, dab, W + o.w_gate, dxn_, false);
      tick(kMatmul, "bwd matmul gate/up (data)");
      mm->backward_weight(M, C, 2 * F, ly.xn2.as<bf16>(), dab, Gf + o.w_gate);
      tick(kMatmul, "bwd matmul gate/up (weight)");
      rmsnorm_backward(rn, ly.x_mid.as<bf16>(), Pf + o.mlp_norm, ly.rstd2.as<float>(), dxn_, dx_,
                       Gf + o.mlp_norm, true, norm_ws.p, stream);
      tick(kLayers, "bwd rmsnorm (mlp)");
      // x_mid = x_in + wo(attention(rope(q), rope(k), v)).
      mm->backward_data(M, Hq * D, C, dx_, W + o.wo, dout.as<bf16>(), false);
      tick(kMatmul, "bwd matmul wo (data)");
      mm->backward_weight(M, Hq * D, C, ly.o.as<bf16>(), dx_, Gf + o.wo);
      tick(kMatmul, "bwd matmul wo (weight)");
      if (layer_moba[li] && cp_on()) {
        dist::cuda::moba_backward_context_parallel_cuda(*cp, *cp_states[li], dout.as<bf16>(),
                                                        dq.as<bf16>(), dk.as<bf16>(),
                                                        dv.as<bf16>(), stream);
        tick(kAttention, "bwd attention (MoBA, context parallel)");
      } else if (layer_moba[li]) {
        attn::cuda::moba_backward(*plan, ly.sel.as<int32_t>(), ly.q.as<bf16>(), ly.k.as<bf16>(),
                                  ly.v.as<bf16>(), ly.o.as<bf16>(), ly.lse.as<float>(),
                                  dout.as<bf16>(), dq.as<bf16>(), dk.as<bf16>(), dv.as<bf16>(),
                                  stream);
        tick(kAttention, "bwd attention (MoBA)");
      } else {
        attn::cuda::dense_backward(*plan, ly.q.as<bf16>(), ly.k.as<bf16>(), ly.v.as<bf16>(),
                                   ly.o.as<bf16>(), ly.lse.as<float>(), dout.as<bf16>(),
                                   dq.as<bf16>(), dk.as<bf16>(), dv.as<bf16>(), stream);
        tick(kAttention, "bwd attention (dense)");
      }
      // dq, dk rotated back and dv, merged into [dq | dk | dv] rows; then one matmul each
      // for dxn (K = (Hq + 2 Hkv) D) and for the gradient of [wq; wk; wv].
      bf16* dqkv = rows.as<bf16>();
      rope_merge({M, Hq, Hkv}, *rope, pos.as<int32_t>(), dq.as<bf16>(), dk.as<bf16>(),
                 dv.as<bf16>(), dqkv, stream);
      tick(kLayers, "bwd rope + merge");
      mm->backward_data(M, C, QKV, dqkv, W + o.wq, dxn_, false);
      tick(kMatmul, "bwd matmul qkv (data)");
      mm->backward_weight(M, C, QKV, ly.xn1.as<bf16>(), dqkv, Gf + o.wq);
      tick(kMatmul, "bwd matmul qkv (weight)");
      rmsnorm_backward(rn, xs[li].as<bf16>(), Pf + o.attn_norm, ly.rstd1.as<float>(), dxn_, dx_,
                       Gf + o.attn_norm, true, norm_ws.p, stream);
      tick(kLayers, "bwd rmsnorm (attention)");
      if (grad_ready) grad_ready(o.attn_norm, stream);  // layer li's tensors, and those after
    }
    embedding_backward({M, V, C}, inputs.as<int32_t>(), dx_, Gf + layout.embed, stream);
    tick(kLayers, "bwd embedding");
    if (grad_ready) grad_ready(0, stream);
  }
};

double device_peak_bf16_flops() {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return 0.0;
  const std::string name = p.name;
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos)
    return name.find("PCIe") != std::string::npos ? 756e12 : 989e12;
  return 0.0;
}

ModelCuda::ModelCuda(const ModelConfig& cfg) : impl_(std::make_unique<Impl>(cfg)) {}
ModelCuda::~ModelCuda() = default;

const ModelConfig& ModelCuda::config() const { return impl_->cfg; }
const ParamLayout& ModelCuda::layout() const { return impl_->layout; }

namespace {
void check_host(const char* what, size_t got, int64_t want) {
  MOBA_CHECK(got == static_cast<size_t>(want), what, " has ", got,
             " elements, the model needs ", want);
}
}  // namespace

void ModelCuda::upload_params(std::span<const float> params) {
  Impl& m = *impl_;
  check_host("parameter array", params.size(), m.n);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  CUDA_CHECK(cudaMemcpy(m.P.p, params.data(), m.P.bytes, cudaMemcpyHostToDevice));
  to_bf16(m.P.as<float>(), m.Pb.as<bf16>(), m.n, m.stream);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void ModelCuda::download_params(std::span<float> params) const {
  Impl& m = *impl_;
  check_host("parameter array", params.size(), m.n);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  CUDA_CHECK(cudaMemcpy(params.data(), m.P.p, m.P.bytes, cudaMemcpyDeviceToHost));
}

void ModelCuda::download_grads(std::span<float> grads) const {
  Impl& m = *impl_;
  check_host("gradient array", grads.size(), m.n);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  CUDA_CHECK(cudaMemcpy(grads.data(), m.G.p, m.G.bytes, cudaMemcpyDeviceToHost));
}

void ModelCuda::upload_moments(std::span<const float> m1, std::span<const float> m2) {
  Impl& m = *impl_;
  check_host("AdamW first moments", m1.size(), m.n);
  check_host("AdamW second moments", m2.size(), m.n);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  CUDA_CHECK(cudaMemcpy(m.M1.p, m1.data(), m.M1.bytes, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(m.M2.p, m2.data(), m.M2.bytes, cudaMemcpyHostToDevice));
}

void ModelCuda::download_moments(std::span<float> m1, std::span<float> m2) const {
  Impl& m = *impl_;
  check_host("AdamW first moments", m1.size(), m.n);
  check_host("AdamW second moments", m2.size(), m.n);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  CUDA_CHECK(cudaMemcpy(m1.data(), m.M1.p, m.M1.bytes, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(m2.data(), m.M2.p, m.M2.bytes, cudaMemcpyDeviceToHost));
}

void ModelCuda::zero_grads() {
  CUDA_CHECK(cudaMemsetAsync(impl_->G.p, 0, impl_->G.bytes, impl_->stream));
}

void ModelCuda::train_micro_batch(const Batch& batch, bool moba_phase, double loss_scale) {
  impl_->forward(batch, moba_phase, &loss_scale);
  impl_->backward();
}

void ModelCuda::forward(const Batch& batch, bool moba_phase) {
  impl_->forward(batch, moba_phase, nullptr);
}

std::vector<double> ModelCuda::take_losses() {
  Impl& m = *impl_;
  // Oldest first: the slot after the last one written, then the last one.
  if (m.last_slot >= 0) {
    m.fold(m.slots[m.last_slot ^ 1]);
    m.fold(m.slots[m.last_slot]);
  }
  std::vector<double> out;
  out.swap(m.ready_losses);
  if (m.cp_on()) {  // each rank's part of the global mean: summed over the ranks
    std::vector<int32_t> counts(static_cast<size_t>(m.cp->size()));
    const int32_t mine = static_cast<int32_t>(out.size());
    m.cp->all_gather_host(std::span<const int32_t>(&mine, 1), counts);
    for (int32_t c : counts)
      MOBA_CHECK(c == mine, "context parallel: take_losses: the ranks hold different numbers of "
                 "losses (", mine, " here, ", c, " on another rank): every rank must run the same "
                 "micro-batches");
    if (!out.empty()) m.cp->all_reduce_sum_host(out);
  }
  return out;
}

void ModelCuda::set_context_parallel(dist::Communicator* comm) {
  Impl& m = *impl_;
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  m.cp = comm;
  m.cp_states.clear();
  m.plan.reset();  // its pairs' counts may be a shard's
}
dist::Communicator* ModelCuda::context_parallel() const { return impl_->cp; }

std::vector<float> ModelCuda::token_losses() {
  Impl& m = *impl_;
  MOBA_CHECK(m.forward_done && m.last_slot >= 0, "ModelCuda::token_losses needs a forward first");
  const Impl::LossSlot& s = m.slots[m.last_slot];
  CUDA_CHECK(cudaEventSynchronize(s.ready));
  const float* l = static_cast<const float*>(s.buf.p);
  return std::vector<float>(l, l + s.M);
}

double ModelCuda::grad_norm() {
  Impl& m = *impl_;
  m.tick(kOther);
  sum_of_squares(m.G.as<float>(), m.n, m.norm_partial.as<double>(), m.norm_out.as<double>(),
                 m.stream);
  m.tick(kOptimizer, "grad norm");
  double sq = 0.0;
  CUDA_CHECK(cudaMemcpyAsync(&sq, m.norm_out.p, sizeof sq, cudaMemcpyDeviceToHost, m.stream));
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return std::sqrt(sq);
}

void ModelCuda::adamw_step(const AdamWStep& s) {
  Impl& m = *impl_;
  AdamWParams p;
  p.n = m.n;
  p.t = s.t;
  p.lr = s.lr;
  p.beta1 = s.beta1;
  p.beta2 = s.beta2;
  p.eps = s.eps;
  p.weight_decay = s.weight_decay;
  p.grad_scale = s.grad_scale;
  cuda::adamw_step(p, m.P.as<float>(), m.G.as<float>(), m.M1.as<float>(), m.M2.as<float>(),
                   m.decay.as<uint8_t>(), m.Pb.as<bf16>(), m.stream);
  m.tick(kOptimizer, "AdamW");
}

void ModelCuda::set_profiling(bool on) {
  Impl& m = *impl_;
  m.collect_profile();
  m.profiling = on;
  m.marks.clear();
  for (double& x : m.cat_ms) x = 0.0;
  m.op_ms.clear();
  m.tick(kOther);
}

std::vector<std::pair<std::string, double>> ModelCuda::take_profile() {
  Impl& m = *impl_;
  m.collect_profile();
  std::vector<std::pair<std::string, double>> out;
  for (int c = 0; c < kCats; ++c) out.emplace_back(kCatNames[c], m.cat_ms[c]);
  for (double& x : m.cat_ms) x = 0.0;
  return out;
}

std::vector<ModelCuda::OpProfile> ModelCuda::take_op_profile() {
  Impl& m = *impl_;
  m.collect_profile();
  std::vector<OpProfile> out;
  for (const auto& [op, t] : m.op_ms) out.push_back({op, kCatNames[t.cat], t.ms, t.count});
  std::sort(out.begin(), out.end(), [](const OpProfile& a, const OpProfile& b) { return a.ms > b.ms; });
  m.op_ms.clear();
  return out;
}

double ModelCuda::last_flops() const { return impl_->flops; }

std::vector<int32_t> ModelCuda::selection(int64_t layer) const {
  Impl& m = *impl_;
  MOBA_CHECK(layer >= 0 && layer < m.L, "selection: layer ", layer, " outside [0, ", m.L, ")");
  if (!m.forward_done || !m.layer_moba[layer]) return {};
  std::vector<int32_t> sel(static_cast<size_t>(m.cur_M * m.Hq * m.moba.top_k));
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  CUDA_CHECK(cudaMemcpy(sel.data(), m.layers[layer].sel.p, sizeof(int32_t) * sel.size(),
                        cudaMemcpyDeviceToHost));
  return sel;
}

size_t ModelCuda::device_bytes() const { return impl_->bytes_now(); }

void ModelCuda::set_grad_ready_hook(GradReadyHook hook) { impl_->grad_ready = std::move(hook); }
cudaStream_t ModelCuda::stream() const { return impl_->stream; }
float* ModelCuda::device_grads() { return impl_->G.as<float>(); }

}  // namespace moba::model::cuda
