// libmoba_ops.so, CPU half and the error plumbing: the C ABI of moba_ops.h over the CPU
// reference (attention/attention_cpu.h). Every entry point runs its body through guard(),
// which turns any C++ exception into an error code and a thread-local message.
#include "pyops/moba_ops.h"

#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/gate.h"
#include "attention/layout.h"
#include "core/build_info.h"
#include "core/error.h"
#include "pyops/guard.h"

namespace moba::pyops {

thread_local std::string g_last_error;

void set_error(std::string msg) { g_last_error = std::move(msg); }

int guard_failed(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const moba::Error& err) {
    set_error(err.what());
    // CUDA_CHECK throws moba::Error too; those are failures at run time, not bad input.
    return std::strncmp(err.what(), "CUDA error", 10) == 0 ? MOBA_OPS_RUNTIME : MOBA_OPS_INVALID;
  } catch (const std::bad_alloc&) {
    set_error("out of host memory");
  } catch (const std::exception& err) {
    set_error(err.what());
  } catch (...) {
    set_error("unknown C++ exception");
  }
  return MOBA_OPS_RUNTIME;
}

attn::Layout layout_of(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D) {
  MOBA_CHECK(cu != nullptr && B >= 1, "cu_seqlens must hold at least 2 offsets, got B = ", B);
  return attn::Layout::varlen(std::vector<int64_t>(cu, cu + B + 1), Hq, Hkv, D);
}

}  // namespace moba::pyops

namespace {

using namespace moba;
using moba::pyops::guard;
using moba::pyops::layout_of;

template <typename Real>
std::span<const Real> in(const void* p, size_t n) {
  MOBA_CHECK(p != nullptr || n == 0, "null input pointer");
  return {static_cast<const Real*>(p), n};
}
template <typename Real>
std::span<Real> out(void* p, size_t n) {
  MOBA_CHECK(p != nullptr || n == 0, "null output pointer");
  return {static_cast<Real*>(p), n};
}

attn::Selection selection_of(const attn::Layout& l, int64_t K, const int32_t* sel) {
  attn::Selection s;
  s.top_k = K;
  s.num_q_heads = l.num_q_heads;
  const size_t n = l.lse_elems() * static_cast<size_t>(K);
  s.blocks.assign(sel, sel + n);  // (N, Hq, K)
  return s;
}

// The softmax scale of a call: 0 or below selects 1/sqrt(D).
attn::Options options_of(double scale) { return {scale > 0 ? scale : 0.0}; }

// What the MoBA forward and backward entry points share, checked in this order: the layout,
// the configuration (block size S, top-k K), the caller's (N, Hq, K) selection, the options.
struct MobaCall {
  attn::Layout l;
  attn::MobaConfig cfg;
  attn::Selection s;
  attn::Options opt;
};
MobaCall moba_call(const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                   int64_t K, double scale, const int32_t* sel) {
  attn::Layout l = layout_of(cu, B, Hq, Hkv, D);
  const attn::MobaConfig cfg{S, K};
  cfg.validate();
  attn::Selection s = selection_of(l, K, sel);
  return {std::move(l), cfg, std::move(s), options_of(scale)};
}

// Calls f.template operator()<float or double>() after checking dtype.
template <typename F>
void dispatch(int dtype, F&& f) {
  MOBA_CHECK(dtype == MOBA_OPS_F32 || dtype == MOBA_OPS_F64,
             "CPU attention takes float32 or float64 (dtype code ", dtype, ")");
  if (dtype == MOBA_OPS_F32) f.template operator()<float>();
  else f.template operator()<double>();
}

}  // namespace

