// Dense and MoBA attention share one core: each (token, query head) row attends to a
// short list of key ranges [begin, end) on the packed token axis. Dense causal is one
// range, [sequence start, t]; MoBA is one range per selected block, the past ones whole
// and the current one cut at t. The core accumulates in double whatever Real is, so the
// float reference is as accurate as its inputs allow.
#include "attention/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/attend_row.h"
#include "core/error.h"

namespace moba::attn::cpu {
namespace {

struct KeyRange {
  int64_t begin, end;  // packed token indices, end exclusive
};

// Fills `ranges` with the keys of (token, head); returns nothing, the list may not be empty.
using RangeFn = void (*)(const void* ctx, int64_t tok, int64_t head, std::vector<KeyRange>&);

struct Tensors {
  int64_t N, Hq, Hkv, D, group;
  double scale;
};

Tensors tensors_of(const Layout& layout, const Options& opt) {
  layout.validate();
  return {layout.tokens(), layout.num_q_heads, layout.num_kv_heads, layout.head_dim,
          layout.group(), opt.scale_for(layout)};
}

using detail::dot;

template <typename Real>
void forward_core(const Tensors& t, const void* ctx, RangeFn ranges_of, std::span<const Real> q,
                  std::span<const Real> k, std::span<const Real> v, std::span<Real> out,
                  std::span<Real> lse) {
#pragma omp parallel
  {
    std::vector<KeyRange> ranges;
    std::vector<double> s;    // scaled scores of the row's keys, in range order
    std::vector<double> acc;  // (D) unnormalised output
#pragma omp for schedule(dynamic, 16)
    for (int64_t tok = 0; tok < t.N; ++tok) {
      for (int64_t h = 0; h < t.Hq; ++h) {
        ranges.clear();
        ranges_of(ctx, tok, h, ranges);
        const int64_t kvh = h / t.group;
        const size_t row = static_cast<size_t>((tok * t.Hq + h) * t.D);
        lse[tok * t.Hq + h] = static_cast<Real>(detail::attend_row(
            &q[row], t.D, t.scale, ranges, [&](int64_t j) { return &k[(j * t.Hkv + kvh) * t.D]; },
            [&](int64_t j) { return &v[(j * t.Hkv + kvh) * t.D]; }, s, acc, &out[row]));
      }
    }
  }
}

// dS = P * (dP - rowsum(dO * O)); dQ = scale * dS K; dK = scale * dS^T Q; dV = P^T dO.
// Parallel over kv heads: each thread owns the dk/dv rows of its kv head.
template <typename Real>
void backward_core(const Tensors& t, const void* ctx, RangeFn ranges_of,
                   std::span<const Real> q, std::span<const Real> k, std::span<const Real> v,
                   std::span<const Real> out, std::span<const Real> lse,
                   std::span<const Real> dout, std::span<Real> dq, std::span<Real> dk,
                   std::span<Real> dv) {
  std::vector<double> dq_acc(dq.size(), 0.0), dk_acc(dk.size(), 0.0), dv_acc(dv.size(), 0.0);
#pragma omp parallel
  {
    std::vector<KeyRange> ranges;
#pragma omp for schedule(static)
    for (int64_t kvh = 0; kvh < t.Hkv; ++kvh) {
      for (int64_t tok = 0; tok < t.N; ++tok) {
        for (int64_t h = kvh * t.group; h < (kvh + 1) * t.group; ++h) {
          ranges.clear();
          ranges_of(ctx, tok, h, ranges);
          const size_t row = static_cast<size_t>((tok * t.Hq + h) * t.D);
          const Real* qr = &q[row];
          const Real* dor = &dout[row];
          const double delta = dot(dor, &out[row], t.D);  // rowsum(dO * O)
          const double row_lse = static_cast<double>(lse[tok * t.Hq + h]);
          for (const KeyRange& r : ranges)
            for (int64_t j = r.begin; j < r.end; ++j) {
              const size_t krow = static_cast<size_t>((j * t.Hkv + kvh) * t.D);
              const double p = std::exp(t.scale * dot(qr, &k[krow], t.D) - row_lse);
              const double dp = dot(dor, &v[krow], t.D);
              const double ds = p * (dp - delta);
              for (int64_t d = 0; d < t.D; ++d) {
                dv_acc[krow + d] += p * static_cast<double>(dor[d]);
                dq_acc[row + d] += t.scale * ds * static_cast<double>(k[krow + d]);
                dk_acc[krow + d] += t.scale * ds * static_cast<double>(qr[d]);
              }
            }
        }
      }
    }
  }
  std::transform(dq_acc.begin(), dq_acc.end(), dq.begin(), [](double x) { return Real(x); });
  std::transform(dk_acc.begin(), dk_acc.end(), dk.begin(), [](double x) { return Real(x); });
  std::transform(dv_acc.begin(), dv_acc.end(), dv.begin(), [](double x) { return Real(x); });
}

// ---- key ranges ---------------------------------------------------------------------

struct DenseCtx {
  const Layout* layout;
  std::vector<int64_t> seq_start;  // (N) packed index of each token's sequence start
};

DenseCtx dense_ctx(const Layout& layout) {
  DenseCtx c{&layout, std::vector<int64_t>(static_cast<size_t>(layout.tokens()))};
  for (int64_t b = 0; b < layout.batch(); ++b)
    std::fill(c.seq_start.begin() + layout.seq_begin(b),
              c.seq_start.begin() + layout.seq_begin(b) + layout.seq_len(b), layout.seq_begin(b));
  return c;
}

void dense_ranges(const void* ctx, int64_t tok, int64_t, std::vector<KeyRange>& r) {
  const auto* c = static_cast<const DenseCtx*>(ctx);
  r.push_back({c->seq_start[tok], tok + 1});
}

struct MobaCtx {
  DenseCtx dense;
  const Selection* sel;
  int64_t S;
};

void moba_ranges(const void* ctx, int64_t tok, int64_t h, std::vector<KeyRange>& r) {
  const auto* c = static_cast<const MobaCtx*>(ctx);
  const int64_t start = c->dense.seq_start[tok];
  for (int32_t j : c->sel->at(tok, h)) {
    if (j < 0) continue;
    const int64_t b0 = start + j * c->S;
    r.push_back({b0, std::min(b0 + c->S, tok + 1)});
  }
}

// A selection built by hand must still be one MoBA could make: ids in [0, c], ascending,
// unique, the current block c present, padding (-1) only.
MobaCtx moba_ctx(const Layout& layout, const MobaConfig& cfg, const Selection& sel) {
  cfg.validate();
  MOBA_CHECK(sel.top_k >= 1 && sel.num_q_heads == layout.num_q_heads,
             "selection has K = ", sel.top_k, " and Hq = ", sel.num_q_heads,
             "; the layout has Hq = ", layout.num_q_heads);
  check_size("selection", sel.blocks.size(), layout.lse_elems() * static_cast<size_t>(sel.top_k));
  MobaCtx c{dense_ctx(layout), &sel, cfg.block_size};
  for (int64_t tok = 0; tok < layout.tokens(); ++tok) {
    const int64_t cur = (tok - c.dense.seq_start[tok]) / cfg.block_size;
    for (int64_t h = 0; h < layout.num_q_heads; ++h) {
      int64_t prev = -1;
      bool has_current = false;
      for (int32_t j : sel.at(tok, h)) {
        if (j < 0) continue;
        MOBA_CHECK(j > prev && j <= cur, "selection of token ", tok, ", head ", h,
                   " is invalid: block ids must be ascending, unique and <= the current block ",
                   cur, ", got ", j, " after ", prev);
        prev = j;
        has_current = has_current || j == cur;
      }
      MOBA_CHECK(has_current, "selection of token ", tok, ", head ", h,
                 " does not contain its current block ", cur);
    }
  }
  return c;
}

template <typename Real>
void check_io(const Layout& l, std::span<const Real> q, std::span<const Real> k,
              std::span<const Real> v, size_t out, size_t lse) {
  check_size("q", q.size(), l.q_elems());
  check_size("k", k.size(), l.kv_elems());
  check_size("v", v.size(), l.kv_elems());
  check_size("out", out, l.q_elems());
  check_size("lse", lse, l.lse_elems());
}

template <typename Real>
void check_grads(const Layout& l, size_t dout, size_t dq, size_t dk, size_t dv) {
  check_size("dout", dout, l.q_elems());
  check_size("dq", dq, l.q_elems());
  check_size("dk", dk, l.kv_elems());
  check_size("dv", dv, l.kv_elems());
}

}  // namespace

template <typename Real>
void dense_forward(const Layout& layout, const Options& opt, std::span<const Real> q,
                   std::span<const Real> k, std::span<const Real> v, std::span<Real> out,
                   std::span<Real> lse) {
  const Tensors t = tensors_of(layout, opt);
  check_io(layout, q, k, v, out.size(), lse.size());
  const DenseCtx ctx = dense_ctx(layout);
  forward_core(t, &ctx, dense_ranges, q, k, v, out, lse);
}

template <typename Real>
void dense_backward(const Layout& layout, const Options& opt, std::span<const Real> q,
                    std::span<const Real> k, std::span<const Real> v,
                    std::span<const Real> out, std::span<const Real> lse,
                    std::span<const Real> dout, std::span<Real> dq, std::span<Real> dk,
                    std::span<Real> dv) {
  const Tensors t = tensors_of(layout, opt);
  check_io(layout, q, k, v, out.size(), lse.size());
  check_grads<Real>(layout, dout.size(), dq.size(), dk.size(), dv.size());
  const DenseCtx ctx = dense_ctx(layout);
  backward_core(t, &ctx, dense_ranges, q, k, v, out, lse, dout, dq, dk, dv);
}

template <typename Real>
void moba_forward(const Layout& layout, const MobaConfig& cfg, const Selection& sel,
                  const Options& opt, std::span<const Real> q, std::span<const Real> k,
                  std::span<const Real> v, std::span<Real> out, std::span<Real> lse) {
  const Tensors t = tensors_of(layout, opt);
  check_io(layout, q, k, v, out.size(), lse.size());
  const MobaCtx ctx = moba_ctx(layout, cfg, sel);
  forward_core(t, &ctx, moba_ranges, q, k, v, out, lse);
}

template <typename Real>
void moba_backward(const Layout& layout, const MobaConfig& cfg, const Selection& sel,
                   const Options& opt, std::span<const Real> q, std::span<const Real> k,
                   std::span<const Real> v, std::span<const Real> out,
                   std::span<const Real> lse, std::span<const Real> dout, std::span<Real> dq,
                   std::span<Real> dk, std::span<Real> dv) {
  const Tensors t = tensors_of(layout, opt);
  check_io(layout, q, k, v, out.size(), lse.size());
  check_grads<Real>(layout, dout.size(), dq.size(), dk.size(), dv.size());
  const MobaCtx ctx = moba_ctx(layout, cfg, sel);
  backward_core(t, &ctx, moba_ranges, q, k, v, out, lse, dout, dq, dk, dv);
}

#define MOBA_INSTANTIATE(Real)                                                               \
  template void dense_forward<Real>(const Layout&, const Options&, std::span<const Real>,     \
                                    std::span<const Real>, std::span<const Real>,             \
                                    std::span<Real>, std::span<Real>);                        \
  template void dense_backward<Real>(                                                         \
      const Layout&, const Options&, std::span<const Real>, std::span<const Real>,            \
      std::span<const Real>, std::span<const Real>, std::span<const Real>,                    \
      std::span<const Real>, std::span<Real>, std::span<Real>, std::span<Real>);              \
  template void moba_forward<Real>(const Layout&, const MobaConfig&, const Selection&,        \
                                   const Options&, std::span<const Real>,                     \
                                   std::span<const Real>, std::span<const Real>,              \
                                   std::span<Real>, std::span<Real>);                         \
  template void moba_backward<Real>(                                                          \
      const Layout&, const MobaConfig&, const Selection&, const Options&,                     \
      std::span<const Real>, std::span<const Real>, std::span<const Real>,                    \
      std::span<const Real>, std::span<const Real>, std::span<const Real>, std::span<Real>,   \
      std::span<Real>, std::span<Real>);

MOBA_INSTANTIATE(float)
MOBA_INSTANTIATE(double)
#undef MOBA_INSTANTIATE

}  // namespace moba::attn::cpu
