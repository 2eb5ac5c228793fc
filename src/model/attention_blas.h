// Dense causal and MoBA attention through matrix products: the trainer's CPU path. It
// computes what the plain-loop reference of src/attention computes (tests/model/
// attention_blas_test.cpp checks it against that reference), several times faster: per
// sequence, kv head and tile of R query rows, S = Q K^T and O = P V are BLAS calls, the
// mask and the softmax plain loops over the tile.
//
// MoBA is computed as masked dense attention over keys [0, t]: the keys outside the
// selected blocks are set to -inf before the softmax. It does the work of dense
// attention (no speed-up on the CPU), but the same function as the reference; the
// "executed FLOPs" the trainer reports still count MoBA's selected pairs (docs/trainer.md).
#pragma once

#include "attention/gate.h"
#include "attention/layout.h"

namespace moba::model {

// q, out (N, Hq, D); k, v (N, Hkv, D); lse (N, Hq). `sel` null means dense causal; with a
// selection, `block_size` is MoBA's S. scale: the softmax scale (1/sqrt(D) in the model).
template <typename Real>
void attention_blas_forward(const attn::Layout& layout, const attn::Selection* sel,
                            int64_t block_size, double scale, const Real* q, const Real* k,
                            const Real* v, Real* out, Real* lse);

// dq (N, Hq, D), dk, dv (N, Hkv, D): overwritten with the gradients of sum(out * dout).
template <typename Real>
void attention_blas_backward(const attn::Layout& layout, const attn::Selection* sel,
                             int64_t block_size, double scale, const Real* q, const Real* k,
                             const Real* v, const Real* out, const Real* lse, const Real* dout,
                             Real* dq, Real* dk, Real* dv);

}  // namespace moba::model
