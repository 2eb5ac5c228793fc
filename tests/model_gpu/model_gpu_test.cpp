// The GPU trainer's layer kernels (src/model/cuda) against the CPU layers they mirror, in
// fp64, on fresh random inputs at awkward sizes: one row, rows not a multiple of a block's,
// widths and vocabularies not a multiple of 8, odd RoPE half-widths, repeated tokens.
// Outputs are poisoned (NaN) before each kernel. Error bounds: gpu_compare.h (bound()).
// Shapes cover both paths of each kernel: 16-byte vector accesses (widths a multiple of 8:
// 8, 264, 768, 2048, vocabularies 1000, 4104, 8192, RoPE D 64 and 128) and the scalar
// fallback (widths 3, 7, 77, 1023, 2049, ...); VectorPathGpu checks that the two paths give
// the same bits (the scalar path forced by 16-byte-misaligned copies of the same inputs).
// AdamW follows the CPU optimizer in double, so it is held to one fp32 ulp instead.
// Skips (passes) with a message when no CUDA device is present; the API-edge checks run
// without one.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "model/cross_entropy.h"
#include "model/params.h"
#include "model/rmsnorm.h"
#include "model/rope.h"
#include "model/swiglu.h"
#include "model_gpu/gpu_compare.h"
#include "train/adamw.h"

namespace moba::test {
namespace {

namespace mc = model::cuda;

#define SKIP_WITHOUT_DEVICE() \
  if (!have_device()) GTEST_SKIP() << "no CUDA device: GPU layer tests skipped"

uint64_t next_seed() {
  static uint64_t seed = 4242;
  return seed += 101;
}

// ---- RMSNorm ---------------------------------------------------------------------------
struct NormCase {
  int64_t M, C;
  bool accumulate;  // dx += (the residual stream's gradient) rather than dx =
};
class RmsNormGpu : public ::testing::TestWithParam<NormCase> {};

TEST_P(RmsNormGpu, MatchesCpu) {
  SKIP_WITHOUT_DEVICE();
  const auto [M, C, acc] = GetParam();
  const float eps = 1e-5f;
  const uint64_t s = next_seed();
  const size_t n = static_cast<size_t>(M * C);
  const auto x = random_bf16(n, s, 2.0), dy = random_bf16(n, s + 1), dx0 = random_bf16(n, s + 2);
  const auto w = random_normal<float>(static_cast<size_t>(C), s + 3);
  const auto dw0 = random_normal<float>(static_cast<size_t>(C), s + 4);

  // fp64 reference and the naive version (the CPU layer in float, bf16 stores).
  std::vector<double> yd(n), rd(M), dxd = acc ? to_double(dx0) : std::vector<double>(n),
                                    dwd = to_double(dw0);
  const auto xd = to_double(x), wd = to_double(w), dyd = to_double(dy);
  model::rmsnorm_forward<double>(M, C, eps, xd.data(), wd.data(), yd.data(), rd.data());
  model::rmsnorm_backward<double>(M, C, xd.data(), wd.data(), rd.data(), dyd.data(), dxd.data(),
                                  dwd.data(), acc);
  std::vector<float> yf(n), rf(M), dxf = acc ? dx0 : std::vector<float>(n), dwf = dw0;
  model::rmsnorm_forward<float>(M, C, eps, x.data(), w.data(), yf.data(), rf.data());
  model::rmsnorm_backward<float>(M, C, x.data(), w.data(), rf.data(), dy.data(), dxf.data(),
                                 dwf.data(), acc);

  const mc::RmsNormParams p{M, C, eps};
  DeviceBuffer<bf16> gx(to_bf16(x)), gdy(to_bf16(dy)), gy(n), gdx(n);
  DeviceBuffer<float> gw(w), gdw(dw0), grstd(M);
  DeviceBuffer<char> ws(mc::rmsnorm_backward_workspace(p));
  gy.poison();
  grstd.poison();
  ws.poison();
  if (acc)
    gdx.upload(to_bf16(dx0));
  else
    gdx.poison();
  mc::rmsnorm_forward(p, gx.ptr, gw.ptr, gy.ptr, grstd.ptr);
  mc::rmsnorm_backward(p, gx.ptr, gw.ptr, grstd.ptr, gdy.ptr, gdx.ptr, gdw.ptr, acc, ws.ptr);
  compare("y", Out::kBf16, from_bf16(gy.download()), yd, rounded(yf));
  compare("rstd", Out::kFp32, grstd.download(), rd, rf);
  compare("dx", Out::kBf16, from_bf16(gdx.download()), dxd, rounded(dxf));
  compare("dw", Out::kFp32, gdw.download(), dwd, dwf);

  // The dw reduction is deterministic: a second backward adds the very same bits again.
  const auto dw1 = gdw.download();
  gdw.upload(dw0);
  mc::rmsnorm_backward(p, gx.ptr, gw.ptr, grstd.ptr, gdy.ptr, gdx.ptr, gdw.ptr, acc, ws.ptr);
  EXPECT_EQ(gdw.download(), dw1) << "dw differs between two identical backward passes";
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormGpu,
                         ::testing::Values(NormCase{1, 3, false}, NormCase{1, 7, true},
                                           NormCase{37, 100, false}, NormCase{65, 768, true},
                                           NormCase{300, 1023, false}, NormCase{1029, 2049, true},
                                           // vector path: C % 8 == 0
                                           NormCase{3, 8, true}, NormCase{33, 264, false},
                                           NormCase{129, 768, false},
                                           NormCase{1029, 2048, true},
                                           NormCase{1, 768, true}, NormCase{200, 1360, false},
                                           // dw's order (rmsnorm.cu): 32-row chunks of 4-row
                                           // groups, chunk k in reduce slot k % 32, 16 loads a
                                           // slot per round. M 33: a last chunk of one row
                                           // (groups 1-7 empty); 1031: 33 chunks (slot 0 takes
                                           // two); 16417: 514 chunks (a second round, ragged);
                                           // 8192 x 768: the trainer's T 8K layer.
                                           NormCase{33, 768, false}, NormCase{1031, 768, true},
                                           NormCase{16417, 64, true}, NormCase{16417, 7, false},
                                           NormCase{8192, 768, false}, NormCase{8192, 768, true},
                                           // the one-pass kernel's widest (C 1536, 6 vectors a
                                           // lane), past it (two kernels), and C 4096
                                           NormCase{70, 1536, true}, NormCase{45, 1544, false},
                                           NormCase{40, 4096, true}),
                         [](const auto& i) {
                           return "M" + std::to_string(i.param.M) + "_C" + std::to_string(i.param.C) +
                                  (i.param.accumulate ? "_acc" : "");
                         });

// ---- Cross-entropy ---------------------------------------------------------------------
struct CeCase {
  int64_t M, V;
  bool fp32;      // logits in fp32 (else bf16)
  bool masked;    // a loss mask drops every third row
  bool in_place;  // dlogits written over the logits
};
class CrossEntropyGpu : public ::testing::TestWithParam<CeCase> {};

template <typename T>
void run_ce_gpu(const CeCase& c, const std::vector<float>& logits, const std::vector<int32_t>& tg,
                const std::vector<uint8_t>& mask, float scale, std::vector<float>& loss,
                std::vector<float>& lse, std::vector<float>& dlogits) {
  const size_t n = logits.size();
  DeviceBuffer<T> gz(n), gdz(n);
  if constexpr (std::is_same_v<T, float>)
    gz.upload(logits);
  else
    gz.upload(to_bf16(logits));
  gdz.poison();
  DeviceBuffer<int32_t> gt(tg);
  DeviceBuffer<uint8_t> gm(mask);
  DeviceBuffer<float> gloss(c.M), glse(c.M);
  gloss.poison();
  glse.poison();
  const mc::CrossEntropyParams p{c.M, c.V, c.fp32 ? mc::LogitsType::kFp32 : mc::LogitsType::kBf16};
  const uint8_t* m = c.masked ? gm.ptr : nullptr;
  T* out = c.in_place ? gz.ptr : gdz.ptr;
  mc::cross_entropy_forward(p, gz.ptr, gt.ptr, m, gloss.ptr, glse.ptr);
  mc::cross_entropy_backward(p, gz.ptr, glse.ptr, gt.ptr, m, scale, out);
  loss = gloss.download();
  lse = glse.download();
  auto as_float = [](const DeviceBuffer<T>& b) {
    if constexpr (std::is_same_v<T, float>)
      return b.download();
    else
      return from_bf16(b.download());
  };
  dlogits = as_float(c.in_place ? gz : gdz);

  // The fused launch (the training step's) must give forward + backward's very bits.
  DeviceBuffer<T> fz(n), fdz(n);
  if constexpr (std::is_same_v<T, float>)
    fz.upload(logits);
  else
    fz.upload(to_bf16(logits));
  fdz.poison();
  gloss.poison();
  glse.poison();
  mc::cross_entropy_fused(p, fz.ptr, gt.ptr, m, scale, gloss.ptr, glse.ptr,
                          c.in_place ? fz.ptr : fdz.ptr);
  const auto floss = gloss.download(), flse = glse.download();
  const auto fd = as_float(c.in_place ? fz : fdz);
  int64_t differ = 0;
  for (size_t i = 0; i < n; ++i) differ += !(fd[i] == dlogits[i]);  // NaN counts as differing
  EXPECT_EQ(floss, loss) << "fused losses differ from the forward's";
  EXPECT_EQ(flse, lse) << "fused lse differs from the forward's";
  EXPECT_EQ(differ, 0) << "fused dlogits differ from the backward's";
}

TEST_P(CrossEntropyGpu, MatchesCpu) {
  SKIP_WITHOUT_DEVICE();
  const CeCase c = GetParam();
  const uint64_t s = next_seed();
  const size_t n = static_cast<size_t>(c.M * c.V);
  // Logits spread like a trained head's (std 3): the softmax is far from uniform.
  const auto z = c.fp32 ? random_normal<float>(n, s, 3.0) : random_bf16(n, s, 3.0);
  std::vector<int32_t> tg(c.M);
  std::vector<uint8_t> mask(c.M, 1);
  std::mt19937_64 gen(s + 1);
  int64_t counted = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    tg[m] = static_cast<int32_t>(gen() % static_cast<uint64_t>(c.V));
    if (c.masked && m % 3 == 1) mask[m] = 0;
    counted += mask[m];
  }
  const float scale = 2.5f / static_cast<float>(std::max<int64_t>(1, counted));

