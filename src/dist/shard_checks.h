// The checks both context-parallel paths make (the MoBA block fetch, context_parallel.h;
// ring attention, ring_attention.h): the int32 header every rank all-gathers first, checked
// alike on every rank so that all fail with the same message; and, before the backward's
// first collective call, the saved state and every buffer's size. Internal to moba_dist;
// `what` prefixes the messages ("context parallel", "ring attention backward").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "attention/layout.h"
#include "core/error.h"
#include "dist/communicator.h"

namespace moba::dist::detail {

inline int32_t narrow_header(int64_t x, const char* what, const char* field) {
  MOBA_CHECK(x <= std::numeric_limits<int32_t>::max(), what, ": ", field, " ", x,
             " does not fit the int32 header");
  return static_cast<int32_t>(x);
}

// `all`: every rank's header of `fields` int32, rank by rank, field 0 the shard's length in
// tokens. check_headers: fields [first_same, fields) equal on every rank, else an error
// naming the first field two ranks disagree on; check_shard_lengths: equal shard lengths.
inline void check_headers(const char* what, const std::vector<int32_t>& all, int R, int fields,
                          int first_same, const char* const* names) {
  auto at = [&](int r, int f) { return all[static_cast<size_t>(r * fields + f)]; };
  for (int r = 1; r < R; ++r)
    for (int f = first_same; f < fields; ++f)
      MOBA_CHECK(at(r, f) == at(0, f), what, ": the ranks disagree on the ", names[f],
                 ": rank 0 has ", at(0, f), ", rank ", r, " has ", at(r, f));
}
inline void check_shard_lengths(const char* what, const std::vector<int32_t>& all, int R,
                                int fields) {
  for (int r = 1; r < R; ++r)
    MOBA_CHECK(all[static_cast<size_t>(r * fields)] == all[0], what, ": the shards differ in "
               "length: rank 0 holds ", all[0], " tokens, rank ", r, " holds ",
               all[static_cast<size_t>(r * fields)],
               " (rank r must hold positions [r T_r, (r + 1) T_r))");
}

// The block fetch's header (context_parallel.h; its GPU path, context_parallel_cuda.h): the
// shard's length, then what must be the same on every rank. Checked alike on every rank: the
// same fields agree, every shard is whole blocks, the shards are equally long.
enum BlockFetchField { kFetchTokens, kFetchBlockSize, kFetchTopK, kFetchQHeads, kFetchKvHeads,
                       kFetchHeadDim, kFetchFields };
inline std::array<int32_t, kFetchFields> block_fetch_header(int64_t T_r, int64_t S, int64_t K,
                                                            int64_t Hq, int64_t Hkv, int64_t D) {
  const char* what = "context parallel";
  return {narrow_header(T_r, what, "shard length"), narrow_header(S, what, "block size"),
          narrow_header(K, what, "top-k"), narrow_header(Hq, what, "Hq"),
          narrow_header(Hkv, what, "Hkv"), narrow_header(D, what, "D")};
}
inline void check_block_fetch_headers(const std::vector<int32_t>& all, int R) {
  static constexpr const char* kNames[kFetchFields] = {
      "shard length", "block size S", "top-k K", "query heads Hq", "kv heads Hkv", "head dim D"};
  check_headers("context parallel", all, R, kFetchFields, kFetchBlockSize, kNames);
  auto at = [&](int r, int f) { return all[static_cast<size_t>(r * kFetchFields + f)]; };
  const int32_t S = at(0, kFetchBlockSize);
  for (int r = 0; r < R; ++r)
    MOBA_CHECK(at(r, kFetchTokens) % S == 0, "context parallel: rank ", r, "'s shard of ",
               at(r, kFetchTokens), " tokens is not a whole number of MoBA blocks of S = ", S,
               " tokens (every rank must hold whole blocks)");
  check_shard_lengths("context parallel", all, R, kFetchFields);
}

inline void check_saved_size(const char* what, const char* name, size_t got, size_t want,
                             const attn::Layout& shard, const char* shape) {
  MOBA_CHECK(got == want, what, ": ", name, " has ", got, " elements, but the forward's shard of ",
             shard.tokens(), " tokens (Hq = ", shard.num_q_heads, ", Hkv = ", shard.num_kv_heads,
             ", D = ", shard.head_dim, ") needs ", shape, " = ", want);
}

// The forward's arguments: a valid layout of one sequence (the shard) and buffers of its
// sizes.
template <typename Real>
void check_forward_args(const char* what, const attn::Layout& shard, std::span<const Real> q,
                        std::span<const Real> k, std::span<const Real> v,
                        std::span<Real> out, std::span<Real> lse) {
  shard.validate();
  MOBA_CHECK(shard.batch() == 1, what, ": a rank's shard is part of one sequence, got a layout "
             "of ", shard.batch(), " sequences");
  attn::check_size("q", q.size(), shard.q_elems());
  attn::check_size("k", k.size(), shard.kv_elems());
  attn::check_size("v", v.size(), shard.kv_elems());
  attn::check_size("out", out.size(), shard.q_elems());
  attn::check_size("lse", lse.size(), shard.lse_elems());
}

// saved_rank / saved_ranks: the forward's (ranks 0 = the saved state was never filled);
// saved_type and forward name the types the message tells the caller to pass.
template <typename Real>
void check_backward_args(const char* what, const char* saved_type, const char* forward,
                         int saved_rank, int saved_ranks, const Communicator& comm,
                         const attn::Layout& shard, std::span<const Real> q,
                         std::span<const Real> k, std::span<const Real> v,
                         std::span<const Real> out, std::span<const Real> lse,
                         std::span<const Real> dout, std::span<Real> dq, std::span<Real> dk,
                         std::span<Real> dv) {
  MOBA_CHECK(saved_ranks > 0, what, ": the saved state is empty; pass the ", saved_type,
             " that ", forward, " filled on this rank");
  const int R = comm.size(), me = comm.rank();
  MOBA_CHECK(saved_ranks == R && saved_rank == me, what, ": the saved state is rank ", saved_rank,
             "'s of a group of ", saved_ranks, ", but this is rank ", me, " of ", R);
  const size_t qn = shard.q_elems(), kvn = shard.kv_elems();
  check_saved_size(what, "q", q.size(), qn, shard, "T_r x Hq x D");
  check_saved_size(what, "k", k.size(), kvn, shard, "T_r x Hkv x D");
  check_saved_size(what, "v", v.size(), kvn, shard, "T_r x Hkv x D");
  check_saved_size(what, "out", out.size(), qn, shard, "T_r x Hq x D");
  check_saved_size(what, "lse", lse.size(), shard.lse_elems(), shard, "T_r x Hq");
  check_saved_size(what, "dout", dout.size(), qn, shard, "T_r x Hq x D");
  check_saved_size(what, "dq", dq.size(), qn, shard, "T_r x Hq x D");
  check_saved_size(what, "dk", dk.size(), kvn, shard, "T_r x Hkv x D");
  check_saved_size(what, "dv", dv.size(), kvn, shard, "T_r x Hkv x D");
}

}  // namespace moba::dist::detail
