// Decode attention against the full-sequence reference: sequences of different lengths are
// appended to a KV cache one token at a time (or in chunks), and decoding the last token
// must give that row of cpu::dense_forward / cpu::moba_forward(moba_gate(...)) on the whole
// sequences, the gate's selection, and gate.h's block means bit for bit.
#include "attention/decode.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/gate.h"
#include "core/error.h"
#include "core/random.h"

namespace moba::attn {
namespace {

struct Shape {
  int64_t Hq, Hkv, D, S, K;
  std::vector<int64_t> lens;
};

std::string name_of(const Shape& s) {
  return "Hq=" + std::to_string(s.Hq) + " Hkv=" + std::to_string(s.Hkv) + " S=" +
         std::to_string(s.S) + " K=" + std::to_string(s.K);
}

// Whole-sequence reference of a packed batch of sequences.
template <typename Real>
struct Reference {
  Layout layout;
  std::vector<Real> q, k, v, out, lse;
  Selection sel;
  std::vector<float> means;
};

template <typename Real>
Reference<Real> reference(const Shape& s, bool moba, uint64_t seed, bool equal_keys = false) {
  std::vector<int64_t> cu{0};
  for (int64_t n : s.lens) cu.push_back(cu.back() + n);
  Reference<Real> r;
  r.layout = Layout::varlen(cu, s.Hq, s.Hkv, s.D);
  r.q = random_normal<Real>(r.layout.q_elems(), seed);
  r.k = random_normal<Real>(r.layout.kv_elems(), seed + 1);
  r.v = random_normal<Real>(r.layout.kv_elems(), seed + 2);
  if (equal_keys)  // every key the same: every block mean equal, every gate score a tie
    for (size_t i = 0; i < r.k.size(); ++i) r.k[i] = r.k[i % static_cast<size_t>(s.Hkv * s.D)];
  r.out.resize(r.layout.q_elems());
  r.lse.resize(r.layout.lse_elems());
  const MobaConfig cfg{s.S, s.K};
  if (moba) {
    r.sel = moba_gate<Real>(r.layout, cfg, r.q, r.k);
    cpu::moba_forward<Real>(r.layout, cfg, r.sel, {}, r.q, r.k, r.v, r.out, r.lse);
  } else {
    cpu::dense_forward<Real>(r.layout, {}, r.q, r.k, r.v, r.out, r.lse);
  }
  r.means = block_means<Real>(r.layout, cfg, r.k);
  return r;
}

template <typename Real>
double tolerance() {
  return std::is_same_v<Real, float> ? 1e-5 : 1e-12;
}

// Appends sequence b's tokens [from, to) of the reference to the cache.
template <typename Real>
void append_rows(KVCache<Real>& cache, const Reference<Real>& r, int64_t b, int64_t from,
                 int64_t to) {
  const int64_t row = r.layout.num_kv_heads * r.layout.head_dim;
  const int64_t t0 = r.layout.seq_begin(b) + from;
  cache.append(b, to - from,
               std::span<const Real>(r.k).subspan(t0 * row, (to - from) * row),
               std::span<const Real>(r.v).subspan(t0 * row, (to - from) * row));
}

// Decodes the last token of every sequence and compares with the reference rows; checks
// every full block's mean bit for bit.
template <typename Real>
void decode_and_compare(const Shape& s, bool moba, const KVCache<Real>& cache,
                        const Reference<Real>& r, const std::string& where) {
  const int64_t B = cache.batch(), Hq = s.Hq, D = s.D, K = s.K;
  std::vector<Real> q(B * Hq * D), out(q.size()), lse(B * Hq);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t tok = r.layout.seq_begin(b) + cache.len(b) - 1;
    std::copy_n(&r.q[tok * Hq * D], Hq * D, &q[b * Hq * D]);
  }
  std::vector<int32_t> sel;
  if (moba)
    decode_moba<Real>(cache, Hq, MobaConfig{s.S, s.K}, {}, q, out, lse, &sel);
  else
    decode_dense<Real>(cache, Hq, {}, q, out, lse);
  const double tol = tolerance<Real>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = cache.len(b) - 1, tok = r.layout.seq_begin(b) + t;
    const std::string at = where + ", sequence " + std::to_string(b) + ", position " +
                           std::to_string(t);
    for (int64_t h = 0; h < Hq; ++h) {
      for (int64_t d = 0; d < D; ++d) {
        const double want = r.out[(tok * Hq + h) * D + d], got = out[(b * Hq + h) * D + d];
        ASSERT_NEAR(got, want, tol * (1.0 + std::abs(want))) << at << ", head " << h;
      }
      const double want_lse = r.lse[tok * Hq + h];
      ASSERT_NEAR(lse[b * Hq + h], want_lse, tol * (1.0 + std::abs(want_lse))) << at;
      if (moba) {
        const auto want_sel = r.sel.at(tok, h);
        for (int64_t i = 0; i < K; ++i)
          ASSERT_EQ(sel[(b * Hq + h) * K + i], want_sel[i]) << at << ", head " << h << ", slot " << i;
      }
    }
    const int64_t row = s.Hkv * D, row0 = full_block_offset(r.layout, {s.S, s.K}, b);
    ASSERT_EQ(cache.full_blocks(b), cache.len(b) / s.S);
    for (int64_t j = 0; j < cache.full_blocks(b); ++j)
      for (int64_t e = 0; e < row; ++e)  // bit for bit
        ASSERT_EQ(cache.mean(b, j)[e], r.means[(row0 + j) * row + e]) << at << ", block " << j;
  }
}