  std::vector<double> zd = to_double(z), lossd(c.M), lsed(c.M);
  model::cross_entropy_forward<double>(c.M, c.V, zd.data(), tg.data(), lossd.data());
  for (int64_t m = 0; m < c.M; ++m) lsed[m] = lossd[m] + z[m * c.V + tg[m]];
  const uint8_t* cpu_mask = c.masked ? mask.data() : nullptr;
  model::cross_entropy_backward<double>(c.M, c.V, zd.data(), tg.data(), scale, cpu_mask);
  std::vector<float> zf = z, lossf(c.M), lsef(c.M);
  model::cross_entropy_forward<float>(c.M, c.V, zf.data(), tg.data(), lossf.data());
  for (int64_t m = 0; m < c.M; ++m) lsef[m] = lossf[m] + z[m * c.V + tg[m]];
  model::cross_entropy_backward<float>(c.M, c.V, zf.data(), tg.data(), scale, cpu_mask);
  // The CPU forward computes every row's loss and the model sums the kept ones; the GPU
  // writes 0 for a masked row, so that a plain sum of the losses is the masked total.
  for (int64_t m = 0; m < c.M; ++m)
    if (!mask[m]) lossd[m] = lossf[m] = 0.0;

  std::vector<float> loss, lse, dz;
  if (c.fp32)
    run_ce_gpu<float>(c, z, tg, mask, scale, loss, lse, dz);
  else
    run_ce_gpu<bf16>(c, z, tg, mask, scale, loss, lse, dz);
  compare("loss", Out::kFp32, loss, lossd, lossf);
  compare("lse", Out::kFp32, lse, lsed, lsef);
  compare("dlogits", c.fp32 ? Out::kFp32 : Out::kBf16, dz, zd, c.fp32 ? zf : rounded(zf));
  for (int64_t m = 0; m < c.M; ++m)
    if (!mask[m]) {
      ASSERT_EQ(loss[m], 0.0f) << "masked row " << m << " has a loss";
    }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CrossEntropyGpu,
    ::testing::Values(CeCase{1, 1000, false, false, false}, CeCase{3, 5, true, false, false},
                      CeCase{37, 1000, false, true, false},
                      CeCase{37, 1000, true, false, true}, CeCase{67, 32007, false, false, true},
                      CeCase{67, 32007, true, true, false}, CeCase{5, 65536, false, true, false},
                      CeCase{3, 65536, true, false, false},
                      // vector path (V % 8 == 0 for bf16, % 4 for fp32), ragged last chunk
                      CeCase{19, 8192, false, true, true}, CeCase{4, 4104, false, false, false},
                      CeCase{4, 2052, true, false, true}, CeCase{2, 8, false, false, true}),
    [](const auto& i) {
      const CeCase& c = i.param;
      return "M" + std::to_string(c.M) + "_V" + std::to_string(c.V) + (c.fp32 ? "_fp32" : "_bf16") +
             (c.masked ? "_mask" : "") + (c.in_place ? "_inplace" : "");
    });

TEST(CrossEntropyGpuEdge, TargetOutsideVocabGivesNaN) {
  SKIP_WITHOUT_DEVICE();
  const mc::CrossEntropyParams p{2, 10, mc::LogitsType::kFp32};
  DeviceBuffer<float> z(random_normal<float>(20, 7)), loss(2), lse(2);
  DeviceBuffer<int32_t> tg(std::vector<int32_t>{3, 10});
  mc::cross_entropy_forward(p, z.ptr, tg.ptr, nullptr, loss.ptr, lse.ptr);
  const auto l = loss.download();
  EXPECT_TRUE(std::isfinite(l[0]));
  EXPECT_TRUE(std::isnan(l[1]));
}

// ---- SwiGLU ----------------------------------------------------------------------------
class SwigluGpu : public ::testing::TestWithParam<int64_t> {};

TEST_P(SwigluGpu, MatchesCpu) {
  SKIP_WITHOUT_DEVICE();
  const int64_t n = GetParam();
  const uint64_t s = next_seed();
  // a spread wide (std 4) so that silu's saturated tails on both sides are exercised.
  const auto a = random_bf16(n, s, 4.0), b = random_bf16(n, s + 1), dh = random_bf16(n, s + 2);
  const auto ad = to_double(a), bd = to_double(b), dhd = to_double(dh);
  std::vector<double> hd(n), dad(n), dbd(n);
  model::swiglu_forward<double>(n, ad.data(), bd.data(), hd.data());
  model::swiglu_backward<double>(n, ad.data(), bd.data(), dhd.data(), dad.data(), dbd.data());
  std::vector<float> hf(n), daf(n), dbf(n);
  model::swiglu_forward<float>(n, a.data(), b.data(), hf.data());
  model::swiglu_backward<float>(n, a.data(), b.data(), dh.data(), daf.data(), dbf.data());

  DeviceBuffer<bf16> ga(to_bf16(a)), gb(to_bf16(b)), gdh(to_bf16(dh)), gh(n), gda(n), gdb(n);
  gh.poison();
  gda.poison();
  gdb.poison();
  mc::swiglu_forward(n, ga.ptr, gb.ptr, gh.ptr);
  mc::swiglu_backward(n, ga.ptr, gb.ptr, gdh.ptr, gda.ptr, gdb.ptr);
  compare("h", Out::kBf16, from_bf16(gh.download()), hd, rounded(hf));
  compare("da", Out::kBf16, from_bf16(gda.download()), dad, rounded(daf));
  compare("db", Out::kBf16, from_bf16(gdb.download()), dbd, rounded(dbf));
}

INSTANTIATE_TEST_SUITE_P(Sizes, SwigluGpu, ::testing::Values(1, 7, 8, 4097, 2048 * 37, 1000003),
                         [](const auto& i) { return "n" + std::to_string(i.param); });

// ---- RoPE ------------------------------------------------------------------------------
struct RopeCase {
  std::vector<int64_t> docs;  // document lengths, packed: positions restart at each one
  int64_t H, D;
};
class RopeGpu : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeGpu, MatchesCpu) {
  SKIP_WITHOUT_DEVICE();
  const RopeCase& c = GetParam();
  std::vector<int32_t> pos;
  int64_t T = 0;
  for (int64_t len : c.docs) {
    for (int64_t t = 0; t < len; ++t) pos.push_back(static_cast<int32_t>(t));
    T = std::max(T, len);
  }
  const int64_t M = static_cast<int64_t>(pos.size());
  const model::RopeTable table(T, c.D, 10000.0);
  const mc::RopeTableCuda gtable(table);
  DeviceBuffer<int32_t> gpos(pos);
  const uint64_t s = next_seed();
  for (bool inverse : {false, true}) {  // forward, then the backward's rotation
    const auto x = random_bf16(static_cast<size_t>(M * c.H * c.D), s + inverse, 3.0);
    std::vector<double> xd = to_double(x);
    model::rope_apply<double>(table, M, c.H, pos.data(), xd.data(), inverse);
    std::vector<float> xf = x;
    model::rope_apply<float>(table, M, c.H, pos.data(), xf.data(), inverse);
    // In place, so no poison: the input itself differs from the rotated output wherever
    // the position is not 0, and that is most of them.
    DeviceBuffer<bf16> gx(to_bf16(x));
    mc::rope_apply({M, c.H, inverse}, gtable, gpos.ptr, gx.ptr);
    compare(inverse ? "dx" : "y", Out::kBf16, from_bf16(gx.download()), xd, rounded(xf));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeGpu,
                         ::testing::Values(RopeCase{{1}, 1, 2}, RopeCase{{33}, 2, 6},
                                           RopeCase{{5, 1, 70, 23}, 3, 64},
                                           RopeCase{{129, 64, 700}, 4, 128}),
                         [](const auto& i) {
                           return "docs" + std::to_string(i.param.docs.size()) + "_H" +
                                  std::to_string(i.param.H) + "_D" + std::to_string(i.param.D);
                         });

TEST(RopeGpuEdge, PositionOutsideTableGivesNaN) {
  SKIP_WITHOUT_DEVICE();
  const model::RopeTable table(4, 8, 10000.0);
  const mc::RopeTableCuda gtable(table);
  DeviceBuffer<int32_t> pos(std::vector<int32_t>{3, 4});
  DeviceBuffer<bf16> x(to_bf16(random_bf16(16, 3)));
  mc::rope_apply({2, 1, false}, gtable, pos.ptr, x.ptr);
  const auto y = from_bf16(x.download());
  EXPECT_TRUE(std::isfinite(y[0]) && std::isfinite(y[7]));
  EXPECT_TRUE(std::isnan(y[8]) && std::isnan(y[15]));
}

// ---- AdamW -----------------------------------------------------------------------------
// Three tensors, decay on the first and third (the flags the CPU optimizer reads from the
// layout), n not a multiple of the block; step 7 with clipping's scale fused.
TEST(AdamWGpu, MatchesCpuOptimizer) {
  SKIP_WITHOUT_DEVICE();
  const size_t sizes[3] = {40000, 129, 59874};
  const bool decays[3] = {true, false, true};
  model::ParamLayout layout;
  for (int i = 0; i < 3; ++i) {
    model::TensorInfo t;
    t.name = "t" + std::to_string(i);
    t.shape = {static_cast<int64_t>(sizes[i])};
    t.offset = layout.total;
    t.size = sizes[i];
    t.decay = decays[i];
    layout.total += sizes[i];
    layout.tensors.push_back(t);
  }
  const size_t n = layout.total;
  std::vector<uint8_t> decay(n, 0);
  for (const auto& t : layout.tensors) std::fill_n(decay.begin() + t.offset, t.size, t.decay);
  train::OptimConfig cfg;
  cfg.weight_decay = 0.1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  const double lr = 3e-3;
  const float grad_scale = 0.37f;
  const uint64_t s = next_seed();
  const auto p0 = random_normal<float>(n, s, 0.02), g = random_normal<float>(n, s + 1, 1e-2),
             m0 = random_normal<float>(n, s + 2, 1e-3);
  auto v0 = random_normal<float>(n, s + 3, 1e-4);
  for (float& e : v0) e = e * e;  // second moments are >= 0

  train::AdamW opt(layout, cfg);
  opt.m() = m0;
  opt.v() = v0;
  opt.set_steps_done(6);
  std::vector<float> p_cpu = p0, g_cpu = g;
  for (float& e : g_cpu) e *= grad_scale;  // what clip_grads does before the step
  opt.step(p_cpu, g_cpu, lr);

  DeviceBuffer<float> gp(p0), gg(g), gm(m0), gv(v0);
  DeviceBuffer<uint8_t> gd(decay);
  DeviceBuffer<bf16> gb(n);
  gb.poison();
  mc::AdamWParams p;
  p.n = static_cast<int64_t>(n);
  p.t = 7;
  p.lr = lr;
  p.beta1 = cfg.beta1;
  p.beta2 = cfg.beta2;
  p.eps = cfg.eps;
  p.weight_decay = cfg.weight_decay;
  p.grad_scale = grad_scale;
  mc::adamw_step(p, gp.ptr, gg.ptr, gm.ptr, gv.ptr, gd.ptr, gb.ptr);
  const auto p_gpu = gp.download(), m_gpu = gm.download(), v_gpu = gv.download();
  const auto b_gpu = from_bf16(gb.download());
  // The same double arithmetic; only the compiler's choice of fused multiply-adds may
  // differ, which moves a float result by at most one ulp.
  auto ulps = [](float a, float b) {
    const double u = std::max(std::abs(double(b)) * 1.2e-7, 1e-45);
    return std::abs(double(a) - double(b)) / u;
  };
  double worst[3] = {0, 0, 0};
  int64_t bad_copy = 0;
  for (size_t i = 0; i < n; ++i) {
    worst[0] = std::max(worst[0], ulps(p_gpu[i], p_cpu[i]));
    worst[1] = std::max(worst[1], ulps(m_gpu[i], opt.m()[i]));
    worst[2] = std::max(worst[2], ulps(v_gpu[i], opt.v()[i]));
    bad_copy += b_gpu[i] != round_bf16(p_gpu[i]);
  }
  std::printf("    params %.2f ulp, m %.2f ulp, v %.2f ulp (worst); bf16 copy mismatches %lld\n",
              worst[0], worst[1], worst[2], static_cast<long long>(bad_copy));
  EXPECT_LE(worst[0], 1.01);
  EXPECT_LE(worst[1], 1.01);
  EXPECT_LE(worst[2], 1.01);
  EXPECT_EQ(bad_copy, 0);
}

// ---- Embedding ---------------------------------------------------------------------------
class EmbeddingGpu : public ::testing::TestWithParam<int64_t> {};

TEST_P(EmbeddingGpu, MatchesGatherAndScatterAdd) {
  SKIP_WITHOUT_DEVICE();
  const int64_t V = 1000, C = GetParam(), M = 513;
  const uint64_t s = next_seed();
  std::vector<int32_t> tok(M);
  std::mt19937_64 gen(s);
  // Mostly 50 ids, so rows repeat and the scatter's atomics collide; the last is V - 1.
  for (int64_t m = 0; m < M; ++m) tok[m] = static_cast<int32_t>(gen() % 50);
  tok[M - 1] = static_cast<int32_t>(V - 1);
  const auto table = random_bf16(static_cast<size_t>(V * C), s + 1),
             dout = random_bf16(static_cast<size_t>(M * C), s + 2);
  const auto dt0 = random_normal<float>(static_cast<size_t>(V * C), s + 3);

  const mc::EmbeddingParams p{M, V, C};
  DeviceBuffer<int32_t> gt(tok);
  DeviceBuffer<bf16> gtab(to_bf16(table)), gout(static_cast<size_t>(M * C)), gdo(to_bf16(dout));
  DeviceBuffer<float> gdt(dt0);
  gout.poison();
  mc::embedding_forward(p, gt.ptr, gtab.ptr, gout.ptr);
  mc::embedding_backward(p, gt.ptr, gdo.ptr, gdt.ptr);
  const auto out = from_bf16(gout.download());
  int64_t wrong = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c) wrong += out[m * C + c] != table[tok[m] * C + c];
  EXPECT_EQ(wrong, 0) << "the gather is a copy: every element must match bit for bit";

