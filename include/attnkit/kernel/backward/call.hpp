#pragma once
/// \file
/// What every stage of the backward pass works with: the call's resolved facts
/// (bwd_call) and the per-row state the stages hand to each other (bwd_rows), all
/// O(B·Hq·Lq·(D + Dv)) — a copy of Q and dO, never an Lq × Lk buffer.
#include <cstdint>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/backward_options.hpp"
#include "../../core/dropout.hpp"
#include "../../core/options.hpp"
#include "../../core/validate.hpp"
#include "../../parallel/workspace.hpp"
#include "../prefill/call.hpp"
#include "../prefill/units.hpp"

namespace attnkit::detail {

/// Keys per key block of the backward: its dK/dV accumulators stay in L1/L2 while
/// every query row that sees the block streams past. A multiple of every arch's
/// tile width (simd::tile_shape::keys).
inline constexpr index_t bwd_key_block = 64;
/// Query rows per block of the three accumulating products (10 strips of 6).
inline constexpr int bwd_query_block = 60;

/// Row flags (bwd_rows::flags).
enum bwd_row_flag : unsigned char {
  row_q_nonfinite = 1,   ///< the query row holds a NaN or Inf
  row_do_nonfinite = 2,  ///< the dO row holds a NaN or Inf (and the row has keys)
};

/// The per-row state of a backward call, [B·Hq·Lq] rows in the skeleton's row order
/// (row (b, h, r) at (b·Hq + h)·Lq + r; r is the token unless the key set reorders
/// rows). Kept by the call's workspace.
struct bwd_rows {
  aligned_vector<float> q;     ///< [rows][Dp]: τ·unit·q (the forward's scaled rows), zero-padded
  aligned_vector<float> dout;  ///< [rows][Dvp]: dO, zero-padded; 0 for rows without gradient
  aligned_vector<float> lse2;  ///< softmax: lse·log2 e (+inf: the row has no key)
  aligned_vector<float> dvec;  ///< D_i = dO_i · o_i (0 for rows without gradient)
  aligned_vector<float> inv_z;  ///< normalization::sum: 1 / Σ_j w_ij (0: no gradient)
  aligned_vector<float> rho, sigma;  ///< regulariser: E_ij = ρ_i (s_ij − σ_i) (log2 units)
  aligned_vector<float> thr, tie;    ///< top_k: the forward's per-row threshold and tie key
  aligned_vector<index_t> lo, hi;    ///< top_k: the kept keys' interval
  std::vector<unsigned char> flags;  ///< bwd_row_flag bits
  std::size_t bytes() const {
    std::size_t n = flags.capacity() + (lo.capacity() + hi.capacity()) * sizeof(index_t);
    for (const auto* v : {&q, &dout, &lse2, &dvec, &inv_z, &rho, &sigma, &thr, &tie}) n += v->capacity() * sizeof(float);
    return n;
  }
};

/// Everything a backward task needs to know about the call, resolved once.
template <class Arch, class Pol, class Keys>
struct bwd_call {
  const Keys& keys;
  const Pol& pol;
  const problem_shape& sh;
  const options& opt;
  const backward_options& bo;
  bwd_rows& rows;
  /// An empty block_scratch for the key-set hooks that take one (the backward keeps
  /// its data-dependent state, top_k's thresholds, in bwd_rows).
  const block_scratch& no_block;
  index_t dp = 0, dvp = 0;  ///< D and Dv rounded up to the vector width
  float q_scale = 1.0f;     ///< τ·logit_unit<Pol>
  float dq_scale = 1.0f;    ///< τ: dQ = τ·Σ dX·K
  float dk_scale = 1.0f;    ///< 1/logit_unit: dK = Σ dXᵀ·(τ·unit·Q) / unit
  bool elementwise = false;  ///< mask / bias / ALiBi / softcap present
  bool reg = false;          ///< a regulariser adds E to dS
  dropout_mask drop{dropout{}};
  float keep_scale = 1.0f;  ///< 1/(1 − p)

  index_t row(index_t b, index_t h, index_t r) const noexcept { return (b * sh.q_heads + h) * sh.q_len + r; }
  /// The token of skeleton row r of query head h (itself unless rows are reordered).
  index_t token(index_t h, index_t r) const {
    if constexpr (Keys::reordered)
      return keys.token(h, r);
    else
      return r;
  }
  /// The original key index of packed key j of kv head g.
  index_t kv_token(index_t g, index_t j) const {
    if constexpr (Keys::reordered)
      return keys.kv_token(g, j);
    else
      return j;
  }
};

}  // namespace attnkit::detail