// Every sequence grows by one token per step (those already complete stay as they are and
// decode their last token again); every step is compared.
template <typename Real>
void token_by_token(const Shape& s, bool moba, uint64_t seed) {
  const Reference<Real> r = reference<Real>(s, moba, seed);
  const int64_t B = r.layout.batch();
  KVCache<Real> cache(B, r.layout.max_seq_len() + 3, s.Hkv, s.D, s.S);
  for (int64_t step = 0; step < r.layout.max_seq_len(); ++step) {
    for (int64_t b = 0; b < B; ++b)
      if (step < r.layout.seq_len(b)) append_rows(cache, r, b, step, step + 1);
    decode_and_compare(s, moba, cache, r, name_of(s) + (moba ? " moba" : " dense"));
  }
}

// Random chunks (a prefill, then pieces of 1..2S+1 tokens); the last token of each chunk is
// compared.
template <typename Real>
void in_chunks(const Shape& s, bool moba, uint64_t seed) {
  const Reference<Real> r = reference<Real>(s, moba, seed);
  const int64_t B = r.layout.batch();
  KVCache<Real> cache(B, r.layout.max_seq_len(), s.Hkv, s.D, s.S);
  std::mt19937_64 gen(seed);
  while (true) {
    bool grew = false;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = cache.len(b), left = r.layout.seq_len(b) - len;
      if (left == 0) continue;
      const int64_t n = std::min<int64_t>(left, 1 + static_cast<int64_t>(gen() % (2 * s.S + 1)));
      append_rows(cache, r, b, len, len + n);
      grew = true;
    }
    if (!grew) break;
    decode_and_compare(s, moba, cache, r, name_of(s) + " chunks");
  }
}

std::vector<Shape> shapes() {
  std::vector<Shape> v;
  for (auto [Hq, Hkv] : {std::pair<int64_t, int64_t>{4, 2}, {2, 2}})
    for (int64_t S : {4, 5, 8})  // 5: a mean that is not an exact power-of-two division
      for (int64_t K = 1; K <= 4; ++K) v.push_back({Hq, Hkv, 8, S, K, {37, 1, 50, 9, 26}});
  return v;
}

TEST(Decode, MobaTokenByTokenEqualsFullSequenceFloat) {
  uint64_t seed = 10;
  for (const Shape& s : shapes()) token_by_token<float>(s, true, seed += 3);
}
TEST(Decode, MobaTokenByTokenEqualsFullSequenceDouble) {
  uint64_t seed = 20;
  for (const Shape& s : shapes()) token_by_token<double>(s, true, seed += 3);
}
TEST(Decode, DenseTokenByTokenEqualsFullSequence) {
  uint64_t seed = 30;
  for (const Shape& s : shapes()) {
    if (s.K != 1) continue;  // dense ignores K
    token_by_token<float>(s, false, seed += 3);
    token_by_token<double>(s, false, seed += 3);
  }
}
TEST(Decode, ChunksEqualFullSequence) {
  uint64_t seed = 40;
  for (const Shape& s : shapes()) {
    in_chunks<float>(s, true, seed += 3);
    in_chunks<double>(s, true, seed += 3);
    if (s.K == 2) in_chunks<double>(s, false, seed += 3);
  }
}

// Enough keys that the decode runs on OpenMP threads (work above the serial threshold).
TEST(Decode, LargeBatchParallelPath) {
  const Shape s{8, 2, 32, 16, 3, {300, 517, 129}};
  in_chunks<float>(s, true, 50);
  in_chunks<double>(s, false, 51);
}