  std::vector<double> dtd = to_double(dt0);
  std::vector<float> dtf = dt0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c) {
      dtd[tok[m] * C + c] += dout[m * C + c];
      dtf[tok[m] * C + c] += dout[m * C + c];
    }
  compare("dtable", Out::kFp32, gdt.download(), dtd, dtf);
}

// C 77: the scalar path; 8 and 768: the vector path (16-byte gather, float4 atomics).
INSTANTIATE_TEST_SUITE_P(Widths, EmbeddingGpu, ::testing::Values(77, 8, 768),
                         [](const auto& i) { return "C" + std::to_string(i.param); });

TEST(EmbeddingGpuEdge, TokenOutsideVocab) {
  SKIP_WITHOUT_DEVICE();
  const mc::EmbeddingParams p{2, 4, 3};
  DeviceBuffer<int32_t> tok(std::vector<int32_t>{1, 4});
  DeviceBuffer<bf16> table(to_bf16(random_bf16(12, 5))), out(6), dout(to_bf16(random_bf16(6, 6)));
  DeviceBuffer<float> dt(std::vector<float>(12, 0.0f));
  mc::embedding_forward(p, tok.ptr, table.ptr, out.ptr);
  mc::embedding_backward(p, tok.ptr, dout.ptr, dt.ptr);
  const auto y = from_bf16(out.download());
  EXPECT_TRUE(std::isfinite(y[0]) && std::isnan(y[3]) && std::isnan(y[5]));
  const auto g = dt.download();
  for (int i = 0; i < 12; ++i)
    if (i < 3 || i >= 6) {
      EXPECT_EQ(g[i], 0.0f) << "only token 1's row gets a gradient";
    }
}

// ---- Vector path against the scalar path, bit for bit ----------------------------------
// Each kernel takes its 16-byte vector path on cudaMalloc'd buffers (widths a multiple of
// 8) and its scalar path on copies of the same inputs placed one element past a 16-byte
// boundary. The vector path computes each element with the scalar path's expressions, and
// the row sums (RMSNorm, cross-entropy) in the scalar path's order, so every output must
// match bit for bit (NaN included: compared as bits).

// A device copy one element past the allocation's start: 16-byte misaligned for bf16 and
// fp32 (and 4-byte misaligned for uint8), so the launchers pick their scalar path.
template <typename T>
struct Misaligned {
  DeviceBuffer<T> buf;
  size_t n;
  explicit Misaligned(size_t count) : buf(count + 1), n(count) {}
  explicit Misaligned(const std::vector<T>& h) : Misaligned(h.size()) { upload(h); }
  T* ptr() const { return buf.ptr + 1; }
  void upload(const std::vector<T>& h) {
    CUDA_CHECK(cudaMemcpy(buf.ptr + 1, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice));
  }
  void poison() { buf.poison(); }
  std::vector<T> download() const {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), buf.ptr + 1, sizeof(T) * n, cudaMemcpyDeviceToHost));
    return h;
  }
};

