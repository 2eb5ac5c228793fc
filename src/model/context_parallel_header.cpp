#include "model/context_parallel_header.h"

#include <algorithm>
#include <limits>
#include <span>
#include <vector>

#include "core/error.h"

namespace moba::model {

int64_t check_context_parallel_shards(dist::Communicator& comm, const Batch& batch,
                                      int64_t local_counted, bool forced, bool any_moba,
                                      int64_t block_size, int64_t seq_len) {
  const int R = comm.size();
  auto narrow = [](int64_t x) {
    return static_cast<int32_t>(std::min<int64_t>(x, std::numeric_limits<int32_t>::max()));
  };
  // Every rank's header: B, T_r, documents in the shard, force_selections set, counted.
  enum { kB, kT, kDocs, kForced, kCounted, kFields };
  const int32_t header[kFields] = {narrow(batch.B), narrow(batch.T),
                                   narrow(static_cast<int64_t>(batch.boundaries().size()) - 1),
                                   forced ? 1 : 0, narrow(local_counted)};
  std::vector<int32_t> all(static_cast<size_t>(R) * kFields);
  comm.all_gather_host(std::span<const int32_t>(header), all);
  auto at = [&](int r, int f) {
    return static_cast<int64_t>(all[static_cast<size_t>(r * kFields + f)]);
  };
  for (int r = 0; r < R; ++r) {
    MOBA_CHECK(at(r, kB) == 1, "context parallel: rank ", r, "'s batch holds B = ", at(r, kB),
               " rows; each rank holds one row, its shard of one sequence");
    MOBA_CHECK(at(r, kDocs) == 1, "context parallel: rank ", r, "'s shard holds ",
               at(r, kDocs), " documents (cu_seqlens); a shard is part of one sequence: "
               "packed documents are not supported");
    MOBA_CHECK(at(r, kForced) == 0, "context parallel: rank ", r, " set force_selections, "
               "which is not supported under context parallel");
    MOBA_CHECK(at(r, kT) == at(0, kT), "context parallel: the shards differ in length: rank 0 "
               "holds ", at(0, kT), " tokens, rank ", r, " holds ", at(r, kT),
               " (rank r must hold positions [r T_r, (r + 1) T_r))");
  }
  const int64_t T_r = at(0, kT), S = block_size;
  MOBA_CHECK(!any_moba || T_r % S == 0, "context parallel: a shard of T_r = ", T_r,
             " tokens is not a whole number of MoBA blocks of S = ", S,
             " tokens (every rank must hold whole blocks)");
  MOBA_CHECK(R * T_r <= seq_len, "context parallel: the whole sequence, R x T_r = ", R,
             " x ", T_r, " = ", R * T_r, " tokens, is longer than model.seq_len = ",
             seq_len);
  int64_t counted = 0;
  for (int r = 0; r < R; ++r) counted += at(r, kCounted);
  MOBA_CHECK(counted > 0, "context parallel: the loss_mask is all zeros on every rank: no "
             "position to average the loss over");
  return counted;
}


}  // namespace moba::model
