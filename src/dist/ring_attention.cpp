#include "dist/ring_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/attend_row.h"
#include "core/error.h"
#include "dist/shard_checks.h"

namespace moba::dist {
namespace {

// The header every rank sends first: its shard's length, then what must be the same on all.
enum Field { kTokens, kQHeads, kKvHeads, kHeadDim, kFields };
constexpr const char* kFieldNames[kFields] = {"shard length", "query heads Hq", "kv heads Hkv",
                                              "head dim D"};

int32_t narrow(int64_t x, const char* what) {
  return detail::narrow_header(x, "ring attention", what);
}

// The same verdict on every rank, since every rank checks all the headers.
void check_headers(const std::vector<int32_t>& all, int R) {
  detail::check_headers("ring attention", all, R, kFields, kQHeads, kFieldNames);
  detail::check_shard_lengths("ring attention", all, R, kFields);
}

struct Shape {
  int64_t T_r, Hq, Hkv, D, G;
  double scale;
  size_t rows() const { return static_cast<size_t>(T_r * Hq); }
  size_t kv() const { return static_cast<size_t>(T_r * Hkv * D); }  // one of K, V
};

Shape shape_of(const attn::Layout& shard, double scale) {
  return {shard.tokens(), shard.num_q_heads, shard.num_kv_heads, shard.head_dim,
          shard.group(), scale};
}

// Per (query, head) row of the shard: the running max of the scaled scores, the sum of
// their exponentials relative to it, and the (D) unnormalised output.
struct RowState {
  std::vector<double> m, l, acc;
};

// One ring step of the forward: this rank's queries against the held shard's keys (K then
// V, (T_r, Hkv, D) each); `own`: the rank's own shard, cut at each query (causal),
// otherwise an earlier shard, seen whole. Per row, attend_row's arithmetic without the
// normalisation (scores, their max, then exp, sum and accumulator in key order); the first
// step assigns the row's state, later ones merge into it. So with one rank the row is
// dense_forward's exactly.
template <typename Real>
void forward_step(const Shape& sh, std::span<const Real> q, const Real* keys,
                  const Real* values, bool own, RowState& st) {
  std::vector<double> s, acc(static_cast<size_t>(sh.D));
  for (int64_t i = 0; i < sh.T_r; ++i)
    for (int64_t h = 0; h < sh.Hq; ++h) {
      const int64_t kvh = h / sh.G, end = own ? i + 1 : sh.T_r;
      const size_t row = static_cast<size_t>(i * sh.Hq + h);
      const Real* qr = &q[row * static_cast<size_t>(sh.D)];
      s.clear();
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < end; ++j) {
        s.push_back(sh.scale * attn::detail::dot(qr, keys + (j * sh.Hkv + kvh) * sh.D, sh.D));
        m = std::max(m, s.back());
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double l = 0.0;
      for (int64_t j = 0; j < end; ++j) {
        const double p = std::exp(s[static_cast<size_t>(j)] - m);
        l += p;
        const Real* vr = values + (j * sh.Hkv + kvh) * sh.D;
        for (int64_t d = 0; d < sh.D; ++d) acc[d] += p * static_cast<double>(vr[d]);
      }
      double* racc = &st.acc[row * static_cast<size_t>(sh.D)];
      if (own) {  // step 0, the first for every row
        st.m[row] = m;
        st.l[row] = l;
        std::copy(acc.begin(), acc.end(), racc);
        continue;
      }
      // Both maxima are finite (every step has at least one key): rescale both to the
      // larger.
      const double M = std::max(st.m[row], m);
      const double a = std::exp(st.m[row] - M), b = std::exp(m - M);
      st.l[row] = st.l[row] * a + l * b;
      for (int64_t d = 0; d < sh.D; ++d) racc[d] = racc[d] * a + acc[d] * b;
      st.m[row] = M;
    }
}

// One ring step of the backward, backward_core's arithmetic (attention_cpu.cpp) over the
// held shard's keys: per kv head, per query in order, per query head of its group, per key
// in order. dq_acc is the rank's; dk_acc, dv_acc the held shard's.
template <typename Real>
void backward_step(const Shape& sh, std::span<const Real> q, std::span<const Real> lse,
                   std::span<const Real> dout, const std::vector<double>& delta,
                   const Real* keys, const Real* values, bool own, std::vector<double>& dq_acc,
                   double* dk_acc, double* dv_acc) {
  const int64_t D = sh.D;
  for (int64_t kvh = 0; kvh < sh.Hkv; ++kvh)
    for (int64_t i = 0; i < sh.T_r; ++i) {
      const int64_t end = own ? i + 1 : sh.T_r;
      for (int64_t h = kvh * sh.G; h < (kvh + 1) * sh.G; ++h) {
        const size_t row = static_cast<size_t>(i * sh.Hq + h);
        const size_t qrow = row * static_cast<size_t>(D);
        const Real* qr = &q[qrow];
        const Real* dor = &dout[qrow];
        const double row_lse = static_cast<double>(lse[row]);
        for (int64_t j = 0; j < end; ++j) {
          const size_t krow = static_cast<size_t>((j * sh.Hkv + kvh) * D);
          const double p = std::exp(sh.scale * attn::detail::dot(qr, keys + krow, D) - row_lse);
          const double dp = attn::detail::dot(dor, values + krow, D);
          const double ds = p * (dp - delta[row]);
          for (int64_t d = 0; d < D; ++d) {
            dv_acc[krow + d] += p * static_cast<double>(dor[d]);
            dq_acc[qrow + d] += sh.scale * ds * static_cast<double>(keys[krow + d]);
            dk_acc[krow + d] += sh.scale * ds * static_cast<double>(qr[d]);
          }
        }
      }
    }
}

// One ring step's all_to_all_v: `send` goes to rank `to` (-1: nothing sent), `recv` (its
// length known to both sides by the protocol) comes from `from` (-1: nothing received),
// `recv2` from `from2`. Every rank calls it at every step, with or without data.
template <typename Real>
void exchange(Communicator& comm, std::span<const Real> send, int to, std::span<Real> recv,
              int from, std::span<Real> recv2 = {}, int from2 = -1) {
  const auto Rz = static_cast<size_t>(comm.size());
  std::vector<size_t> send_counts(Rz, 0), recv_counts(Rz, 0);
  if (to >= 0) send_counts[static_cast<size_t>(to)] = send.size();
  if (from >= 0) recv_counts[static_cast<size_t>(from)] = recv.size();
  if (from2 >= 0) recv_counts[static_cast<size_t>(from2)] = recv2.size();
  if (from2 < 0 || from < 0) {  // one run or none: receive in place
    const std::span<Real> into = from >= 0 ? recv : recv2;
    comm.all_to_all_v(send, send_counts, into, recv_counts);
    return;
  }
  // Two runs land in rank order in one buffer; split them after.
  std::vector<Real> both(recv.size() + recv2.size());
  comm.all_to_all_v(send, send_counts, std::span<Real>(both), recv_counts);
  const bool first_is_recv = from < from2;
  const auto split = both.begin() + static_cast<std::ptrdiff_t>(first_is_recv ? recv.size()
                                                                              : recv2.size());
  std::copy(both.begin(), split, first_is_recv ? recv.begin() : recv2.begin());
  std::copy(split, both.end(), first_is_recv ? recv2.begin() : recv.begin());
}

// A buffer of the backward against the shard the forward saw.
}  // namespace

template <typename Real>
RingTraffic dense_forward_context_parallel(Communicator& comm, const attn::Layout& shard,
                                           const attn::Options& opt, std::span<const Real> q,
                                           std::span<const Real> k, std::span<const Real> v,
                                           std::span<Real> out, std::span<Real> lse,
                                           RingSaved* saved) {
  detail::check_forward_args<Real>("ring attention", shard, q, k, v, out, lse);
  const int R = comm.size(), me = comm.rank();
  const Shape sh = shape_of(shard, opt.scale_for(shard));
  RingTraffic traffic;

  // 1. The header: all ranks agree on the shape, or all throw the same error.
  const int32_t header[kFields] = {narrow(sh.T_r, "shard length"), narrow(sh.Hq, "Hq"),
                                   narrow(sh.Hkv, "Hkv"), narrow(sh.D, "D")};
  std::vector<int32_t> headers(static_cast<size_t>(R) * kFields);
  comm.all_gather(std::span<const int32_t>(header), headers);
  traffic.control_sent = traffic.control_received = static_cast<size_t>(R - 1) * sizeof(header);
  check_headers(headers, R);

  // 2. Step 0: the own shard, causal.
  const size_t n = sh.kv();
  std::vector<Real> held(2 * n), incoming(2 * n);  // K then V of the shard held
  std::copy(k.begin(), k.end(), held.begin());
  std::copy(v.begin(), v.end(), held.begin() + static_cast<std::ptrdiff_t>(n));
  RowState st{std::vector<double>(sh.rows()), std::vector<double>(sh.rows()),
              std::vector<double>(sh.rows() * static_cast<size_t>(sh.D))};
  forward_step<Real>(sh, q, held.data(), held.data() + n, /*own=*/true, st);

  // 3. Steps 1 .. R - 1: at step s rank r receives shard r - s (while r - s >= 0) and
  // passes on the shard it held, shard r - s + 1, while rank r + 1 still needs it.
  for (int s = 1; s < R; ++s) {
    const bool sends = me + 1 < R && s <= me + 1, receives = me >= 1 && s <= me;
    exchange<Real>(comm, sends ? std::span<const Real>(held) : std::span<const Real>(),
                   sends ? me + 1 : -1, receives ? std::span<Real>(incoming) : std::span<Real>(),
                   receives ? me - 1 : -1);
    if (sends) {
      ++traffic.shards_sent;
      traffic.kv_sent += held.size() * sizeof(Real);
    }
    if (!receives) continue;
    ++traffic.shards_received;
    traffic.kv_received += incoming.size() * sizeof(Real);
    held.swap(incoming);
    forward_step<Real>(sh, q, held.data(), held.data() + n, /*own=*/false, st);
  }

  const size_t D = static_cast<size_t>(sh.D);
  for (size_t row = 0; row < sh.rows(); ++row) {
    for (size_t d = 0; d < D; ++d)
      out[row * D + d] = static_cast<Real>(st.acc[row * D + d] / st.l[row]);
    lse[row] = static_cast<Real>(st.m[row] + std::log(st.l[row]));
  }
  if (saved) *saved = {shard, sh.scale, me, R};
  return traffic;
}

template <typename Real>
RingTraffic dense_backward_context_parallel(Communicator& comm, const RingSaved& saved,
                                            std::span<const Real> q, std::span<const Real> k,
                                            std::span<const Real> v, std::span<const Real> out,
                                            std::span<const Real> lse,
                                            std::span<const Real> dout, std::span<Real> dq,
                                            std::span<Real> dk, std::span<Real> dv) {
  detail::check_backward_args<Real>("ring attention backward", "RingSaved",
                                    "dense_forward_context_parallel", saved.rank, saved.ranks, comm,
                                    saved.shard, q, k, v, out, lse, dout, dq, dk, dv);
  const int R = comm.size(), me = comm.rank();
  const attn::Layout& shard = saved.shard;
  const Shape sh = shape_of(shard, saved.scale);
  const size_t n = sh.kv(), D = static_cast<size_t>(sh.D);
  RingTraffic traffic;

  std::vector<double> delta(sh.rows());  // rowsum(dO * O), as backward_core computes it
  for (size_t row = 0; row < sh.rows(); ++row)
    delta[row] = attn::detail::dot(&dout[row * D], &out[row * D], sh.D);
  std::vector<double> dq_acc(dq.size(), 0.0);
  // The shard held: K, V, dK, dV in the element type as they travel, and its dK, dV
  // accumulators (this rank's contributions added to what arrived).
  std::vector<Real> held(4 * n), incoming(4 * n), grads_home(2 * n);
  std::vector<double> dkv(2 * n, 0.0);
  std::copy(k.begin(), k.end(), held.begin());
  std::copy(v.begin(), v.end(), held.begin() + static_cast<std::ptrdiff_t>(n));
  auto step = [&](bool own) {
    backward_step<Real>(sh, q, lse, dout, delta, held.data(), held.data() + n, own, dq_acc,
                        dkv.data(), dkv.data() + n);
    std::transform(dkv.begin(), dkv.end(), held.begin() + static_cast<std::ptrdiff_t>(2 * n),
                   [](double x) { return Real(x); });
  };
  auto write_own = [&](std::span<const Real> grads) {  // the shard's dK then dV, finished
    std::copy_n(grads.begin(), n, dk.begin());
    std::copy_n(grads.begin() + static_cast<std::ptrdiff_t>(n), n, dv.begin());
  };

  // Step 0: the own shard. The last rank's own shard is finished here: nobody later reads it.
  step(/*own=*/true);
  if (me == R - 1) write_own(std::span<const Real>(held).subspan(2 * n));

  // Steps 1 .. R - 1 as the forward's, the packet (K, V, dK, dV); besides, at step s >= 2,
  // rank R - 1 returns the gradient of the shard it finished at step s - 1 (shard R - s) to
  // its owner; step R is that return only (shard 0's).
  for (int s = 1; R > 1 && s <= R; ++s) {
    const bool forwards = me + 1 < R && s <= me + 1, receives = me >= 1 && s <= me;
    const bool returns = me == R - 1 && s >= 2, comes_home = me == R - s && s >= 2;
    std::span<const Real> send;
    int to = -1;
    if (forwards) {
      send = held, to = me + 1;
      ++traffic.shards_sent;
      traffic.kv_sent += held.size() * sizeof(Real);
    } else if (returns) {
      send = std::span<const Real>(held).subspan(2 * n), to = R - s;
      ++traffic.grads_returned;
      traffic.grad_sent += send.size() * sizeof(Real);
    }
    // `send` may be `held`: copy it out before `incoming` is swapped in.
    const std::vector<Real> outgoing(send.begin(), send.end());
    exchange<Real>(comm, std::span<const Real>(outgoing), to,
                   receives ? std::span<Real>(incoming) : std::span<Real>(),
                   receives ? me - 1 : -1,
                   comes_home ? std::span<Real>(grads_home) : std::span<Real>(),
                   comes_home ? R - 1 : -1);
    if (comes_home) {
      ++traffic.grads_received;
      traffic.grad_received += grads_home.size() * sizeof(Real);
      write_own(grads_home);
    }
    if (!receives) continue;
    ++traffic.shards_received;
    traffic.kv_received += incoming.size() * sizeof(Real);
    held.swap(incoming);
    std::transform(held.begin() + static_cast<std::ptrdiff_t>(2 * n), held.end(), dkv.begin(),
                   [](Real x) { return static_cast<double>(x); });
    step(/*own=*/false);
  }
  std::transform(dq_acc.begin(), dq_acc.end(), dq.begin(), [](double x) { return Real(x); });
  return traffic;
}

#define MOBA_INSTANTIATE(Real)                                                               \
  template RingTraffic dense_forward_context_parallel<Real>(                                 \
      Communicator&, const attn::Layout&, const attn::Options&, std::span<const Real>,       \
      std::span<const Real>, std::span<const Real>, std::span<Real>, std::span<Real>,        \
      RingSaved*);                                                                           \
  template RingTraffic dense_backward_context_parallel<Real>(                                \
      Communicator&, const RingSaved&, std::span<const Real>, std::span<const Real>,         \
      std::span<const Real>, std::span<const Real>, std::span<const Real>,                   \
      std::span<const Real>, std::span<Real>, std::span<Real>, std::span<Real>);
MOBA_INSTANTIATE(float)
MOBA_INSTANTIATE(double)
#undef MOBA_INSTANTIATE

}  // namespace moba::dist