// Elements whose bits differ (the vectors' sizes must match).
template <typename T>
int64_t bits_differ(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return -1;
  int64_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return d;
}
#define EXPECT_SAME_BITS(vec_out, scalar_out, what)                                       \
  EXPECT_EQ(bits_differ(vec_out, scalar_out), 0)                                          \
      << what << ": the vector path's bits differ from the scalar path's"

TEST(VectorPathGpu, RmsNorm) {
  SKIP_WITHOUT_DEVICE();
  // C <= 1536: the one-pass backward (dx and the dw partials together); 1544, 2048: the
  // vector dx and dw-partial kernels apart. The scalar path (misaligned) is the reference:
  // equal bits mean the vector paths keep the dw summation order.
  // M 77: three 32-row dw chunks, the last of 13 rows (three 4-row groups, one of 1 row,
  // 4 empty); M 1: one row; M 200: seven chunks, the last of 8 rows; M 1031: 33 chunks (the
  // reduce's slot 0 takes two); M 16417: 514 chunks (two rounds of the reduce's loads).
  for (const int64_t M : {77, 1, 200, 1031, 16417})
    for (const int64_t C : {8, 264, 768, 1536, 1544, 2048})
      for (const bool acc : {false, true}) {
        if (M != 77 && C != 768 && C != 1536) continue;
        if (M == 16417 && (C != 768 || !acc)) continue;
        SCOPED_TRACE("M = " + std::to_string(M) + ", C = " + std::to_string(C) +
                     (acc ? ", dx +=" : ""));
        const size_t n = static_cast<size_t>(M * C);
        const uint64_t s = next_seed();
        const auto x = to_bf16(random_bf16(n, s, 2.0)), dy = to_bf16(random_bf16(n, s + 1)),
                   dx0 = to_bf16(random_bf16(n, s + 2));
        const auto w = random_normal<float>(static_cast<size_t>(C), s + 3);
        const auto dw0 = random_normal<float>(static_cast<size_t>(C), s + 4);
        const mc::RmsNormParams p{M, C, 1e-5f};
        DeviceBuffer<float> gw(w);
        // Vector path.
        DeviceBuffer<bf16> vx(x), vdy(dy), vy(n), vdx(dx0);
        DeviceBuffer<float> vdw(dw0), vr(M);
        DeviceBuffer<char> vws(mc::rmsnorm_backward_workspace(p));
        vy.poison();
        vr.poison();
        mc::rmsnorm_forward(p, vx.ptr, gw.ptr, vy.ptr, vr.ptr);
        mc::rmsnorm_backward(p, vx.ptr, gw.ptr, vr.ptr, vdy.ptr, vdx.ptr, vdw.ptr, acc, vws.ptr);
        // Scalar path.
        Misaligned<bf16> sx(x), sdy(dy), sy(n), sdx(dx0);
        DeviceBuffer<float> sdw(dw0), sr(M);
        DeviceBuffer<char> sws(mc::rmsnorm_backward_workspace(p));
        sy.poison();
        sr.poison();
        mc::rmsnorm_forward(p, sx.ptr(), gw.ptr, sy.ptr(), sr.ptr);
        mc::rmsnorm_backward(p, sx.ptr(), gw.ptr, sr.ptr, sdy.ptr(), sdx.ptr(), sdw.ptr, acc,
                             sws.ptr);
        EXPECT_SAME_BITS(vy.download(), sy.download(), "y");
        EXPECT_SAME_BITS(vr.download(), sr.download(), "rstd");
        EXPECT_SAME_BITS(vdx.download(), sdx.download(), "dx");
        EXPECT_SAME_BITS(vdw.download(), sdw.download(), "dw");
      }
}

// The one-pass RMSNorm backward (vector path, C <= 1536) against the vector path's two
// kernels (MOBA_RMSNORM_BWD=split): the same bits, dw's fixed summation order included.
// C 8, 264, 768, 1024, 1280, 1536: 1, 2, ..., 6 vectors a lane (each instantiation of the
// one-pass kernel); M 33, 77: ragged last chunks; 1031: 33 chunks; 16417: 514 (two rounds of
// the reduce's loads).
TEST(VectorPathGpu, RmsNormOnePassEqualsTwoKernels) {
  SKIP_WITHOUT_DEVICE();
  for (const int64_t M : {1, 33, 77, 1000, 1031, 16417})
    for (const int64_t C : {8, 264, 768, 1024, 1280, 1536})
      for (const bool acc : {false, true}) {
        if (M == 16417 && C != 8 && C != 768) continue;
        SCOPED_TRACE("M = " + std::to_string(M) + ", C = " + std::to_string(C) +
                     (acc ? ", dx +=" : ""));
        const size_t n = static_cast<size_t>(M * C);
        const uint64_t s = next_seed();
        const auto x = to_bf16(random_bf16(n, s, 2.0)), dy = to_bf16(random_bf16(n, s + 1)),
                   dx0 = to_bf16(random_bf16(n, s + 2));
        const auto w = random_normal<float>(static_cast<size_t>(C), s + 3);
        const auto dw0 = random_normal<float>(static_cast<size_t>(C), s + 4);
        const mc::RmsNormParams p{M, C, 1e-5f};
        DeviceBuffer<float> gw(w), rstd(M);
        DeviceBuffer<bf16> gx(x), gdy(dy), gy(n), dxa(dx0), dxb(dx0);
        DeviceBuffer<float> dwa(dw0), dwb(dw0);
        DeviceBuffer<char> ws(mc::rmsnorm_backward_workspace(p));
        mc::rmsnorm_forward(p, gx.ptr, gw.ptr, gy.ptr, rstd.ptr);
        if (!acc) {
          dxa.poison();
          dxb.poison();
        }
        mc::rmsnorm_backward(p, gx.ptr, gw.ptr, rstd.ptr, gdy.ptr, dxa.ptr, dwa.ptr, acc, ws.ptr);
        setenv("MOBA_RMSNORM_BWD", "split", 1);
        mc::rmsnorm_backward(p, gx.ptr, gw.ptr, rstd.ptr, gdy.ptr, dxb.ptr, dwb.ptr, acc, ws.ptr);
        unsetenv("MOBA_RMSNORM_BWD");
        EXPECT_SAME_BITS(dxa.download(), dxb.download(), "dx");
        EXPECT_SAME_BITS(dwa.download(), dwb.download(), "dw");
        EXPECT_TRUE(all_finite(from_bf16(dxa.download())));
      }
}

// Pseudo-random bf16 values in [-2, 2) from a hash (splitmix64): the trainer-size cases
// below take 25M elements a tensor, where random_bf16's normal draws would be slow.
std::vector<bf16> hashed_bf16(size_t n, uint64_t seed) {
  std::vector<float> f(n);
  uint64_t z = seed * 0x9e3779b97f4a7c15ull;
  for (float& v : f) {
    uint64_t t = (z += 0x9e3779b97f4a7c15ull);
    t = (t ^ (t >> 30)) * 0xbf58476d1ce4e5b9ull;
    t = (t ^ (t >> 27)) * 0x94d049bb133111ebull;
    t ^= t >> 31;
    v = static_cast<float>(static_cast<double>(t >> 11) * 0x1.0p-53 * 4.0 - 2.0);
  }
  return to_bf16(f);
}

