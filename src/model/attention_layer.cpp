#include "model/attention_layer.h"

#include <span>

#include "attention/stats.h"
#include "core/error.h"
#include "model/attention_blas.h"
#include "model/linear.h"

namespace moba::model {
namespace {

bool collective(const dist::Communicator* cp) { return cp && cp->size() > 1; }

}  // namespace

template <typename Real>
void attention_forward(const attn::Layout& layout, const attn::MobaConfig* moba,
                       const RopeTable& rope, const int32_t* pos, int64_t C, const Real* params,
                       AttentionWeights w, const Real* xn, Real* y, AttentionCache<Real>& cache,
                       const attn::Selection* forced, dist::Communicator* cp) {
  const int64_t M = layout.tokens(), Hq = layout.num_q_heads, Hkv = layout.num_kv_heads;
  const int64_t D = layout.head_dim;
  cache.q.resize(layout.q_elems());
  cache.k.resize(layout.kv_elems());
  cache.v.resize(layout.kv_elems());
  cache.out.resize(layout.q_elems());
  cache.lse.resize(layout.lse_elems());
  linear_forward(M, C, Hq * D, xn, params + w.wq, cache.q.data());
  linear_forward(M, C, Hkv * D, xn, params + w.wk, cache.k.data());
  linear_forward(M, C, Hkv * D, xn, params + w.wv, cache.v.data());
  rope_apply(rope, M, Hq, pos, cache.q.data(), false);
  rope_apply(rope, M, Hkv, pos, cache.k.data(), false);
  const std::span<const Real> q(cache.q), k(cache.k), v(cache.v);
  const double scale = attn::Options{}.scale_for(layout);  // 1/sqrt(D)
  cache.moba = moba != nullptr;
  cache.context_parallel = collective(cp);
  cache.cp_moba = {};  // the saved state of an earlier context-parallel forward, if any
  cache.cp_ring = {};
  if (cache.context_parallel) {
    MOBA_CHECK(!forced, "context parallel: a forced MoBA selection is not supported");
    const std::span<Real> out(cache.out), lse(cache.lse);
    if (moba) {
      dist::moba_forward_context_parallel<Real>(*cp, layout, *moba, {}, q, k, v, out, lse,
                                                &cache.cp_moba);
      cache.sel = attn::Selection{moba->top_k, Hq, cache.cp_moba.sel};
    } else {
      dist::dense_forward_context_parallel<Real>(*cp, layout, {}, q, k, v, out, lse,
                                                 &cache.cp_ring);
      cache.sel = {};
    }
    cache.gate_sel = {};
    const int64_t pos0 = cp->rank() * layout.tokens();  // the shard's first position
    cache.pairs = moba ? attn::moba_pairs(layout, *moba, cache.sel, pos0)
                       : attn::dense_pairs(layout, pos0);
  } else {
    if (moba) {
      if (forced) {
        cache.sel = *forced;
        cache.gate_sel = attn::moba_gate<Real>(layout, *moba, q, k);  // for comparison only
      } else {
        cache.sel = attn::moba_gate<Real>(layout, *moba, q, k);
        cache.gate_sel = {};
      }
      cache.pairs = attn::moba_pairs(layout, *moba, cache.sel);
    } else {
      cache.pairs = attn::dense_pairs(layout);
    }
    attention_blas_forward<Real>(layout, moba ? &cache.sel : nullptr,
                                 moba ? moba->block_size : 0, scale, q.data(), k.data(),
                                 v.data(), cache.out.data(), cache.lse.data());
  }
  linear_forward(M, Hq * D, C, cache.out.data(), params + w.wo, y);
}

template <typename Real>
void attention_backward(const attn::Layout& layout, const attn::MobaConfig* moba,
                        const RopeTable& rope, const int32_t* pos, int64_t C, const Real* params,
                        AttentionWeights w, const Real* xn, const AttentionCache<Real>& cache,
                        const Real* dy, Real* dxn, Real* grads, dist::Communicator* cp) {
  const int64_t M = layout.tokens(), Hq = layout.num_q_heads, Hkv = layout.num_kv_heads;
  const int64_t D = layout.head_dim;
  std::vector<Real> dout(layout.q_elems());                        // (M, Hq, D)
  std::vector<Real> dq(layout.q_elems());                          // (M, Hq, D)
  std::vector<Real> dk(layout.kv_elems()), dv(layout.kv_elems());  // (M, Hkv, D)
  MOBA_CHECK(cache.context_parallel == collective(cp), "attention backward: the forward ran ",
             cache.context_parallel ? "context parallel over several ranks" : "on one process",
             ", the backward is asked to run ",
             collective(cp) ? "context parallel over several ranks" : "on one process");
  linear_backward(M, Hq * D, C, cache.out.data(), params + w.wo, dy, dout.data(), grads + w.wo);
  if (cache.context_parallel) {
    const std::span<const Real> q(cache.q), k(cache.k), v(cache.v), out(cache.out),
        lse(cache.lse), dO(dout);
    if (cache.moba)
      dist::moba_backward_context_parallel<Real>(*cp, cache.cp_moba, q, k, v, out, lse, dO,
                                                 std::span<Real>(dq), std::span<Real>(dk),
                                                 std::span<Real>(dv));
    else
      dist::dense_backward_context_parallel<Real>(*cp, cache.cp_ring, q, k, v, out, lse, dO,
                                                  std::span<Real>(dq), std::span<Real>(dk),
                                                  std::span<Real>(dv));
  } else {
    attention_blas_backward<Real>(layout, moba ? &cache.sel : nullptr,
                                  moba ? moba->block_size : 0, attn::Options{}.scale_for(layout),
                                  cache.q.data(), cache.k.data(), cache.v.data(),
                                  cache.out.data(), cache.lse.data(), dout.data(), dq.data(),
                                  dk.data(), dv.data());
  }
  // RoPE is a rotation: its backward rotates the gradient back.
  rope_apply(rope, M, Hq, pos, dq.data(), true);
  rope_apply(rope, M, Hkv, pos, dk.data(), true);
  linear_backward(M, C, Hq * D, xn, params + w.wq, dq.data(), dxn, grads + w.wq, false);
  linear_backward(M, C, Hkv * D, xn, params + w.wk, dk.data(), dxn, grads + w.wk, true);
  linear_backward(M, C, Hkv * D, xn, params + w.wv, dv.data(), dxn, grads + w.wv, true);
}

#define MOBA_INSTANTIATE(Real)                                                                   \
  template void attention_forward<Real>(const attn::Layout&, const attn::MobaConfig*,            \
                                        const RopeTable&, const int32_t*, int64_t, const Real*,  \
                                        AttentionWeights, const Real*, Real*,                    \
                                        AttentionCache<Real>&, const attn::Selection*,           \
                                        dist::Communicator*);                                    \
  template void attention_backward<Real>(const attn::Layout&, const attn::MobaConfig*,           \
                                         const RopeTable&, const int32_t*, int64_t, const Real*, \
                                         AttentionWeights, const Real*,                          \
                                         const AttentionCache<Real>&, const Real*, Real*, Real*, \
                                         dist::Communicator*);
MOBA_INSTANTIATE(float)
MOBA_INSTANTIATE(double)
#undef MOBA_INSTANTIATE

}  // namespace moba::model
