// CPU reference attention: dense causal and MoBA, forward and backward, in float or
// double. Plain loops written to be read next to the maths; the GPU kernels are checked
// against these. Shapes as in layout.h; lse is the natural log-sum-exp of the scaled
// scores of each row, the quantity flash-attention kernels keep for the backward.
#pragma once

#include <span>

#include "attention/gate.h"
#include "attention/layout.h"

namespace moba::attn::cpu {

// Dense causal attention: token t of a sequence attends to positions <= t of the same
// sequence. out (N, Hq, D), lse (N, Hq).
template <typename Real>
void dense_forward(const Layout& layout, const Options& opt, std::span<const Real> q,
                   std::span<const Real> k, std::span<const Real> v, std::span<Real> out,
                   std::span<Real> lse);

// Gradients of sum(out * dout) with respect to q, k and v; dq, dk, dv are overwritten.
template <typename Real>
void dense_backward(const Layout& layout, const Options& opt, std::span<const Real> q,
                    std::span<const Real> k, std::span<const Real> v,
                    std::span<const Real> out, std::span<const Real> lse,
                    std::span<const Real> dout, std::span<Real> dq, std::span<Real> dk,
                    std::span<Real> dv);

// MoBA attention over a given selection (from moba_gate, or built by hand): each selected
// past block is attended in full, the current block causally (docs/moba.md, step 6).
template <typename Real>
void moba_forward(const Layout& layout, const MobaConfig& cfg, const Selection& sel,
                  const Options& opt, std::span<const Real> q, std::span<const Real> k,
                  std::span<const Real> v, std::span<Real> out, std::span<Real> lse);

// Gradients through the attention of the given selection only (the gate has none).
template <typename Real>
void moba_backward(const Layout& layout, const MobaConfig& cfg, const Selection& sel,
                   const Options& opt, std::span<const Real> q, std::span<const Real> k,
                   std::span<const Real> v, std::span<const Real> out,
                   std::span<const Real> lse, std::span<const Real> dout, std::span<Real> dq,
                   std::span<Real> dk, std::span<Real> dv);

}  // namespace moba::attn::cpu