// The trainer's layer at T 8K and 32K (C 768; 256 and 1024 dw chunks, the latter two
// rounds of the reduce's loads): the one-pass backward twice gives the same dx and dw
// bits, the two vector kernels (MOBA_RMSNORM_BWD=split) and the scalar kernels
// (misaligned copies) give them too, and dw is checked against a host sum in double.
TEST(VectorPathGpu, RmsNormTrainerSizes) {
  SKIP_WITHOUT_DEVICE();
  const int64_t C = 768;
  for (const int64_t M : {8192, 32768})
    for (const bool acc : {false, true}) {
      SCOPED_TRACE("M = " + std::to_string(M) + (acc ? ", dx +=" : ""));
      const size_t n = static_cast<size_t>(M * C);
      const uint64_t s = next_seed();
      const auto x = hashed_bf16(n, s), dy = hashed_bf16(n, s + 1), dx0 = hashed_bf16(n, s + 2);
      const auto w = random_normal<float>(static_cast<size_t>(C), s + 3);
      const auto dw0 = random_normal<float>(static_cast<size_t>(C), s + 4);
      const mc::RmsNormParams p{M, C, 1e-5f};
      DeviceBuffer<float> gw(w), rstd(M), gdw(dw0);
      DeviceBuffer<bf16> gx(x), gdy(dy), gy(n), gdx(n);
      DeviceBuffer<char> ws(mc::rmsnorm_backward_workspace(p));
      mc::rmsnorm_forward(p, gx.ptr, gw.ptr, gy.ptr, rstd.ptr);
      auto aligned = [&] {
        if (acc)
          gdx.upload(dx0);
        else
          gdx.poison();
        gdw.upload(dw0);
        ws.poison();
        mc::rmsnorm_backward(p, gx.ptr, gw.ptr, rstd.ptr, gdy.ptr, gdx.ptr, gdw.ptr, acc, ws.ptr);
      };
      aligned();
      const auto dx1 = gdx.download();
      const auto dw1 = gdw.download();
      ASSERT_TRUE(all_finite(from_bf16(dx1)));
      aligned();
      EXPECT_EQ(bits_differ(gdx.download(), dx1), 0) << "dx differs between two identical runs";
      EXPECT_EQ(bits_differ(gdw.download(), dw1), 0) << "dw differs between two identical runs";
      setenv("MOBA_RMSNORM_BWD", "split", 1);
      aligned();
      unsetenv("MOBA_RMSNORM_BWD");
      EXPECT_EQ(bits_differ(gdx.download(), dx1), 0) << "dx: one pass vs two kernels";
      EXPECT_EQ(bits_differ(gdw.download(), dw1), 0) << "dw: one pass vs two kernels";
      {
        Misaligned<bf16> sx(x), sdy(dy), sdx(n);
        if (acc)
          sdx.upload(dx0);
        else
          sdx.poison();
        DeviceBuffer<float> sdw(dw0);
        mc::rmsnorm_backward(p, sx.ptr(), gw.ptr, rstd.ptr, sdy.ptr(), sdx.ptr(), sdw.ptr, acc,
                             ws.ptr);
        EXPECT_SAME_BITS(dx1, sdx.download(), "dx");
        EXPECT_SAME_BITS(dw1, sdw.download(), "dw");
      }
      // dw = dw0 + sum over rows of dy x rstd: in double, and naively (in row order, float).
      const auto r = rstd.download();
      std::vector<double> sd(static_cast<size_t>(C), 0.0);
      std::vector<float> sf(static_cast<size_t>(C), 0.f);
      const auto xf = from_bf16(x), dyf = from_bf16(dy);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < C; ++c) {
          const size_t i = static_cast<size_t>(m * C + c);
          sd[c] += static_cast<double>(dyf[i]) * xf[i] * r[m];
          sf[c] += dyf[i] * xf[i] * r[m];
        }
      std::vector<double> dwd(static_cast<size_t>(C));
      std::vector<float> dwf(static_cast<size_t>(C));
      for (int64_t c = 0; c < C; ++c) {
        dwd[c] = dw0[c] + sd[c];
        dwf[c] = dw0[c] + sf[c];
      }
      compare("dw", Out::kFp32, dw1, dwd, dwf);
    }
}

template <typename T>
void ce_paths_case(int64_t M, int64_t V, bool masked, bool in_place) {
  SCOPED_TRACE("V = " + std::to_string(V) + (sizeof(T) == 4 ? " fp32" : " bf16") +
               (masked ? " masked" : "") + (in_place ? " in place" : ""));
  const size_t n = static_cast<size_t>(M * V);
  const uint64_t s = next_seed();
  const auto zf = random_bf16(n, s, 3.0);
  std::vector<T> z(n);
  if constexpr (std::is_same_v<T, float>)
    z = zf;
  else
    z = to_bf16(zf);
  std::vector<int32_t> tg(M);
  std::vector<uint8_t> mask(M, 1);
  for (int64_t m = 0; m < M; ++m) {
    tg[m] = static_cast<int32_t>((m * 7919 + 13) % V);
    if (masked && m % 3 == 1) mask[m] = 0;
  }
  tg[M - 1] = static_cast<int32_t>(V - 1);  // the last element of a row
  DeviceBuffer<int32_t> gt(tg);
  DeviceBuffer<uint8_t> gm(mask);
  const uint8_t* mk = masked ? gm.ptr : nullptr;
  const mc::CrossEntropyParams p{M, V, sizeof(T) == 4 ? mc::LogitsType::kFp32
                                                      : mc::LogitsType::kBf16};
  const float scale = 0.37f;
  for (const bool fused : {false, true}) {
    SCOPED_TRACE(fused ? "fused" : "forward + backward");
    DeviceBuffer<T> vz(z), vdz(n);
    Misaligned<T> sz(z), sdz(n);
    DeviceBuffer<float> vl(M), vlse(M), sl(M), slse(M);
    vdz.poison();
    sdz.poison();
    vl.poison();
    sl.poison();
    T* vout = in_place ? vz.ptr : vdz.ptr;
    T* sout = in_place ? sz.ptr() : sdz.ptr();
    if (fused) {
      mc::cross_entropy_fused(p, vz.ptr, gt.ptr, mk, scale, vl.ptr, vlse.ptr, vout);
      mc::cross_entropy_fused(p, sz.ptr(), gt.ptr, mk, scale, sl.ptr, slse.ptr, sout);
    } else {
      mc::cross_entropy_forward(p, vz.ptr, gt.ptr, mk, vl.ptr, vlse.ptr);
      mc::cross_entropy_backward(p, vz.ptr, vlse.ptr, gt.ptr, mk, scale, vout);
      mc::cross_entropy_forward(p, sz.ptr(), gt.ptr, mk, sl.ptr, slse.ptr);
      mc::cross_entropy_backward(p, sz.ptr(), slse.ptr, gt.ptr, mk, scale, sout);
    }
    EXPECT_SAME_BITS(vl.download(), sl.download(), "losses");
    EXPECT_SAME_BITS(vlse.download(), slse.download(), "lse");
    EXPECT_SAME_BITS(in_place ? vz.download() : vdz.download(),
                     in_place ? sz.download() : sdz.download(), "dlogits");
  }
}

TEST(VectorPathGpu, CrossEntropy) {
  SKIP_WITHOUT_DEVICE();
  // 8: one vector a row; 1000: one ragged chunk (512 threads x 8 = 4096 elements a chunk for
  // bf16, 2048 for fp32); 4104, 2052: a full chunk and a one-vector one; 8192, 32000: the
  // trainer's sizes.
  for (const int64_t V : {8, 1000, 4104, 8192, 32000}) {
    ce_paths_case<bf16>(7, V, V % 3 == 0, V == 8192);
    ce_paths_case<float>(5, V, V == 1000, V != 1000);
  }
  ce_paths_case<float>(6, 2052, true, false);
}

TEST(VectorPathGpu, Swiglu) {
  SKIP_WITHOUT_DEVICE();
  for (const int64_t n : {1, 7, 8, 4097, 1000003}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const uint64_t s = next_seed();
    const auto a = to_bf16(random_bf16(n, s, 4.0)), b = to_bf16(random_bf16(n, s + 1)),
               dh = to_bf16(random_bf16(n, s + 2));
    DeviceBuffer<bf16> va(a), vb(b), vdh(dh), vh(n), vda(n), vdb(n);
    Misaligned<bf16> sa(a), sb(b), sdh(dh), sh(n), sda(n), sdb(n);
    mc::swiglu_forward(n, va.ptr, vb.ptr, vh.ptr);
    mc::swiglu_backward(n, va.ptr, vb.ptr, vdh.ptr, vda.ptr, vdb.ptr);
    mc::swiglu_forward(n, sa.ptr(), sb.ptr(), sh.ptr());
    mc::swiglu_backward(n, sa.ptr(), sb.ptr(), sdh.ptr(), sda.ptr(), sdb.ptr());
    EXPECT_SAME_BITS(vh.download(), sh.download(), "h");
    EXPECT_SAME_BITS(vda.download(), sda.download(), "da");
    EXPECT_SAME_BITS(vdb.download(), sdb.download(), "db");
  }
}

TEST(VectorPathGpu, Rope) {
  SKIP_WITHOUT_DEVICE();
  for (const int64_t D : {16, 64, 128}) {
    const int64_t T = 300, H = 3;
    std::vector<int32_t> pos;
    for (int64_t t = 0; t < T; ++t) pos.push_back(static_cast<int32_t>(t));
    for (int64_t t = 0; t < 37; ++t) pos.push_back(static_cast<int32_t>(t));
    pos.push_back(static_cast<int32_t>(T));  // outside the table: a NaN row on both paths
    pos.push_back(-1);
    const int64_t M = static_cast<int64_t>(pos.size());
    const model::RopeTable table(T, D, 10000.0);
    const mc::RopeTableCuda gtable(table);
    DeviceBuffer<int32_t> gpos(pos);
    for (const bool inverse : {false, true}) {
      SCOPED_TRACE("D = " + std::to_string(D) + (inverse ? ", inverse" : ""));
      const auto x = to_bf16(random_bf16(static_cast<size_t>(M * H * D), next_seed(), 3.0));
      DeviceBuffer<bf16> vx(x);
      Misaligned<bf16> sx(x);
      mc::rope_apply({M, H, inverse}, gtable, gpos.ptr, vx.ptr);
      mc::rope_apply({M, H, inverse}, gtable, gpos.ptr, sx.ptr());
      EXPECT_SAME_BITS(vx.download(), sx.download(), "x");
    }
  }
}

