#include "attention/fwd_chunks.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "attention/gate.h"
#include "core/error.h"

namespace moba::attn {

int64_t fwd_chunk_granule(const MobaConfig& cfg) { return std::max<int64_t>(cfg.block_size, 128); }

int64_t fwd_chunk_tokens(const Options& opt) {
  if (opt.fwd_chunk_tokens >= 0) return opt.fwd_chunk_tokens;
  MOBA_CHECK(opt.fwd_chunk_tokens == -1, "Options::fwd_chunk_tokens must be >= 0 or -1 (the ",
             kFwdChunkEnv, " environment variable), got ", opt.fwd_chunk_tokens);
  const char* e = std::getenv(kFwdChunkEnv);
  if (e == nullptr || *e == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(e, &end, 10);
  MOBA_CHECK(end != e && *end == '\0' && n >= 0, kFwdChunkEnv, "=", e,
             ": expected a number of tokens >= 0 (0 = unchunked)");
  return static_cast<int64_t>(n);
}

std::vector<std::pair<int64_t, int64_t>> fwd_chunks(const Layout& layout, const MobaConfig& cfg,
                                                    int64_t chunk_tokens) {
  layout.validate();
  cfg.validate();
  const int64_t G = fwd_chunk_granule(cfg), N = layout.tokens();
  MOBA_CHECK(chunk_tokens >= 0 && chunk_tokens % G == 0,
             "MoBA forward chunk of ", chunk_tokens, " tokens: must be 0 (unchunked) or a positive "
             "multiple of max(block size, 128) = ", G);
  std::vector<std::pair<int64_t, int64_t>> out;
  if (chunk_tokens == 0 || chunk_tokens >= N) {
    out.emplace_back(0, N);
    return out;
  }
  // Invariant: t is a sequence start or a multiple of G after one. The chunk ends at the
  // last such point at or before t + chunk_tokens: past t (a later sequence's start, or,
  // in t's own sequence, t + chunk_tokens itself).
  int64_t t = 0, b = 0;  // b: the sequence holding t + chunk_tokens (scanned forward)
  while (t < N) {
    const int64_t end = t + chunk_tokens;
    if (end >= N) {
      out.emplace_back(t, N);
      break;
    }
    while (layout.cu_seqlens[b + 1] <= end) ++b;
    const int64_t s = layout.cu_seqlens[b];
    const int64_t t1 = s + (end - s) / G * G;
    MOBA_CHECK(t1 > t, "fwd_chunks: no progress at token ", t);  // cannot happen (invariant)
    out.emplace_back(t, t1);
    t = t1;
  }
  return out;
}

FwdScratch fwd_scratch_bytes(const Layout& layout, const MobaConfig& cfg, int64_t chunk_tokens) {
  FwdScratch s;
  const int64_t rows = full_block_offset(layout, cfg, layout.batch());
  const int64_t kp = cfg.top_k - 1;
  if (kp == 0 || rows == 0) return s;
  for (const auto& [a, z] : fwd_chunks(layout, cfg, chunk_tokens))
    s.chunk_tokens = std::max(s.chunk_tokens, z - a);
  const int64_t slots = s.chunk_tokens * layout.num_q_heads * kp;
  const int64_t buckets = rows * layout.num_kv_heads;
  // Each buffer at least 16 bytes (Plan::scratch's minimum).
  auto buf = [](int64_t bytes) { return std::max<int64_t>(16, bytes); };
  s.part_o = buf(4 * slots * layout.head_dim);
  s.part_lse = buf(4 * slots);
  s.entries = buf(4 * slots);
  s.tiles = buf(16 * (slots / 128 + buckets + 1));
  s.buckets = 2 * buf(4 * (buckets + 1));
  s.num_tiles = buf(4);
  return s;
}

}  // namespace moba::attn
