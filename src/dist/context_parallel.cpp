#include "dist/context_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "attention/attend_row.h"
#include "attention/gate.h"
#include "core/error.h"
#include "dist/shard_checks.h"

namespace moba::dist {
namespace {

struct KeyRange {
  int64_t begin, end;  // positions in the whole sequence, end exclusive
};

// A query row's keys in moba_forward's order: each selected block of `sel` (ids in the
// whole sequence) in full, the current one up to the query at position pos.
void key_ranges(std::span<const int32_t> sel, int64_t S, int64_t pos,
                std::vector<KeyRange>& ranges) {
  ranges.clear();
  for (int32_t j : sel)
    if (j >= 0) ranges.push_back({j * S, std::min((j + 1) * S, pos + 1)});
}

// slot_of[id]: the index of (block, kv head) id among the fetched ids, -1 when not fetched.
std::vector<int32_t> slots_of(const std::vector<int32_t>& ids, int64_t blocks, int64_t Hkv) {
  std::vector<int32_t> slot_of(static_cast<size_t>(blocks * Hkv), -1);
  for (size_t n = 0; n < ids.size(); ++n)
    slot_of[static_cast<size_t>(ids[n])] = static_cast<int32_t>(n);
  return slot_of;
}

// A buffer of the backward against the shard the forward saw.
}  // namespace

int64_t context_parallel_shard_tokens(int64_t T, int ranks, int64_t block_size) {
  MOBA_CHECK(ranks >= 1 && block_size >= 1, "context parallel: need R >= 1 ranks and S >= 1, "
             "got R = ", ranks, ", S = ", block_size);
  MOBA_CHECK(T >= 1 && T % (ranks * block_size) == 0, "context parallel: a sequence of T = ",
             T, " tokens cannot be split over R = ", ranks, " ranks in whole blocks of S = ",
             block_size, ": T must be a multiple of R x S = ", ranks * block_size);
  return T / ranks;
}

template <typename Real>
ContextParallelTraffic moba_forward_context_parallel(
    Communicator& comm, const attn::Layout& shard, const attn::MobaConfig& cfg,
    const attn::Options& opt, std::span<const Real> q, std::span<const Real> k,
    std::span<const Real> v, std::span<Real> out, std::span<Real> lse,
    ContextParallelSaved<Real>* saved) {
  cfg.validate();
  detail::check_forward_args<Real>("context parallel", shard, q, k, v, out, lse);
  const double scale = opt.scale_for(shard);
  const int R = comm.size(), me = comm.rank();
  const auto Rz = static_cast<size_t>(R);
  const int64_t T_r = shard.tokens(), S = cfg.block_size, K = cfg.top_k;
  const int64_t Hq = shard.num_q_heads, Hkv = shard.num_kv_heads, D = shard.head_dim;
  ContextParallelTraffic traffic;

  // 1. The header: all ranks agree on the shape, or all throw the same error.
  const auto header = detail::block_fetch_header(T_r, S, K, Hq, Hkv, D);
  std::vector<int32_t> headers(Rz * header.size());
  comm.all_gather(std::span<const int32_t>(header), headers);
  traffic.control_sent = traffic.control_received = (Rz - 1) * sizeof(header);
  detail::check_block_fetch_headers(headers, R);
  const int64_t per_rank = T_r / S, blocks = per_rank * R;  // blocks of a shard, of all
  MOBA_CHECK(blocks * Hkv <= std::numeric_limits<int32_t>::max(), "context parallel: ",
             blocks, " blocks x ", Hkv, " kv heads overflow the int32 block ids");
  const int64_t pos0 = me * T_r;  // this shard's first position

  // 2. Block means: each rank's own, gathered in rank order = block order.
  const std::vector<float> mine = attn::block_means(shard, cfg, k);  // (per_rank, Hkv, D)
  std::vector<float> means(mine.size() * Rz);                        // (blocks, Hkv, D)
  comm.all_gather(std::span<const float>(mine), means);
  traffic.means_sent = traffic.means_received = (Rz - 1) * mine.size() * sizeof(float);

  // 3. The gate of this shard's queries.
  std::vector<int32_t> sel(shard.lse_elems() * static_cast<size_t>(K));  // (T_r, Hq, K)
  attn::moba_gate_part(shard, cfg, pos0, q, std::span<const float>(means), sel, pos0);

  // 4. The (block, kv head) pairs selected on other ranks, id block * Hkv + kv head. Owners
  // hold consecutive blocks, so the ascending ids are grouped by owner in rank order.
  std::vector<char> wanted(static_cast<size_t>(blocks * Hkv), 0);
  for (int64_t i = 0; i < T_r; ++i)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t s = 0; s < K; ++s) {
        const int32_t j = sel[static_cast<size_t>((i * Hq + h) * K + s)];
        if (j >= 0 && j / per_rank != me)
          wanted[static_cast<size_t>(j * Hkv + h / shard.group())] = 1;
      }
  std::vector<int32_t> ids;
  std::vector<size_t> want(Rz, 0);  // ids per owner
  for (int64_t id = 0; id < blocks * Hkv; ++id)
    if (wanted[static_cast<size_t>(id)]) {
      ids.push_back(static_cast<int32_t>(id));
      ++want[static_cast<size_t>(id / Hkv / per_rank)];
    }
  std::vector<int32_t> want32(Rz), wants(Rz * Rz);  // wants: (asking rank, owner)
  for (size_t p = 0; p < Rz; ++p) want32[p] = static_cast<int32_t>(want[p]);
  comm.all_gather(std::span<const int32_t>(want32), wants);
  std::vector<size_t> asked_by(Rz);
  for (size_t p = 0; p < Rz; ++p) asked_by[p] = static_cast<size_t>(wants[p * Rz + me]);
  std::vector<int32_t> asked(std::accumulate(asked_by.begin(), asked_by.end(), size_t{0}));
  comm.all_to_all_v(std::span<const int32_t>(ids), want, asked, asked_by);
  traffic.control_sent += (Rz - 1) * Rz * sizeof(int32_t) + ids.size() * sizeof(int32_t);
  traffic.control_received += (Rz - 1) * Rz * sizeof(int32_t) + asked.size() * sizeof(int32_t);