TEST(VectorPathGpu, AdamW) {
  SKIP_WITHOUT_DEVICE();
  for (const size_t n : {size_t{3}, size_t{4}, size_t{100003}}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const uint64_t s = next_seed();
    const auto p0 = random_normal<float>(n, s, 0.02), g = random_normal<float>(n, s + 1, 1e-2),
               m0 = random_normal<float>(n, s + 2, 1e-3);
    auto v0 = random_normal<float>(n, s + 3, 1e-4);
    for (float& e : v0) e = e * e;
    std::vector<uint8_t> decay(n);
    for (size_t i = 0; i < n; ++i) decay[i] = (i * 2654435761u) % 3 != 0;
    mc::AdamWParams ap;
    ap.n = static_cast<int64_t>(n);
    ap.t = 7;
    ap.lr = 3e-3;
    ap.grad_scale = 0.37f;
    DeviceBuffer<float> vp(p0), vg(g), vm(m0), vv(v0);
    DeviceBuffer<uint8_t> vd(decay);
    DeviceBuffer<bf16> vb(n);
    Misaligned<float> sp(p0), sg(g), sm(m0), sv(v0);
    Misaligned<uint8_t> sd(decay);
    Misaligned<bf16> sb(n);
    mc::adamw_step(ap, vp.ptr, vg.ptr, vm.ptr, vv.ptr, vd.ptr, vb.ptr);
    mc::adamw_step(ap, sp.ptr(), sg.ptr(), sm.ptr(), sv.ptr(), sd.ptr(), sb.ptr());
    EXPECT_SAME_BITS(vp.download(), sp.download(), "params");
    EXPECT_SAME_BITS(vm.download(), sm.download(), "m");
    EXPECT_SAME_BITS(vv.download(), sv.download(), "v");
    EXPECT_SAME_BITS(vb.download(), sb.download(), "params_bf16");
  }
}

TEST(VectorPathGpu, Embedding) {
  SKIP_WITHOUT_DEVICE();
  for (const int64_t C : {8, 768}) {
    SCOPED_TRACE("C = " + std::to_string(C));
    const int64_t V = 300, M = 257;
    // Distinct tokens (a permutation's first M), one outside the vocabulary: each dtable
    // element gets at most one addition, so the atomics' order cannot matter.
    std::vector<int32_t> tok(M);
    for (int64_t m = 0; m < M; ++m) tok[m] = static_cast<int32_t>((m * 7) % V);
    tok[5] = static_cast<int32_t>(V);
    const uint64_t s = next_seed();
    const auto table = to_bf16(random_bf16(static_cast<size_t>(V * C), s)),
               dout = to_bf16(random_bf16(static_cast<size_t>(M * C), s + 1));
    const auto dt0 = random_normal<float>(static_cast<size_t>(V * C), s + 2);
    const mc::EmbeddingParams p{M, V, C};
    DeviceBuffer<int32_t> gt(tok);
    DeviceBuffer<bf16> vtab(table), vout(static_cast<size_t>(M * C)), vdo(dout);
    DeviceBuffer<float> vdt(dt0);
    Misaligned<bf16> stab(table), sout(static_cast<size_t>(M * C)), sdo(dout);
    Misaligned<float> sdt(dt0);
    vout.poison();
    sout.poison();
    mc::embedding_forward(p, gt.ptr, vtab.ptr, vout.ptr);
    mc::embedding_backward(p, gt.ptr, vdo.ptr, vdt.ptr);
    mc::embedding_forward(p, gt.ptr, stab.ptr(), sout.ptr());
    mc::embedding_backward(p, gt.ptr, sdo.ptr(), sdt.ptr());
    EXPECT_SAME_BITS(vout.download(), sout.download(), "out");
    EXPECT_SAME_BITS(vdt.download(), sdt.download(), "dtable");
  }
}

// ---- Fused projections: rope_split / rope_merge, swiglu rows -----------------------------
// The trainer runs one matmul for q, k, v ([wq; wk; wv]) and one for the gate and up
// projections ([w_gate; w_up]); these kernels take its rows apart (forward) and put the
// gradients back together (backward). Each must give exactly the bits of the kernels they
// replace on contiguous copies: rope_apply and swiglu_forward/backward. Both paths:
// aligned buffers (the vector path where D/2 or F is a multiple of 8) and buffers one
// element off a 16-byte boundary (the scalar path).

// Columns [c0, c0 + w) of the rows of x (M rows of width ld), as a contiguous (M, w) array.
template <typename T>
std::vector<T> columns(const std::vector<T>& x, int64_t M, int64_t ld, int64_t c0, int64_t w) {
  std::vector<T> y(static_cast<size_t>(M * w));
  for (int64_t m = 0; m < M; ++m)
    std::copy_n(x.begin() + m * ld + c0, w, y.begin() + m * w);
  return y;
}
// Writes the contiguous (M, w) array y into columns [c0, c0 + w) of x's rows.
template <typename T>
void set_columns(std::vector<T>& x, int64_t M, int64_t ld, int64_t c0, int64_t w,
                 const std::vector<T>& y) {
  for (int64_t m = 0; m < M; ++m)
    std::copy_n(y.begin() + m * w, w, x.begin() + m * ld + c0);
}

struct QkvCase {
  std::vector<int64_t> docs;  // document lengths, packed: positions restart at each one
  int64_t Hq, Hkv, D;
  bool outside = false;       // two more tokens at positions T and -1 (no table row: NaN)
};
class FusedQkvGpu : public ::testing::TestWithParam<QkvCase> {};