TEST(Decode, EqualScoresGoToTheMoreRecentBlock) {
  const Shape s{4, 2, 8, 4, 3, {30, 21}};
  const Reference<double> r = reference<double>(s, true, 60, /*equal_keys=*/true);
  KVCache<double> cache(2, 30, s.Hkv, s.D, s.S);
  for (int64_t t = 0; t < 30; ++t) {
    for (int64_t b = 0; b < 2; ++b)
      if (t < r.layout.seq_len(b)) append_rows(cache, r, b, t, t + 1);
    decode_and_compare(s, true, cache, r, "equal keys");
  }
  // Position 29 is in block 7: the two most recent past blocks 5 and 6, then 7.
  std::vector<double> q(2 * 4 * 8, 1.0), out(q.size()), lse(8);
  std::vector<int32_t> sel;
  decode_moba<double>(cache, 4, {4, 3}, {}, q, out, lse, &sel);
  EXPECT_EQ(std::vector<int32_t>(sel.begin(), sel.begin() + 3), (std::vector<int32_t>{5, 6, 7}));
}

TEST(Decode, MemoryAccounting) {
  EXPECT_DOUBLE_EQ(KVCache<float>::bytes_per_token(2, 8, 4, 2), 2 * 16 * 2 + 16 * 4 / 4.0);
  const KVCache<float> c(3, 10, 2, 8, 4);
  // K, V: 3*10*16 floats each; means: 3 * (10/4) blocks of 16 floats; sums and lengths.
  EXPECT_EQ(c.bytes(), 2 * 480 * 4 + 3 * 2 * 16 * 4 + 3 * 16 * 8 + 3 * 8);
}

template <typename Fn>
void expect_error(Fn fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no moba::Error, expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(Decode, ErrorsAreNamed) {
  expect_error([] { KVCache<float>(0, 4, 1, 2, 2); }, "batch B must be >= 1");
  expect_error([] { KVCache<float>(1, 4, 1, 2, 0); }, "block size S must be >= 1");
  KVCache<float> c(2, 5, 1, 2, 2);
  const std::vector<float> row(2, 1.0f), three(6, 1.0f);
  expect_error([&] { c.append(0, 1, three, row); }, "k_rows has 6 elements");
  expect_error([&] { c.append(0, 1, row, three); }, "v_rows has 6 elements");
  expect_error([&] { c.append(2, 1, row, row); }, "sequence 2 is not in [0, 2)");
  std::vector<float> q(2 * 2 * 2, 0.5f), out(q.size()), lse(4);
  expect_error([&] { decode_dense<float>(c, 2, {}, q, out, lse); },
               "sequence 0 has no token in the KV cache");
  c.append(0, 1, row, row);
  c.append(1, 1, row, row);
  c.append(0, 3, three, three);
  expect_error([&] { c.append(0, 2, std::vector<float>(4), std::vector<float>(4)); },
               "appending 2 tokens to sequence 0 holding 4 exceeds its capacity of 5");
  expect_error([&] { decode_dense<float>(c, 2, {}, std::vector<float>(3), out, lse); },
               "tensor q has 3 elements");
  std::vector<float> lse3(3);
  expect_error([&] { decode_dense<float>(c, 2, {}, q, out, lse3); },
               "tensor lse has 3 elements");
  const KVCache<float> two_heads(2, 5, 2, 2, 2);
  expect_error([&] { decode_moba<float>(two_heads, 3, {2, 2}, {}, q, out, lse); },
               "Hq = 3 must be a positive multiple of the cache's key/value heads Hkv = 2");
  expect_error([&] { decode_moba<float>(c, 2, {4, 2}, {}, q, out, lse); },
               "block size S = 4 differs from the KV cache's block size 2");
  expect_error([&] { decode_moba<float>(c, 2, {2, 0}, {}, q, out, lse); }, "top-k K must be >= 1");
  c.reset(0);
  EXPECT_EQ(c.len(0), 0);
  EXPECT_EQ(c.len(1), 1);
  // A NaN key makes the gate's score non-finite: named, as the gate names it.
  const std::vector<float> nan_row(2, std::numeric_limits<float>::quiet_NaN());
  for (int i = 0; i < 4; ++i) c.append(0, 1, i < 2 ? nan_row : row, row);
  c.append(1, 1, row, row);
  c.append(1, 1, row, row);
  expect_error([&] { decode_moba<float>(c, 2, {2, 1}, {}, q, out, lse); },
               "gate score is not finite");
}

}  // namespace
}  // namespace moba::attn