extern "C" {

const char* moba_ops_last_error(void) { return moba::pyops::g_last_error.c_str(); }

int moba_cpu_gate(int dtype, const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                  int64_t S, int64_t K, const void* q, const void* k, int32_t* sel) {
  return guard([&] {
    const attn::Layout l = layout_of(cu, B, Hq, Hkv, D);
    const attn::MobaConfig cfg{S, K};
    cfg.validate();
    dispatch(dtype, [&]<typename Real>() {
      const attn::Selection s = attn::moba_gate<Real>(l, cfg, in<Real>(q, l.q_elems()),
                                                      in<Real>(k, l.kv_elems()));
      std::memcpy(sel, s.blocks.data(), sizeof(int32_t) * s.blocks.size());  // (N, Hq, K)
    });
  });
}

int moba_cpu_moba_forward(int dtype, const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv,
                          int64_t D, int64_t S, int64_t K, double scale, const int32_t* sel,
                          const void* q, const void* k, const void* v, void* o, void* lse) {
  return guard([&] {
    const MobaCall c = moba_call(cu, B, Hq, Hkv, D, S, K, scale, sel);
    const attn::Layout& l = c.l;
    dispatch(dtype, [&]<typename Real>() {
      attn::cpu::moba_forward<Real>(l, c.cfg, c.s, c.opt, in<Real>(q, l.q_elems()),
                                    in<Real>(k, l.kv_elems()), in<Real>(v, l.kv_elems()),
                                    out<Real>(o, l.q_elems()), out<Real>(lse, l.lse_elems()));
    });
  });
}

int moba_cpu_moba_backward(int dtype, const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv,
                           int64_t D, int64_t S, int64_t K, double scale, const int32_t* sel,
                           const void* q, const void* k, const void* v, const void* o,
                           const void* lse, const void* dout, void* dq, void* dk, void* dv) {
  return guard([&] {
    const MobaCall c = moba_call(cu, B, Hq, Hkv, D, S, K, scale, sel);
    const attn::Layout& l = c.l;
    dispatch(dtype, [&]<typename Real>() {
      attn::cpu::moba_backward<Real>(
          l, c.cfg, c.s, c.opt, in<Real>(q, l.q_elems()), in<Real>(k, l.kv_elems()),
          in<Real>(v, l.kv_elems()), in<Real>(o, l.q_elems()), in<Real>(lse, l.lse_elems()),
          in<Real>(dout, l.q_elems()), out<Real>(dq, l.q_elems()), out<Real>(dk, l.kv_elems()),
          out<Real>(dv, l.kv_elems()));
    });
  });
}

int moba_cpu_dense_forward(int dtype, const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv,
                           int64_t D, double scale, const void* q, const void* k, const void* v,
                           void* o, void* lse) {
  return guard([&] {
    const attn::Layout l = layout_of(cu, B, Hq, Hkv, D);
    const attn::Options opt = options_of(scale);
    dispatch(dtype, [&]<typename Real>() {
      attn::cpu::dense_forward<Real>(l, opt, in<Real>(q, l.q_elems()), in<Real>(k, l.kv_elems()),
                                     in<Real>(v, l.kv_elems()), out<Real>(o, l.q_elems()),
                                     out<Real>(lse, l.lse_elems()));
    });
  });
}

int moba_cpu_dense_backward(int dtype, const int64_t* cu, int64_t B, int64_t Hq, int64_t Hkv,
                            int64_t D, double scale, const void* q, const void* k,
                            const void* v, const void* o, const void* lse, const void* dout,
                            void* dq, void* dk, void* dv) {
  return guard([&] {
    const attn::Layout l = layout_of(cu, B, Hq, Hkv, D);
    const attn::Options opt = options_of(scale);
    dispatch(dtype, [&]<typename Real>() {
      attn::cpu::dense_backward<Real>(
          l, opt, in<Real>(q, l.q_elems()), in<Real>(k, l.kv_elems()), in<Real>(v, l.kv_elems()),
          in<Real>(o, l.q_elems()), in<Real>(lse, l.lse_elems()), in<Real>(dout, l.q_elems()),
          out<Real>(dq, l.q_elems()), out<Real>(dk, l.kv_elems()), out<Real>(dv, l.kv_elems()));
    });
  });
}

}  // extern "C"

extern "C" const char* moba_ops_build_info(void) {
  static const std::string info = "moba " + moba::version() + " (" + moba::compiler() +
                                  ", cuda " + (moba_ops_has_cuda() ? "on" : "off") + ")";
  return info.c_str();
}