TEST_P(FusedQkvGpu, SplitAndMergeMatchRopeApply) {
  SKIP_WITHOUT_DEVICE();
  const QkvCase& c = GetParam();
  std::vector<int32_t> pos;
  int64_t T = 0;
  for (int64_t len : c.docs) {
    for (int64_t t = 0; t < len; ++t) pos.push_back(static_cast<int32_t>(t));
    T = std::max(T, len);
  }
  if (c.outside) {
    pos.push_back(static_cast<int32_t>(T));
    pos.push_back(-1);
  }
  const int64_t M = static_cast<int64_t>(pos.size()), D = c.D;
  const int64_t nq = c.Hq * D, nk = c.Hkv * D, W = nq + 2 * nk;
  const model::RopeTable table(T, D, 10000.0);
  const mc::RopeTableCuda gtable(table);
  DeviceBuffer<int32_t> gpos(pos);
  const mc::QkvParams p{M, c.Hq, c.Hkv};
  const uint64_t s = next_seed();

  // Forward: the fused rows against rope_apply on contiguous copies of their q and k parts.
  {
    const auto qkv = to_bf16(random_bf16(static_cast<size_t>(M * W), s, 3.0));
    DeviceBuffer<bf16> rq(columns(qkv, M, W, 0, nq)), rk(columns(qkv, M, W, nq, nk));
    mc::rope_apply({M, c.Hq, false}, gtable, gpos.ptr, rq.ptr);
    mc::rope_apply({M, c.Hkv, false}, gtable, gpos.ptr, rk.ptr);
    const auto ref_q = rq.download(), ref_k = rk.download();
    const auto ref_v = columns(qkv, M, W, nq + nk, nk);
    for (const bool misaligned : {false, true}) {
      SCOPED_TRACE(misaligned ? "split, scalar path" : "split, aligned");
      std::vector<bf16> q, k, v;
      if (!misaligned) {
        DeviceBuffer<bf16> gqkv(qkv), gq(M * nq), gk(M * nk), gv(M * nk);
        gq.poison();
        gk.poison();
        gv.poison();
        mc::rope_split(p, gtable, gpos.ptr, gqkv.ptr, gq.ptr, gk.ptr, gv.ptr);
        q = gq.download(), k = gk.download(), v = gv.download();
        EXPECT_SAME_BITS(gqkv.download(), qkv, "qkv (input, must be unchanged)");
      } else {
        Misaligned<bf16> gqkv(qkv), gq(M * nq), gk(M * nk), gv(M * nk);
        gq.poison();
        gk.poison();
        gv.poison();
        mc::rope_split(p, gtable, gpos.ptr, gqkv.ptr(), gq.ptr(), gk.ptr(), gv.ptr());
        q = gq.download(), k = gk.download(), v = gv.download();
      }
      EXPECT_SAME_BITS(q, ref_q, "q");
      EXPECT_SAME_BITS(k, ref_k, "k");
      EXPECT_SAME_BITS(v, ref_v, "v");
      if (!c.outside) {  // every element written (the poison gone)
        EXPECT_TRUE(all_finite(from_bf16(q)) && all_finite(from_bf16(k)) &&
                    all_finite(from_bf16(v)));
      }
    }
  }
  // Backward: rope_merge against rope_apply(inverse) on dq, dk and a plain copy of dv.
  {
    const auto dq = to_bf16(random_bf16(static_cast<size_t>(M * nq), s + 1, 3.0));
    const auto dk = to_bf16(random_bf16(static_cast<size_t>(M * nk), s + 2, 3.0));
    const auto dv = to_bf16(random_bf16(static_cast<size_t>(M * nk), s + 3, 3.0));
    DeviceBuffer<bf16> rq(dq), rk(dk);
    mc::rope_apply({M, c.Hq, true}, gtable, gpos.ptr, rq.ptr);
    mc::rope_apply({M, c.Hkv, true}, gtable, gpos.ptr, rk.ptr);
    std::vector<bf16> ref(static_cast<size_t>(M * W));
    set_columns(ref, M, W, 0, nq, rq.download());
    set_columns(ref, M, W, nq, nk, rk.download());
    set_columns(ref, M, W, nq + nk, nk, dv);
    for (const bool misaligned : {false, true}) {
      SCOPED_TRACE(misaligned ? "merge, scalar path" : "merge, aligned");
      std::vector<bf16> out;
      if (!misaligned) {
        DeviceBuffer<bf16> gdq(dq), gdk(dk), gdv(dv), gout(M * W);
        gout.poison();
        mc::rope_merge(p, gtable, gpos.ptr, gdq.ptr, gdk.ptr, gdv.ptr, gout.ptr);
        out = gout.download();
        EXPECT_SAME_BITS(gdq.download(), dq, "dq (input, must be unchanged)");
        EXPECT_SAME_BITS(gdk.download(), dk, "dk (input, must be unchanged)");
        EXPECT_SAME_BITS(gdv.download(), dv, "dv (input, must be unchanged)");
      } else {
        Misaligned<bf16> gdq(dq), gdk(dk), gdv(dv), gout(M * W);
        gout.poison();
        mc::rope_merge(p, gtable, gpos.ptr, gdq.ptr(), gdk.ptr(), gdv.ptr(), gout.ptr());
        out = gout.download();
      }
      EXPECT_SAME_BITS(out, ref, "dqkv");
      if (!c.outside) {
        EXPECT_TRUE(all_finite(from_bf16(out)));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FusedQkvGpu,
    ::testing::Values(QkvCase{{1}, 1, 1, 2},                    // one row, D/2 = 1 (scalar)
                      QkvCase{{33}, 2, 1, 6},                   // odd M, GQA 2:1, D/2 = 3
                      QkvCase{{1}, 2, 2, 64},                   // one row, vector path
                      QkvCase{{5, 1, 70, 23}, 4, 1, 64},        // packed, GQA 4:1, odd M
                      QkvCase{{129, 64, 700}, 8, 2, 128},       // GQA 4:1, D 128
                      QkvCase{{300, 37}, 3, 3, 16, true},       // no GQA, positions outside
                      QkvCase{{77}, 12, 12, 64},                // the benchmark's heads
                      QkvCase{{9, 4}, 4, 1, 6, true}),          // scalar, GQA, outside
    [](const auto& i) {
      return "docs" + std::to_string(i.param.docs.size()) + "_Hq" + std::to_string(i.param.Hq) +
             "_Hkv" + std::to_string(i.param.Hkv) + "_D" + std::to_string(i.param.D) +
             (i.param.outside ? "_outside" : "");
    });

struct SwigluRowsCase {
  int64_t M, F;
};
class SwigluRowsGpu : public ::testing::TestWithParam<SwigluRowsCase> {};

TEST_P(SwigluRowsGpu, MatchesContiguous) {
  SKIP_WITHOUT_DEVICE();
  const auto [M, F] = GetParam();
  const size_t n = static_cast<size_t>(M * F);
  const uint64_t s = next_seed();
  // Rows [a | b]; a spread wide (std 4) as in SwigluGpu, so that silu's tails are hit.
  const auto a = to_bf16(random_bf16(n, s, 4.0)), b = to_bf16(random_bf16(n, s + 1));
  const auto dh = to_bf16(random_bf16(n, s + 2));
  std::vector<bf16> ab(2 * n);
  set_columns(ab, M, 2 * F, 0, F, a);
  set_columns(ab, M, 2 * F, F, F, b);
  // The contiguous kernels (vector path where every pointer is aligned and n % 8 == 0 for
  // the bulk; VectorPathGpu.Swiglu checks it equals the scalar one).
  DeviceBuffer<bf16> ga(a), gb(b), gdh(dh), gh(n), gda(n), gdb(n);
  mc::swiglu_forward(static_cast<int64_t>(n), ga.ptr, gb.ptr, gh.ptr);
  mc::swiglu_backward(static_cast<int64_t>(n), ga.ptr, gb.ptr, gdh.ptr, gda.ptr, gdb.ptr);
  const auto ref_h = gh.download();
  std::vector<bf16> ref_dab(2 * n);
  set_columns(ref_dab, M, 2 * F, 0, F, gda.download());
  set_columns(ref_dab, M, 2 * F, F, F, gdb.download());
  for (const bool misaligned : {false, true}) {
    SCOPED_TRACE(misaligned ? "scalar path" : "aligned");
    std::vector<bf16> h, dab;
    if (!misaligned) {
      DeviceBuffer<bf16> rab(ab), rdh(dh), rh(n), rdab(2 * n);
      rh.poison();
      rdab.poison();
      mc::swiglu_forward_rows(M, F, rab.ptr, rh.ptr);
      mc::swiglu_backward_rows(M, F, rab.ptr, rdh.ptr, rdab.ptr);
      h = rh.download(), dab = rdab.download();
      EXPECT_SAME_BITS(rab.download(), ab, "ab (input, must be unchanged)");
    } else {
      Misaligned<bf16> rab(ab), rdh(dh), rh(n), rdab(2 * n);
      rh.poison();
      rdab.poison();
      mc::swiglu_forward_rows(M, F, rab.ptr(), rh.ptr());
      mc::swiglu_backward_rows(M, F, rab.ptr(), rdh.ptr(), rdab.ptr());
      h = rh.download(), dab = rdab.download();
    }
    EXPECT_SAME_BITS(h, ref_h, "h");
    EXPECT_SAME_BITS(dab, ref_dab, "[da | db]");
    EXPECT_TRUE(all_finite(from_bf16(h)) && all_finite(from_bf16(dab)));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SwigluRowsGpu,
                         ::testing::Values(SwigluRowsCase{1, 1}, SwigluRowsCase{1, 8},
                                           SwigluRowsCase{7, 3}, SwigluRowsCase{5, 7},
                                           SwigluRowsCase{1029, 8}, SwigluRowsCase{3, 1000},
                                           SwigluRowsCase{37, 2048}, SwigluRowsCase{33, 2049},
                                           SwigluRowsCase{129, 512}),
                         [](const auto& i) {
                           return "M" + std::to_string(i.param.M) + "_F" +
                                  std::to_string(i.param.F);
                         });

TEST(FusedApiGpu, RejectsOverlapsAndBadShapes) {
  SKIP_WITHOUT_DEVICE();  // RopeTableCuda allocates
  const model::RopeTable table(8, 16, 10000.0);
  const mc::RopeTableCuda gtable(table);
  DeviceBuffer<int32_t> pos(std::vector<int32_t>{0, 1, 2, 3});
  DeviceBuffer<bf16> buf(4 * 4 * 16 * 2);
  bf16* b = buf.ptr;
  // M 4, Hq 2, Hkv 1, D 16: qkv rows of 64; q (4, 32), k, v (4, 16).
  const mc::QkvParams p{4, 2, 1};
  EXPECT_THROW(mc::rope_split({4, 0, 1}, gtable, pos.ptr, b, b + 256, b + 384, b + 448), Error);
  EXPECT_THROW(mc::rope_split({4, 2, 0}, gtable, pos.ptr, b, b + 256, b + 384, b + 448), Error);
  EXPECT_THROW(mc::rope_split(p, gtable, pos.ptr, b, b + 200, b + 384, b + 448), Error);
  EXPECT_THROW(mc::rope_split(p, gtable, pos.ptr, b, b + 256, b + 270, b + 448), Error);
  EXPECT_THROW(mc::rope_merge(p, gtable, pos.ptr, b + 256, b + 384, b + 448, b + 200), Error);
  EXPECT_NO_THROW(mc::rope_split(p, gtable, pos.ptr, b, b + 256, b + 384, b + 448));
  EXPECT_NO_THROW(mc::rope_merge(p, gtable, pos.ptr, b + 256, b + 384, b + 448, b));
  EXPECT_THROW(mc::swiglu_forward_rows(4, 16, b, b + 100), Error);          // h inside ab
  EXPECT_THROW(mc::swiglu_backward_rows(4, 16, b, b + 300, b + 64), Error);  // dab over ab
  EXPECT_THROW(mc::swiglu_backward_rows(4, 16, b, b + 300, b + 200), Error);  // dab over dh
  EXPECT_NO_THROW(mc::swiglu_backward_rows(4, 16, b, b + 128, b + 192));
  CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- API edge (no device needed: the checks come before any CUDA call) -------------------
TEST(LayersCudaApi, RejectsBadShapes) {
  EXPECT_THROW(mc::rmsnorm_forward({4, 0, 1e-5f}, nullptr, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(mc::cross_entropy_forward({4, 0}, nullptr, nullptr, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(mc::cross_entropy_forward({4, mc::kMaxVocab + 1}, nullptr, nullptr, nullptr, nullptr,
                                         nullptr),
               Error);
  EXPECT_THROW(mc::swiglu_forward(-1, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(mc::swiglu_forward_rows(-1, 8, nullptr, nullptr), Error);
  EXPECT_THROW(mc::swiglu_backward_rows(4, 0, nullptr, nullptr, nullptr), Error);
  mc::AdamWParams a;
  a.n = 10;
  a.t = 0;
  EXPECT_THROW(mc::adamw_step(a, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(mc::embedding_forward({3, 0, 8}, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(mc::rmsnorm_forward({4, 8, 1e-5f}, nullptr, nullptr, nullptr, nullptr), Error);
}

// ---- Timing at a trainer's sizes (printed, not asserted) ---------------------------------
// B*T = 16384 tokens of width 768 (F = 2048, V = 32000 logits in bf16): what one micro-batch
// of the 12-layer bar model moves through these kernels. GB/s counts each kernel's
// compulsory reads and writes once.
TEST(LayersCudaTiming, TrainerSizes) {
  SKIP_WITHOUT_DEVICE();
  const int64_t M = 16384, C = 768, F = 2048, V = 32000;
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  auto time = [&](const char* what, double bytes, auto&& fn) {
    fn();  // warm-up
    CUDA_CHECK(cudaEventRecord(e0));
    const int reps = 10;
    for (int r = 0; r < reps; ++r) fn();
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    ms /= reps;
    std::printf("    %-22s %8.3f ms  %7.1f GB/s\n", what, ms, bytes / (ms * 1e6));
  };
  DeviceBuffer<bf16> x(to_bf16(random_bf16(M * C, 1))), y(M * C), dx(M * C);
  DeviceBuffer<float> w(random_normal<float>(C, 2)), dw(C), rstd(M);
  const mc::RmsNormParams rp{M, C, 1e-5f};
  DeviceBuffer<char> ws(mc::rmsnorm_backward_workspace(rp));
  time("rmsnorm fwd", 4.0 * M * C, [&] { mc::rmsnorm_forward(rp, x.ptr, w.ptr, y.ptr, rstd.ptr); });
  time("rmsnorm bwd", 8.0 * M * C, [&] {
    mc::rmsnorm_backward(rp, x.ptr, w.ptr, rstd.ptr, y.ptr, dx.ptr, dw.ptr, true, ws.ptr);
  });
  // The two-kernel vector path (dx, then the dw partials), for comparison.
  setenv("MOBA_RMSNORM_BWD", "split", 1);
  time("rmsnorm bwd (split)", 8.0 * M * C, [&] {
    mc::rmsnorm_backward(rp, x.ptr, w.ptr, rstd.ptr, y.ptr, dx.ptr, dw.ptr, true, ws.ptr);
  });
  unsetenv("MOBA_RMSNORM_BWD");
  {
    // Constant inputs (0x3f3f = 0.746 in bf16): these kernels' speed does not depend on the
    // values, and drawing 10^8 normal samples on the host would take longer than the timing.
    DeviceBuffer<bf16> a(M * F), b(M * F), h(M * F), da(M * F);
    CUDA_CHECK(cudaMemset(a.ptr, 0x3f, sizeof(bf16) * M * F));
    CUDA_CHECK(cudaMemset(b.ptr, 0x3f, sizeof(bf16) * M * F));
    time("swiglu fwd", 6.0 * M * F, [&] { mc::swiglu_forward(M * F, a.ptr, b.ptr, h.ptr); });
    time("swiglu bwd", 10.0 * M * F,
         [&] { mc::swiglu_backward(M * F, a.ptr, b.ptr, h.ptr, da.ptr, h.ptr); });
  }
  {
    // The fused gate/up rows (M, 2F): what the trainer runs.
    DeviceBuffer<bf16> ab(2 * M * F), h(M * F), dab(2 * M * F);
    CUDA_CHECK(cudaMemset(ab.ptr, 0x3f, sizeof(bf16) * 2 * M * F));
    CUDA_CHECK(cudaMemset(h.ptr, 0x3f, sizeof(bf16) * M * F));
    time("swiglu fwd rows", 6.0 * M * F, [&] { mc::swiglu_forward_rows(M, F, ab.ptr, h.ptr); });
    time("swiglu bwd rows", 10.0 * M * F,
         [&] { mc::swiglu_backward_rows(M, F, ab.ptr, h.ptr, dab.ptr); });
  }
  {
    DeviceBuffer<bf16> z(M * V);
    CUDA_CHECK(cudaMemset(z.ptr, 0x3f, sizeof(bf16) * M * V));
    std::vector<int32_t> tg(M);
    for (int64_t m = 0; m < M; ++m) tg[m] = static_cast<int32_t>((m * 7919) % V);
    DeviceBuffer<int32_t> gt(tg);
    DeviceBuffer<float> loss(M), lse(M);
    const mc::CrossEntropyParams cp{M, V, mc::LogitsType::kBf16};
    time("cross-entropy fwd", 2.0 * M * V,
         [&] { mc::cross_entropy_forward(cp, z.ptr, gt.ptr, nullptr, loss.ptr, lse.ptr); });
    time("cross-entropy bwd", 4.0 * M * V, [&] {
      mc::cross_entropy_backward(cp, z.ptr, lse.ptr, gt.ptr, nullptr, 1.0f / M, z.ptr);
    });
    time("cross-entropy fused", 4.0 * M * V, [&] {
      mc::cross_entropy_fused(cp, z.ptr, gt.ptr, nullptr, 1.0f / M, loss.ptr, lse.ptr, z.ptr);
    });
  }
  {
    const model::RopeTable table(8192, 64, 10000.0);
    const mc::RopeTableCuda gtable(table);
    std::vector<int32_t> pos(M);
    for (int64_t m = 0; m < M; ++m) pos[m] = static_cast<int32_t>(m % 8192);
    DeviceBuffer<int32_t> gpos(pos);
    time("rope (12 heads, D 64)", 4.0 * M * C,
         [&] { mc::rope_apply({M, 12, false}, gtable, gpos.ptr, x.ptr); });
    // The fused QKV rows (M, 3C) -> q, k rotated and v copied; and back.
    DeviceBuffer<bf16> qkv(3 * M * C), q(M * C), k(M * C), v(M * C);
    CUDA_CHECK(cudaMemset(qkv.ptr, 0x3f, sizeof(bf16) * 3 * M * C));
    CUDA_CHECK(cudaMemset(q.ptr, 0x3f, sizeof(bf16) * M * C));
    CUDA_CHECK(cudaMemset(k.ptr, 0x3f, sizeof(bf16) * M * C));
    CUDA_CHECK(cudaMemset(v.ptr, 0x3f, sizeof(bf16) * M * C));
    time("rope_split (12+12+12)", 12.0 * M * C, [&] {
      mc::rope_split({M, 12, 12}, gtable, gpos.ptr, qkv.ptr, q.ptr, k.ptr, v.ptr);
    });
    time("rope_merge (12+12+12)", 12.0 * M * C, [&] {
      mc::rope_merge({M, 12, 12}, gtable, gpos.ptr, q.ptr, k.ptr, v.ptr, qkv.ptr);
    });
  }
  {
    const int64_t V8 = 8192;  // the trainer's vocabulary; every token a distinct-ish row
    std::vector<int32_t> tok(M);
    for (int64_t m = 0; m < M; ++m) tok[m] = static_cast<int32_t>((m * 7919) % V8);
    DeviceBuffer<int32_t> gt(tok);
    DeviceBuffer<bf16> table(V8 * C);
    DeviceBuffer<float> dtable(V8 * C);
    CUDA_CHECK(cudaMemset(table.ptr, 0x3f, sizeof(bf16) * V8 * C));
    CUDA_CHECK(cudaMemset(dtable.ptr, 0, sizeof(float) * V8 * C));
    const mc::EmbeddingParams ep{M, V8, C};
    time("embedding fwd", 4.0 * M * C,
         [&] { mc::embedding_forward(ep, gt.ptr, table.ptr, y.ptr); });
    time("embedding bwd", 10.0 * M * C,
         [&] { mc::embedding_backward(ep, gt.ptr, x.ptr, dtable.ptr); });
  }
  {
    const int64_t n = 85'000'000;  // the bar model's parameters, embeddings included
    DeviceBuffer<float> p(n), g(n), m(n), v(n);
    DeviceBuffer<uint8_t> d(n);
    DeviceBuffer<bf16> b(n);
    CUDA_CHECK(cudaMemset(p.ptr, 0, n * 4));
    CUDA_CHECK(cudaMemset(g.ptr, 0, n * 4));
    CUDA_CHECK(cudaMemset(m.ptr, 0, n * 4));
    CUDA_CHECK(cudaMemset(v.ptr, 0, n * 4));
    CUDA_CHECK(cudaMemset(d.ptr, 1, n));
    mc::AdamWParams ap;
    ap.n = n;
    ap.lr = 1e-3;
    time("adamw (85M params)", 31.0 * n,
         [&] { mc::adamw_step(ap, p.ptr, g.ptr, m.ptr, v.ptr, d.ptr, b.ptr); });
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
}

}  // namespace
}  // namespace moba::test
