#pragma once
/// \file
/// The two element passes of the backward on one strip × key tile, around the
/// register tiles S = Q·Kᵀ and dP = dO·Vᵀ:
///   weights:  P (the weights applied to V, dropout included; dV takes them),
///             F (the factor of dS), E (the regulariser's term), from S;
///   dscores:  dA = m ∘ dP (m: dropout factors), dS = F ∘ (dA − D_i + E), also into
///             d bias, then × c' of the soft-cap: the logits' gradient dX that dQ
///             and dK take.
/// Per weight function:
///   softmax  P = 2^(s − lse₂)          F = P            (FlashAttention-2)
///   sum      P = w(s)/Z                F = w'(s)/Z
///   none     P = w(s)                  F = w'(s), and D_i, E absent
/// A pair whose F is exactly 0 (a masked key, a zero derivative) passes no gradient,
/// also when dO or V hold NaN there (as the forward lets a zero weight ignore V).
#include <cstdint>
#include <type_traits>

#include "scores.hpp"

namespace attnkit::detail {

/// The buffers of one query block × key block (row stride bwd_key_block).
struct bwd_bufs {
  float* p = nullptr;   ///< weights applied to V
  float* f = nullptr;   ///< factor of dS (== p for softmax without dropout)
  float* e = nullptr;   ///< regulariser term (null without one)
  float* cp = nullptr;  ///< soft-cap derivative c' (null without soft-capping)
  float* ds = nullptr;  ///< dX: the logits' gradient (× c')
  const std::uint64_t* keep = nullptr;  ///< dropout keep bits per row of the block (bit t: key block column t)
};

/// x where bit l of `keep` is set (lane l), else 0.
template <class Arch>
ATTNKIT_FORCE_INLINE typename simd::ops<Arch>::vf zero_unless(typename simd::ops<Arch>::vf x, std::uint32_t keep) {
  using O = simd::ops<Arch>;
  if constexpr (simd::is_scalar_v<Arch>) {
    return (keep & 1u) ? x : 0.0f;
  } else {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) return _mm512_maskz_mov_ps(static_cast<__mmask16>(keep), x);
#endif
    alignas(64) float t[O::width];
    O::store(t, x);
    for (int l = 0; l < O::width; ++l)
      if (!((keep >> l) & 1u)) t[l] = 0.0f;
    return O::load(t);
  }
}

/// x, or 0 where `zero` is −inf.
template <class Arch>
ATTNKIT_FORCE_INLINE typename simd::ops<Arch>::vf zero_where_masked(typename simd::ops<Arch>::vf s,
                                                                    typename simd::ops<Arch>::vf x) {
  using O = simd::ops<Arch>;
  return math::select(s == O::set1(neg_inf), O::set1(0.0f), x);
}

/// The weights pass on the logits `acc` of strip rows [srow, srow + R) of the block
/// (buffer columns from col). Sets visible[r] when row r has a finite logit here.
template <class Arch, int R, class Pol, class Keys>
ATTNKIT_FORCE_INLINE void bwd_weights(const bwd_call<Arch, Pol, Keys>& c, index_t b, index_t h, index_t row0,
                                      typename simd::ops<Arch>::vf (&acc)[R][simd::tile_shape<Arch>::key_vectors],
                                      tile_kind kind, const bwd_bufs& buf, int srow, index_t col,
                                      const weight_params_t<Pol>& wp, unsigned char* visible) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int NC = simd::tile_shape<Arch>::key_vectors, W = O::width;
  constexpr index_t KB = bwd_key_block;
  const bool masked = kind != tile_kind::full, dropping = c.drop.active();
  const bwd_rows& rows = c.rows;
  for (int r = 0; r < R; ++r) {
    const auto u = static_cast<std::size_t>(c.row(b, h, row0 + r));
    const index_t off = (srow + r) * KB + col;
    const std::uint64_t keep = dropping ? buf.keep[srow + r] >> col : 0;
    [[maybe_unused]] const vf l2 = O::set1(online_softmax<Pol> ? rows.lse2[u] : 0.0f);
    [[maybe_unused]] const vf iz = O::set1(Pol::normalization == normalization::sum ? rows.inv_z[u] : 0.0f);
    if (visible) {
      if (!masked) {
        visible[r] = 1;
      } else {
        float n = 0.0f;
        for (int k = 0; k < NC; ++k) n += O::count_finite(acc[r][k]);
        if (n > 0.0f) visible[r] = 1;
      }
    }
    for (int k = 0; k < NC; ++k) {
      const vf s = acc[r][k];
      vf p, f;
      if constexpr (online_softmax<Pol>) {
        p = use_precise_exp(c.pol) ? O::exp2_precise(s - l2) : O::exp2_fast(s - l2);
        if (masked) p = zero_where_masked<Arch>(s, p);  // also for a NaN LSE
        f = p;
      } else {
        vf w = eval_weight(c.pol, s, wp), d = eval_derivative(c.pol, s, wp);
        if (masked) w = zero_where_masked<Arch>(s, w), d = zero_where_masked<Arch>(s, d);
        if constexpr (Pol::normalization == normalization::sum)
          p = w * iz, f = d * iz;
        else
          p = w, f = d;
      }
      if (dropping) {
        O::store(buf.f + off + k * W, f);
        p = zero_unless<Arch>(p * O::set1(c.keep_scale), static_cast<std::uint32_t>(keep >> (k * W)));
      } else if constexpr (!online_softmax<Pol>) {
        O::store(buf.f + off + k * W, f);
      }
      O::store(buf.p + off + k * W, p);
      if (c.reg) O::store(buf.e + off + k * W, O::set1(rows.rho[u]) * (s - O::set1(rows.sigma[u])));
    }
  }
}