  // 5. Serve the requests: per (block, kv head), its S key rows then its S value rows.
  const int64_t unit = 2 * S * D;
  std::vector<Real> reply(asked.size() * static_cast<size_t>(unit));
  for (size_t n = 0; n < asked.size(); ++n) {
    const int64_t block = asked[n] / Hkv, kvh = asked[n] % Hkv, local = block - pos0 / S;
    MOBA_CHECK(local >= 0 && local < per_rank, "context parallel: rank ", me,
               " was asked for block ", block, ", which it does not hold");
    Real* dst = &reply[n * static_cast<size_t>(unit)];
    for (int64_t s = 0; s < S; ++s) {
      const size_t row = static_cast<size_t>(((local * S + s) * Hkv + kvh) * D);
      std::copy_n(&k[row], D, dst + s * D);
      std::copy_n(&v[row], D, dst + (S + s) * D);
    }
  }
  std::vector<size_t> reply_counts(Rz), fetch_counts(Rz);
  for (size_t p = 0; p < Rz; ++p) {
    reply_counts[p] = asked_by[p] * static_cast<size_t>(unit);
    fetch_counts[p] = want[p] * static_cast<size_t>(unit);
  }
  std::vector<Real> fetched(ids.size() * static_cast<size_t>(unit));  // in ids' order
  comm.all_to_all_v(std::span<const Real>(reply), reply_counts, std::span<Real>(fetched),
                    fetch_counts);
  traffic.blocks_fetched = static_cast<int64_t>(ids.size());
  traffic.blocks_served = static_cast<int64_t>(asked.size());
  traffic.kv_received = fetched.size() * sizeof(Real);
  traffic.kv_sent = reply.size() * sizeof(Real);

  // 6. Attention: moba_forward's ranges (each selected block, the current one cut at the
  // query) and its row arithmetic; keys before the shard come from the fetched blocks.
  const std::vector<int32_t> slot_of = slots_of(ids, blocks, Hkv);
  std::vector<KeyRange> ranges;
  std::vector<double> s, acc;  // attend_row's scratch
  for (int64_t i = 0; i < T_r; ++i) {
    const int64_t pos = pos0 + i;
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kvh = h / shard.group();
      key_ranges(std::span<const int32_t>(sel).subspan(static_cast<size_t>((i * Hq + h) * K),
                                                        static_cast<size_t>(K)),
                 S, pos, ranges);
      // Position p's row: in the shard, or row p % S of its fetched block (K, then V).
      auto row = [&](std::span<const Real> local, int64_t p, int64_t half) -> const Real* {
        if (p >= pos0) return &local[static_cast<size_t>(((p - pos0) * Hkv + kvh) * D)];
        const int32_t n = slot_of[static_cast<size_t>((p / S) * Hkv + kvh)];
        return &fetched[static_cast<size_t>(n * unit + (half * S + p % S) * D)];
      };
      const size_t qrow = static_cast<size_t>((i * Hq + h) * D);
      lse[static_cast<size_t>(i * Hq + h)] = static_cast<Real>(attn::detail::attend_row(
          &q[qrow], D, scale, ranges, [&](int64_t p) { return row(k, p, 0); },
          [&](int64_t p) { return row(v, p, 1); }, s, acc, &out[qrow]));
    }
  }
  if (saved) {
    saved->shard = shard;
    saved->cfg = cfg;
    saved->scale = scale;
    saved->rank = me;
    saved->ranks = R;
    saved->sel = std::move(sel);
    saved->fetched_ids = std::move(ids);
    saved->fetched_per_owner = std::move(want);
    saved->fetched = std::move(fetched);
    saved->served_ids = std::move(asked);
    saved->served_per_rank = std::move(asked_by);
  }
  return traffic;
}

