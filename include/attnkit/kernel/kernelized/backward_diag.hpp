#pragma once
/// \file
/// The backward of the block-diagonal softmax half (LLN+Diag, block_diagonal.hpp)
/// for one (batch, query head): query position p = i + Δ sees the keys of its
/// block [⌊p/D⌋·D, ⌊p/D⌋·D + D) within its prefix, s_ij = τ q_i·k_j, P = softmax
/// over them, and the half enters the output with weight w = 1 − kernel_share:
///   dP_ij = w·dO_i·v_j,  dS_ij = P_ij (dP_ij − Σ_j' P_ij' dP_ij'),
///   dq_i += τ Σ_j dS_ij k_j,  dk_j += τ dS_ij q_i,  dv_j += w·P_ij dO_i.
/// At most D keys per row: O(N·D·(D + Dv)) per head.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../../core/aligned.hpp"
#include "../../core/dtype.hpp"
#include "../../core/mask.hpp"
#include "../../core/options.hpp"
#include "../../simd/microkernel.hpp"
#include "skeleton.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// A worker's buffers for the block-diagonal backward (in its workspace slot).
struct block_diagonal_backward_scratch {
  aligned_vector<float> keys, vals, p, dp;
  std::size_t bytes() const { return (keys.capacity() + vals.capacity() + p.capacity() + dp.capacity()) * sizeof(float); }
};

/// Adds head (b, h)'s block-diagonal half to dq rows (b, h, ·) and to the per-key
/// accumulators dk [lk][D] and dv [lk][dv_stride].
template <class Arch, class KV>
void block_diagonal_backward(float weight, const problem_shape& sh, index_t b, index_t h,
                             const tensor_view<const float>& q, const tensor_view<const KV>& k,
                             const tensor_view<const KV>& v, const tensor_view<const float>& dout,
                             const tensor_view<float>& dq, float* dk, float* dv, index_t dv_stride,
                             const options& opt, block_diagonal_backward_scratch& s) {
  const index_t D = sh.head_dim, Dv = sh.value_dim, g = h / sh.group(), Lq = sh.q_len;
  const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
  const float tau = static_cast<float>(resolved_scale(opt, D));
  for (auto* x : {&s.keys, &s.vals})
    if (x->size() < static_cast<std::size_t>(D * std::max(D, Dv))) x->resize(static_cast<std::size_t>(D * std::max(D, Dv)));
  for (auto* x : {&s.p, &s.dp})
    if (x->size() < static_cast<std::size_t>(D)) x->resize(static_cast<std::size_t>(D));
  index_t cached = -1;  // the block whose K and V rows are in s.keys / s.vals
  for (index_t i = 0; i < Lq; ++i) {
    const index_t pos = i + bk.delta, p = kernelized_prefix(opt, bk, i);
    const index_t blk = pos >= 0 ? pos / D : -((-pos + D - 1) / D);
    const index_t j0 = std::max<index_t>(blk * D, 0), j1 = std::min(blk * D + D, p);
    if (j1 <= j0) continue;  // no key in the block: this half adds 0
    if (blk != cached) {     // rows of one block share its keys (widened once)
      for (index_t j = j0; j < std::min(blk * D + D, bk.lk); ++j) {
        widen(k.row(b, g, j), s.keys.data() + (j - j0) * D, D);
        widen(v.row(b, g, j), s.vals.data() + (j - j0) * Dv, Dv);
      }
      cached = blk;
    }
    const index_t n = j1 - j0;
    const float* qi = q.row(b, h, i);
    const float* doi = dout.row(b, h, i);
    float m = -std::numeric_limits<float>::infinity();
    for (index_t t = 0; t < n; ++t) {
      s.p[static_cast<std::size_t>(t)] = tau * simd::dot<Arch>(qi, s.keys.data() + t * D, D);
      m = std::max(m, s.p[static_cast<std::size_t>(t)]);
    }
    double l = 0;
    for (index_t t = 0; t < n; ++t) l += std::exp(static_cast<double>(s.p[static_cast<std::size_t>(t)]) - m);
    double Di = 0;
    for (index_t t = 0; t < n; ++t) {
      const float pt = static_cast<float>(std::exp(static_cast<double>(s.p[static_cast<std::size_t>(t)]) - m) / l);
      s.p[static_cast<std::size_t>(t)] = pt;
      const float dpt = weight * simd::dot<Arch>(doi, s.vals.data() + t * Dv, Dv);
      s.dp[static_cast<std::size_t>(t)] = dpt;
      Di += static_cast<double>(pt) * dpt;
    }
    float* dqi = dq.row(b, h, i);
    for (index_t t = 0; t < n; ++t) {
      const float pt = s.p[static_cast<std::size_t>(t)];
      const float ds = tau * pt * (s.dp[static_cast<std::size_t>(t)] - static_cast<float>(Di));
      simd::axpy<Arch>(ds, s.keys.data() + t * D, dqi, D);
      simd::axpy<Arch>(ds, qi, dk + (j0 + t) * D, D);
      simd::axpy<Arch>(weight * pt, doi, dv + (j0 + t) * dv_stride, Dv);
    }
  }
}

}  // namespace attnkit::detail