/// Adds one strip row's dS (before c') to d bias: keys j_first … j_first + n − 1
/// (packed order) of row (b, h, token i). `target(b, g, h, i)` gives the row of
/// d bias (or of this task's slice) to add to, with its key stride.
template <class Arch, class Pol, class Keys, class Target>
void bwd_add_dbias(const bwd_call<Arch, Pol, Keys>& c, const Target& target, index_t b, index_t h, index_t i,
                   index_t j_first, const float* ds, index_t n) {
  const index_t g = h / c.sh.group();
  const auto [row, stride] = target(b, g, h, i);
  for (index_t t = 0; t < n && j_first + t < c.sh.k_len; ++t)
    if (ds[t] != 0.0f) row[c.kv_token(g, j_first + t) * stride] += ds[t];
}

/// The dscores pass of strip rows [srow, srow + R) (first skeleton row row0) on the
/// key tile at buffer column col of the key block at j0: dP = dO·Vᵀ from the packed
/// Vᵀ panel vt (rows bwd_key_block apart), then dS into buf.ds.
template <class Arch, int R, class Pol, class Keys, class Target>
ATTNKIT_FORCE_INLINE void bwd_dscores(const bwd_call<Arch, Pol, Keys>& c, index_t b, index_t h, index_t row0,
                                      tile_kind kind, bool careful, const bwd_bufs& buf, int srow, index_t col,
                                      index_t j0, const float* vt, const Target* dbias) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int NC = simd::tile_shape<Arch>::key_vectors, W = O::width, BN = simd::tile_shape<Arch>::keys;
  constexpr index_t KB = bwd_key_block;
  constexpr bool has_d = Pol::normalization != normalization::none;
  const bwd_rows& rows = c.rows;
  const float* dO = rows.dout.data() + c.row(b, h, row0) * c.dvp;
  vf acc[R][NC];
  simd::qk_tile<Arch, R, NC>(dO, c.dvp, vt + col, c.sh.value_dim, acc, KB);
  const bool guard = careful || kind != tile_kind::full, dropping = c.drop.active();
  const float* F = (dropping || !online_softmax<Pol>) ? buf.f : buf.p;
  for (int r = 0; r < R; ++r) {
    const auto u = static_cast<std::size_t>(c.row(b, h, row0 + r));
    const index_t off = (srow + r) * KB + col;
    const vf dv = O::set1(has_d ? rows.dvec[u] : 0.0f);
    const std::uint64_t keep = dropping ? buf.keep[srow + r] >> col : 0;
    for (int k = 0; k < NC; ++k) {
      vf da = acc[r][k];
      if (dropping) da = zero_unless<Arch>(da * O::set1(c.keep_scale), static_cast<std::uint32_t>(keep >> (k * W)));
      const vf f = O::load(F + off + k * W);
      vf g = has_d ? da - dv : da;
      if (c.reg) g = g + O::load(buf.e + off + k * W);
      vf ds = f * g;
      if (guard) ds = math::select(f == O::set1(0.0f), O::set1(0.0f), ds);
      O::store(buf.ds + off + k * W, ds);
    }
  }
  if (dbias)
    for (int r = 0; r < R; ++r)
      bwd_add_dbias(c, *dbias, b, h, c.token(h, row0 + r), j0 + col, buf.ds + (srow + r) * KB + col, BN);
  if (buf.cp && kind != tile_kind::full)
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < NC; ++k) {
        float* x = buf.ds + (srow + r) * KB + col + k * W;
        const vf ds = O::load(x);  // masked pairs stay 0 whatever c' holds there
        O::store(x, math::select(ds == O::set1(0.0f), ds, ds * O::load(buf.cp + (srow + r) * KB + col + k * W)));
      }
}

}  // namespace attnkit::detail