// The forward's row loop again, with backward_core's arithmetic (attention_cpu.cpp): per kv
// head, per query in order, per query head of its group, per key of the row's ranges in
// order. dq is then bit for bit the whole sequence's; so are dk, dv of keys only this rank's
// queries read.
template <typename Real>
ContextParallelTraffic moba_backward_context_parallel(
    Communicator& comm, const ContextParallelSaved<Real>& saved, std::span<const Real> q,
    std::span<const Real> k, std::span<const Real> v, std::span<const Real> out,
    std::span<const Real> lse, std::span<const Real> dout, std::span<Real> dq,
    std::span<Real> dk, std::span<Real> dv) {
  detail::check_backward_args<Real>("context parallel backward", "ContextParallelSaved",
                                    "moba_forward_context_parallel", saved.rank, saved.ranks, comm,
                                    saved.shard, q, k, v, out, lse, dout, dq, dk, dv);
  const int R = comm.size(), me = comm.rank();
  const attn::Layout& shard = saved.shard;
  const auto Rz = static_cast<size_t>(R);
  const int64_t T_r = shard.tokens(), S = saved.cfg.block_size, K = saved.cfg.top_k;
  const int64_t Hq = shard.num_q_heads, Hkv = shard.num_kv_heads, D = shard.head_dim;
  const int64_t G = shard.group(), per_rank = T_r / S, blocks = per_rank * R, unit = 2 * S * D;
  const int64_t pos0 = me * T_r;
  const std::vector<int32_t>& ids = saved.fetched_ids;
  const std::vector<int32_t>& asked = saved.served_ids;
  MOBA_CHECK(saved.sel.size() == shard.lse_elems() * static_cast<size_t>(K) &&
                 saved.fetched.size() == ids.size() * static_cast<size_t>(unit) &&
                 saved.fetched_per_owner.size() == Rz && saved.served_per_rank.size() == Rz,
             "context parallel backward: the saved state is inconsistent (its selection, "
             "fetched K/V or counts do not match its shard)");
  const double scale = saved.scale;

  std::vector<double> dq_acc(dq.size(), 0.0), dk_acc(dk.size(), 0.0), dv_acc(dv.size(), 0.0);
  std::vector<double> dfetch(saved.fetched.size(), 0.0);  // as `fetched`: S dK rows, S dV rows
  const std::vector<int32_t> slot_of = slots_of(ids, blocks, Hkv);
  std::vector<KeyRange> ranges;
  for (int64_t kvh = 0; kvh < Hkv; ++kvh)
    for (int64_t i = 0; i < T_r; ++i) {
      const int64_t pos = pos0 + i;
      for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
        key_ranges(std::span<const int32_t>(saved.sel).subspan(
                       static_cast<size_t>((i * Hq + h) * K), static_cast<size_t>(K)),
                   S, pos, ranges);
        const size_t qrow = static_cast<size_t>((i * Hq + h) * D);
        const Real* qr = &q[qrow];
        const Real* dor = &dout[qrow];
        const double delta = attn::detail::dot(dor, &out[qrow], D);  // rowsum(dO * O)
        const double row_lse = static_cast<double>(lse[static_cast<size_t>(i * Hq + h)]);
        for (const KeyRange& r : ranges)
          for (int64_t p = r.begin; p < r.end; ++p) {
            // Key p's K and V rows and their gradients' accumulators: in the shard, or row
            // p % S of its fetched pair.
            const Real *kr, *vr;
            double *dkr, *dvr;
            if (p >= pos0) {
              const size_t row = static_cast<size_t>(((p - pos0) * Hkv + kvh) * D);
              kr = &k[row], vr = &v[row], dkr = &dk_acc[row], dvr = &dv_acc[row];
            } else {
              const int32_t n = slot_of[static_cast<size_t>((p / S) * Hkv + kvh)];
              MOBA_CHECK(n >= 0, "context parallel backward: block ", p / S, " of kv head ",
                         kvh, " is selected but was not fetched (saved state inconsistent)");
              const size_t krow = static_cast<size_t>(n * unit + (p % S) * D);
              const size_t vrow = krow + static_cast<size_t>(S * D);
              kr = &saved.fetched[krow], vr = &saved.fetched[vrow];
              dkr = &dfetch[krow], dvr = &dfetch[vrow];
            }
            const double pr = std::exp(scale * attn::detail::dot(qr, kr, D) - row_lse);
            const double dp = attn::detail::dot(dor, vr, D);
            const double ds = pr * (dp - delta);
            for (int64_t d = 0; d < D; ++d) {
              dvr[d] += pr * static_cast<double>(dor[d]);
              dq_acc[qrow + d] += scale * ds * static_cast<double>(kr[d]);
              dkr[d] += scale * ds * static_cast<double>(qr[d]);
            }
          }
      }
    }

  // The reverse of the forward's answer: the fetched pairs' gradients go back to their
  // owners, in the element type, the served pairs' come in (by asking rank, then in its
  // request order, as they were served).
  std::vector<Real> back(dfetch.size());
  std::transform(dfetch.begin(), dfetch.end(), back.begin(), [](double x) { return Real(x); });
  std::vector<size_t> back_counts(Rz), in_counts(Rz);
  for (size_t p = 0; p < Rz; ++p) {
    back_counts[p] = saved.fetched_per_owner[p] * static_cast<size_t>(unit);
    in_counts[p] = saved.served_per_rank[p] * static_cast<size_t>(unit);
  }
  std::vector<Real> incoming(asked.size() * static_cast<size_t>(unit));
  comm.all_to_all_v(std::span<const Real>(back), back_counts, std::span<Real>(incoming),
                    in_counts);
  for (size_t n = 0; n < asked.size(); ++n) {
    const int64_t block = asked[n] / Hkv, kvh = asked[n] % Hkv, local = block - pos0 / S;
    MOBA_CHECK(local >= 0 && local < per_rank, "context parallel backward: rank ", me,
               " received gradients of block ", block, ", which it does not hold");
    const Real* src = &incoming[n * static_cast<size_t>(unit)];
    for (int64_t s = 0; s < S; ++s) {
      const size_t row = static_cast<size_t>(((local * S + s) * Hkv + kvh) * D);
      for (int64_t d = 0; d < D; ++d) {
        dk_acc[row + d] += static_cast<double>(src[s * D + d]);
        dv_acc[row + d] += static_cast<double>(src[(S + s) * D + d]);
      }
    }
  }
  std::transform(dq_acc.begin(), dq_acc.end(), dq.begin(), [](double x) { return Real(x); });
  std::transform(dk_acc.begin(), dk_acc.end(), dk.begin(), [](double x) { return Real(x); });
  std::transform(dv_acc.begin(), dv_acc.end(), dv.begin(), [](double x) { return Real(x); });

  ContextParallelTraffic traffic;
  traffic.blocks_fetched = static_cast<int64_t>(ids.size());
  traffic.blocks_served = static_cast<int64_t>(asked.size());
  traffic.kv_sent = back.size() * sizeof(Real);
  traffic.kv_received = incoming.size() * sizeof(Real);
  return traffic;
}

#define MOBA_INSTANTIATE(Real)                                                               \
  template ContextParallelTraffic moba_forward_context_parallel<Real>(                       \
      Communicator&, const attn::Layout&, const attn::MobaConfig&, const attn::Options&,     \
      std::span<const Real>, std::span<const Real>, std::span<const Real>, std::span<Real>,  \
      std::span<Real>, ContextParallelSaved<Real>*);                                         \
  template ContextParallelTraffic moba_backward_context_parallel<Real>(                      \
      Communicator&, const ContextParallelSaved<Real>&, std::span<const Real>,               \
      std::span<const Real>, std::span<const Real>, std::span<const Real>,                   \
      std::span<const Real>, std::span<const Real>, std::span<Real>, std::span<Real>,        \
      std::span<Real>);
MOBA_INSTANTIATE(float)
MOBA_INSTANTIATE(double)
#undef MOBA_INSTANTIATE

}  // namespace moba::dist
