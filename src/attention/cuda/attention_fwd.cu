// Forward launchers: tile choice and dispatch of attn_fwd_kernel, and the MoBA gate entry.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention/cuda/attention_cuda.h"
#include "attention/cuda/fwd_kernel.cuh"
#include "attention/cuda/internal.h"
#include "attention/fwd_chunks.h"
#include "core/cuda_check.cuh"

namespace moba::attn::cuda {
namespace {

// From this length on, L2 reuse of one head's K/V beats an early start of every head's
// longest tiles (measured on H100: at 128K heads-fastest was 6% slower, at 8K 15% faster).
constexpr int64_t kLongSequence = 65536;

template <int D, int NW, int MT, FwdMode MODE>
void launch_fwd(const AttnParams& p, dim3 grid, cudaStream_t stream) {
  using T = FwdTraits<D, NW, MT>;
  constexpr auto kernel = attn_fwd_kernel<D, NW, MT, MODE>;
  set_smem_once<kernel>(T::kSmemBytes);
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

// Tiles: 4 warps x 2 slices of 16 rows = 128 query rows per CTA (see fwd_kernel.cuh on
// MT); where MoBA's block is 64, 4 warps x 1 slice = 64 rows, so that a tile of queries
// always shares one current block.
constexpr int kWarps = 4;
int row_slices(const Plan& plan, FwdMode mode) {
  return mode == FwdMode::kMobaCurrent && plan.config().block_size < 128 ? 1 : 2;
}

// Contiguous query tiles: grid (Hq, query tiles of the longest sequence, B).
template <FwdMode MODE>
void fwd_contiguous(const Plan& plan, const AttnParams& p, cudaStream_t stream) {
  const Layout& l = plan.layout();
  const int mt = row_slices(plan, MODE);
  const int br = 16 * kWarps * mt;
  // One chunk of the chunked MoBA forward (p.batch set): its sequences and query tiles.
  const dim3 grid = p.batch == 0 ? tile_grid(plan, p, p.Hq, br)
                    : p.heads_fastest
                        ? dim3(p.Hq, static_cast<unsigned>(p.q_tiles), static_cast<unsigned>(p.batch))
                        : dim3(static_cast<unsigned>(p.q_tiles), p.Hq, static_cast<unsigned>(p.batch));
  const int64_t D = l.head_dim;
  if (D == 64 && mt == 1) launch_fwd<64, kWarps, 1, MODE>(p, grid, stream);
  else if (D == 64) launch_fwd<64, kWarps, 2, MODE>(p, grid, stream);
  else if (mt == 1) launch_fwd<128, kWarps, 1, MODE>(p, grid, stream);
  else launch_fwd<128, kWarps, 2, MODE>(p, grid, stream);
}

}  // namespace

AttnParams plan_params(const Plan& plan, const bf16* q, const bf16* k, const bf16* v) {
  const Layout& l = plan.layout();
  AttnParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.cu_seqlens = plan.dev().cu_seqlens;
  p.block_offset = plan.dev().block_offset;
  p.block_start = plan.dev().block_start;
  p.N = static_cast<int>(l.tokens());
  p.Hq = static_cast<int>(l.num_q_heads);
  p.Hkv = static_cast<int>(l.num_kv_heads);
  p.group = p.Hq / p.Hkv;
  p.scale = plan.scale();
  p.scale_log2 = plan.scale() * 1.4426950408889634f;
  p.S = static_cast<int>(plan.config().block_size);
  p.K = static_cast<int>(plan.config().top_k);
  p.kp = p.K - 1;
  p.heads_fastest = plan.max_seq_len() < kLongSequence;
  p.q_lo = 0;
  p.q_hi = p.N;
  return p;
}

dim3 tile_grid(const Plan& plan, const AttnParams& p, int heads, int tile) {
  const unsigned tiles = static_cast<unsigned>((plan.max_seq_len() + tile - 1) / tile);
  const unsigned batch = static_cast<unsigned>(plan.layout().batch());
  const unsigned h = static_cast<unsigned>(heads);
  return p.heads_fastest ? dim3(h, tiles, batch) : dim3(tiles, h, batch);
}

void dense_forward(Plan& plan, const bf16* q, const bf16* k, const bf16* v, bf16* out,
                   float* lse, cudaStream_t stream) {
  AttnParams p = plan_params(plan, q, k, v);
  p.o = out;
  p.lse = lse;
  if (wgmma_switch("MOBA_DENSE_FWD", plan.layout().head_dim)) {  // sm_90a
    dense_forward_wgmma(plan, p, stream);
    mark_phase("fwd_dense_wgmma", stream);
    return;
  }
  fwd_contiguous<FwdMode::kDense>(plan, p, stream);
  mark_phase("fwd_dense", stream);
}

void moba_gate(Plan& plan, const bf16* q, const bf16* k, int32_t* sel, cudaStream_t stream) {
  plan.set_indexed_selection(nullptr);  // the selection's contents change
  gate_launch(plan, q, k, sel, stream);
}

bool moba_gate(Plan& plan, const bf16* q, const bf16* k, int32_t* sel, float* means_out,
               int64_t blocks_per_seq, cudaStream_t stream) {
  MOBA_CHECK(means_out != nullptr, "moba_gate: means_out is null");
  for (int64_t b = 0; b < plan.layout().batch(); ++b)
    MOBA_CHECK(plan.layout().seq_len(b) / plan.config().block_size <= blocks_per_seq,
               "moba_gate: sequence ", b, " has ",
               plan.layout().seq_len(b) / plan.config().block_size, " full blocks, more than "
               "the means array's ", blocks_per_seq, " per sequence");
  plan.set_indexed_selection(nullptr);
  return gate_launch(plan, q, k, sel, stream, means_out, blocks_per_seq);
}

const bf16* moba_gate_shard_means(Plan& plan, const bf16* k, cudaStream_t stream) {
  return gate_shard_means(plan, k, stream);
}

void moba_gate_shard(Plan& plan, const bf16* q, const bf16* msplit_all, int64_t pos0,
                     int32_t* sel, cudaStream_t stream) {
  plan.set_indexed_selection(nullptr);  // the selection's contents change
  gate_shard_launch(plan, q, msplit_all, pos0, sel, stream);
}

namespace {

// A partials buffer addressed by absolute slot: base - first slot x width floats, so that
// the kernels' index (token * Hq + head) * kp + slot, for the chunk's tokens only, lands
// inside the buffer. Integer arithmetic on the address (flat device address space): the
// kernels never form an address outside the buffer.
float* slot_base(float* base, int64_t first_slot, int64_t width) {
  return reinterpret_cast<float*>(reinterpret_cast<uintptr_t>(base) -
                                  static_cast<uintptr_t>(first_slot * width) * sizeof(float));
}

// The past blocks of chunk c's entries in the gather index ix (the whole batch's when ix
// has one chunk) over the query tokens [t0, t1) (p.part_o / p.part_lse set): its tiles
// [chunk_tiles[c], chunk_tiles[c + 1]), the grid bounded by its entries.
void past_blocks(Plan& plan, AttnParams& p, const GatherIndex& ix, int64_t c, int64_t t0,
                 int64_t t1, bool wg, cudaStream_t stream) {
  p.entries = ix.entries;
  p.bucket_offset = ix.offsets;  // (chunk, block, kv head) buckets; the past kernels never read it
  p.tiles = ix.tiles;
  p.tile_first = ix.chunks > 1 ? ix.chunk_tiles + c : nullptr;  // chunk_tiles[0] is 0
  p.num_tiles = ix.chunk_tiles + c + 1;
  const int64_t max_tiles = ix.max_tiles(plan, t0, t1);
  if (wg) {
    moba_forward_past_wgmma(plan, p, max_tiles, stream);
    mark_phase("fwd_past_blocks_wgmma", stream);
  } else {
    const dim3 grid(static_cast<unsigned>(max_tiles));
    if (plan.layout().head_dim == 64) launch_fwd<64, kWarps, 2, FwdMode::kMobaPast>(p, grid, stream);
    else launch_fwd<128, kWarps, 2, FwdMode::kMobaPast>(p, grid, stream);
    mark_phase("fwd_past_blocks", stream);
  }
}

// The current block + merge over p's rows: the whole batch (p.batch 0) or one chunk.
void current_block(const Plan& plan, const AttnParams& p, bool wg, cudaStream_t stream) {
  if (wg) {
    moba_forward_current_wgmma(plan, p, stream);
    mark_phase("fwd_current_block_merge_wgmma", stream);
    return;
  }
  fwd_contiguous<FwdMode::kMobaCurrent>(plan, p, stream);
  mark_phase("fwd_current_block_merge", stream);
}

}  // namespace

void moba_forward(Plan& plan, const int32_t* sel, const bf16* q, const bf16* k, const bf16* v,
                  bf16* out, float* lse, cudaStream_t stream) {
  AttnParams p = plan_params(plan, q, k, v);
  p.o = out;
  p.lse = lse;
  p.sel = sel;
  const Layout& l = plan.layout();
  const int64_t D = l.head_dim;
  // MOBA_MOBA_FWD=wgmma: the sm_90a kernels (attention_fwd_wgmma.cu) for both phases
  // below, on the same gather index (tiles of 128 entries) and the same scratch.
  // Blocks of 64 keys keep the mma.sync kernels: a 128-row query tile would straddle two
  // blocks.
  const bool wg = wgmma_switch("MOBA_MOBA_FWD", D) && plan.config().block_size % 128 == 0;
  if (p.kp == 0 || plan.full_blocks() == 0) {
    // No past block anywhere: the merge reads nothing (every slot is invalid).
    p.part_o = nullptr;
    p.part_lse = nullptr;
    current_block(plan, p, wg, stream);
    return;
  }
  // The query chunks (attention/fwd_chunks.h; one = the single pass). Read on every call.
  Options opt;
  opt.fwd_chunk_tokens = plan.fwd_chunk_option();
  const int64_t chunk_tokens = fwd_chunk_tokens(opt);
  const auto chunks = fwd_chunks(l, plan.config(), chunk_tokens);
  const FwdScratch fs = fwd_scratch_bytes(l, plan.config(), chunk_tokens);
  float* part_o = static_cast<float*>(plan.scratch(kSlotPartO, fs.part_o));
  float* part_lse = static_cast<float*>(plan.scratch(kSlotPartLse, fs.part_lse));
  // Past blocks: gathered tiles of 128 entries (more rows per loaded block of K/V), one
  // index for all chunks (its buckets chunk-major; one memset, count, scan and fill).
  const GatherIndex ix = build_gather_index(plan, sel, 16 * kWarps * 2, stream, chunk_tokens);
  if (chunks.size() == 1) {
    plan.set_indexed_selection(sel);
    p.part_o = part_o;
    p.part_lse = part_lse;
    past_blocks(plan, p, ix, 0, 0, l.tokens(), wg, stream);
    current_block(plan, p, wg, stream);
    return;
  }
  // Chunked: per chunk of query tokens [t0, t1), the past blocks of its entries (keys
  // anywhere before them, from the whole K/V) into the one chunk's partials, then the
  // current block + merge of its query tiles. The index's buckets are (chunk, block, kv
  // head), not the backward's (block, kv head): moba_backward must build its own.
  plan.set_indexed_selection(nullptr);
  const int64_t kp = p.kp, Hq = p.Hq;
  const int br = wg ? kMobaFwdQueryTile : 16 * kWarps * row_slices(plan, FwdMode::kMobaCurrent);
  const std::vector<int64_t>& cu = l.cu_seqlens;
  int64_t b0 = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const auto [t0, t1] = chunks[c];
    AttnParams pc = p;
    pc.part_o = slot_base(part_o, t0 * Hq * kp, D);
    pc.part_lse = slot_base(part_lse, t0 * Hq * kp, 1);
    past_blocks(plan, pc, ix, static_cast<int64_t>(c), t0, t1, wg, stream);
    // The chunk's sequences b0..b1 and the most query tiles one of them has in it.
    while (cu[b0 + 1] <= t0) ++b0;
    int64_t b1 = b0, tiles = 0;
    for (;; ++b1) {
      const int64_t lo = std::max(t0, cu[b1]), hi = std::min(t1, cu[b1 + 1]);
      tiles = std::max(tiles, (hi - lo + br - 1) / br);
      if (cu[b1 + 1] >= t1) break;
    }
    pc.cu_seqlens = plan.dev().cu_seqlens + b0;
    pc.batch = static_cast<int>(b1 - b0 + 1);
    pc.q_tiles = static_cast<int>(tiles);
    pc.q_lo = static_cast<int>(t0);
    pc.q_hi = static_cast<int>(t1);
    current_block(plan, pc, wg, stream);
  }
}

}  // namespace moba::attn::cuda
