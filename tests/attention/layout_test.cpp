// Invalid arguments are rejected at the API edge with a message naming the problem.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "attention/attention_cpu.h"
#include "core/error.h"
#include "core/random.h"

namespace moba::attn {
namespace {

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected moba::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

TEST(Layout, BatchedBuildsEqualOffsets) {
  const Layout l = Layout::batched(3, 5, 4, 2, 8);
  EXPECT_EQ(l.cu_seqlens, (std::vector<int64_t>{0, 5, 10, 15}));
  EXPECT_EQ(l.tokens(), 15);
  EXPECT_EQ(l.group(), 2);
  EXPECT_EQ(l.q_elems(), 15u * 4 * 8);
  EXPECT_EQ(l.kv_elems(), 15u * 2 * 8);
}

TEST(Layout, RejectsHqNotMultipleOfHkv) {
  expect_error([] { Layout::batched(1, 8, 6, 4, 8); }, "multiple of key/value heads");
}

TEST(Layout, RejectsNonIncreasingCuSeqlens) {
  expect_error([] { Layout::varlen({0, 5, 5, 9}, 2, 2, 4); }, "strictly increasing");
  expect_error([] { Layout::varlen({0, 5, 3}, 2, 2, 4); }, "strictly increasing");
  expect_error([] { Layout::varlen({1, 5}, 2, 2, 4); }, "start at 0");
  expect_error([] { Layout::varlen({0}, 2, 2, 4); }, "at least 2 offsets");
}

TEST(Layout, RejectsEmptyShapes) {
  expect_error([] { Layout::batched(1, 0, 2, 2, 4); }, "sequence length T");
  expect_error([] { Layout::batched(0, 4, 2, 2, 4); }, "batch size B");
  expect_error([] { Layout::batched(1, 4, 2, 2, 0); }, "head dim D");
  expect_error([] { Layout::batched(1, 4, 0, 1, 4); }, "query heads Hq");
}

// The GPU kernels' size limits (check_cuda_sizes), known to CPU builds: offsets are 64-bit,
// so the old blanket N * Hq * max(K, D) < 2^31 is gone; what remains is what the kernels
// keep in 32 bits (token indices, row ids, gather entries, tile counts) and grid limits.
TEST(CudaSizes, AcceptsLongContexts) {
  const MobaConfig moba{512, 3};
  // The old limit exactly (N * Hq * D = 2^31) and 2M tokens at H 16, D 128: training.
  for (int64_t N : {int64_t{1} << 20, int64_t{2097152}}) {
    const Layout l = Layout::batched(1, N, 16, 16, 128);
    EXPECT_NO_THROW(check_cuda_sizes(l, nullptr)) << N;
    EXPECT_NO_THROW(check_cuda_sizes(l, &moba)) << N;
  }
  // A 10M-token prefill with grouped-query attention (Hq 8, Hkv 2).
  EXPECT_NO_THROW(check_cuda_sizes(Layout::batched(1, 10000000, 8, 2, 128), &moba));
  // Packed: 65535 sequences (gridDim.z's limit) of 64 tokens.
  EXPECT_NO_THROW(check_cuda_sizes(Layout::batched(65535, 64, 16, 4, 128), &moba));
  // K = 16 at 8M tokens, H 16: the gather entries (N * Hq * 15 < 2^31) still fit.
  const MobaConfig k16{512, 16};
  EXPECT_NO_THROW(check_cuda_sizes(Layout::batched(1, 8000000, 16, 16, 128), &k16));
}

TEST(CudaSizes, RefusesWhatTheKernelsCannotIndex) {
  // Tokens: cu_seqlens and token indices are int32.
  expect_error([] { check_cuda_sizes(Layout::batched(1, int64_t{1} << 31, 1, 1, 64), nullptr); },
               "N = 2147483648 tokens");
  // (token, head) row ids: N * Hq near 2^31 (128 rows of margin past a tile's end).
  expect_error([] { check_cuda_sizes(Layout::batched(1, int64_t{1} << 27, 16, 2, 128), nullptr); },
               "N * Hq = 134217728 * 16");
  expect_error([] { check_cuda_sizes(Layout::batched(1, (int64_t{1} << 26) - 64, 32, 1, 64), nullptr); },
               "(N + 128) * Hq must be < 2^31");
  // Gather entries: MoBA refuses what dense attention accepts.
  const Layout l = Layout::batched(1, 10000000, 16, 16, 128);
  EXPECT_NO_THROW(check_cuda_sizes(l, nullptr));
  const MobaConfig k1{512, 1}, k16{512, 16};
  EXPECT_NO_THROW(check_cuda_sizes(l, &k1));  // K = 1: no past slot
  expect_error([&] { check_cuda_sizes(l, &k16); },
               "N * Hq * (K - 1) = 10000000 * 16 * 15 gather entries");
  // Sequences beyond gridDim.z.
  expect_error([] { check_cuda_sizes(Layout::batched(65536, 4, 2, 2, 64), nullptr); },
               "65536 sequences in one batch");
  // Heads beyond a grid dimension.
  expect_error([] { check_cuda_sizes(Layout::batched(1, 4, 70000, 70000, 64), nullptr); },
               "Hq = 70000, Hkv = 70000 heads");
  // Tile counts: 65535 sequences, one of them long.
  std::vector<int64_t> cu(65536);
  for (size_t b = 1; b < cu.size(); ++b) cu[b] = static_cast<int64_t>(b);
  cu.back() = cu[cu.size() - 2] + 40000;
  expect_error([&] { check_cuda_sizes(Layout::varlen(cu, 64, 8, 64), nullptr); },
               "B * Hq * ceil(T / 64) = 65535 * 64 * 625 query tiles (T = 40000");
  // Bytes beyond int64 (an absurd head dim).
  expect_error([] { check_cuda_sizes(Layout::batched(1, 2, 1, 1, int64_t{1} << 60), nullptr); },
               "more than 2^62");
}

TEST(MobaConfig, RejectsZeroBlockSizeAndTopK) {
  expect_error([] { MobaConfig{0, 3}.validate(); }, "block size S");
  expect_error([] { MobaConfig{4, 0}.validate(); }, "top-k K");
  const Layout l = Layout::batched(1, 8, 2, 2, 4);
  const auto q = random_normal<float>(l.q_elems(), 1), k = random_normal<float>(l.kv_elems(), 2);
  expect_error([&] { moba_gate<float>(l, MobaConfig{0, 2}, q, k); }, "block size S");
  expect_error([&] { moba_gate<float>(l, MobaConfig{4, 0}, q, k); }, "top-k K");
}

TEST(Attention, RejectsMismatchedShapes) {
  const Layout l = Layout::batched(1, 8, 4, 2, 4);
  auto q = random_normal<float>(l.q_elems(), 1), k = random_normal<float>(l.kv_elems(), 2);
  auto v = random_normal<float>(l.kv_elems(), 3);
  std::vector<float> out(l.q_elems()), lse(l.lse_elems());
  std::vector<float> short_k(l.kv_elems() - 1), big_out(l.q_elems() + 4);
  expect_error([&] { cpu::dense_forward<float>(l, {}, q, short_k, v, out, lse); }, "tensor k");
  expect_error([&] { cpu::dense_forward<float>(l, {}, q, k, v, big_out, lse); }, "tensor out");
  // A layout with more kv heads than the buffers were made for.
  const Layout l2 = Layout::batched(1, 8, 4, 4, 4);
  expect_error([&] { cpu::dense_forward<float>(l2, {}, q, k, v, out, lse); }, "tensor k");
  std::vector<float> dq(l.q_elems()), dk(l.kv_elems()), dv(l.kv_elems() + 1);
  expect_error([&] { cpu::dense_backward<float>(l, {}, q, k, v, out, lse, out, dq, dk, dv); },
               "tensor dv");
  expect_error([&] { moba_gate<float>(l, MobaConfig{4, 2}, std::span<const float>(q).first(5), k); },
               "tensor q");
}

TEST(Attention, RejectsBadSoftmaxScale) {
  const Layout l = Layout::batched(1, 4, 1, 1, 4);
  auto q = random_normal<float>(l.q_elems(), 1);
  std::vector<float> out(l.q_elems()), lse(l.lse_elems());
  expect_error([&] { cpu::dense_forward<float>(l, Options{-1.0}, q, q, q, out, lse); },
               "softmax scale");
}

TEST(Attention, RejectsSelectionThatMoBACannotMake) {
  const Layout l = Layout::batched(1, 8, 1, 1, 4);
  const MobaConfig cfg{2, 2};
  auto q = random_normal<float>(l.q_elems(), 1);
  std::vector<float> out(l.q_elems()), lse(l.lse_elems());
  Selection sel = moba_gate<float>(l, cfg, q, q);
  Selection missing_current = sel;
  missing_current.at(7, 0)[0] = 0;  // token 7 is in block 3; {0, 2} lacks it
  missing_current.at(7, 0)[1] = 2;
  expect_error([&] { cpu::moba_forward<float>(l, cfg, missing_current, {}, q, q, q, out, lse); },
               "does not contain its current block 3");
  Selection future = sel;
  future.at(1, 0)[1] = 3;  // token 1 is in block 0: block 3 is in its future
  expect_error([&] { cpu::moba_forward<float>(l, cfg, future, {}, q, q, q, out, lse); },
               "<= the current block 0");
  Selection wrong_size = sel;
  wrong_size.blocks.pop_back();
  expect_error([&] { cpu::moba_forward<float>(l, cfg, wrong_size, {}, q, q, q, out, lse); },
               "tensor selection");
}

}  // namespace
}  // namespace moba::attn
