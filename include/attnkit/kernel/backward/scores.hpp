#pragma once
/// \file
/// The backward's logits of one strip of query rows against one key tile: the
/// forward's Q·Kᵀ register tile (simd::qk_tile on the same scaled Q rows and the
/// same K values, so the bits are the forward's), then the options' element terms,
/// range masks and the key set's partial-tile test, exactly as kernel/prefill/
/// logits.hpp applies them (same operations, same vector/scalar choice per tile: a
/// top_k selection recomputed here keeps the forward's keys). With soft-capping the
/// derivative c' = 1 − tanh² of each logit comes out beside it (the chain rule).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../../core/mask.hpp"
#include "../prefill/logits.hpp"
#include "call.hpp"

namespace attnkit::detail {

/// Rows [row0, row0 + rows) of one query head that the backward takes together (at
/// most a tile's height), with their key intervals and the bounds of those.
struct bwd_strip {
  index_t row0 = 0;
  int rows = 0;
  const index_t* lo = nullptr;  ///< per row: [lo, hi) of visible keys
  const index_t* hi = nullptr;
  index_t lo_lo = 0, lo_hi = 0, hi_lo = 0, hi_hi = 0;
};

inline bwd_strip make_strip(index_t row0, int rows, const index_t* lo, const index_t* hi) {
  bwd_strip s{row0, rows, lo, hi, lo[0], lo[0], hi[0], hi[0]};
  for (int r = 1; r < rows; ++r) {
    s.lo_lo = std::min(s.lo_lo, lo[r]);
    s.lo_hi = std::max(s.lo_hi, lo[r]);
    s.hi_lo = std::min(s.hi_lo, hi[r]);
    s.hi_hi = std::max(s.hi_hi, hi[r]);
  }
  return s;
}

/// How a strip meets the key tile [j0, j0 + BN).
enum class tile_kind : unsigned char {
  empty,    ///< no row sees a key of it: neither computed nor stored
  full,     ///< every key visible to every row, no element term: no mask at all
  masked,   ///< the options' masks and terms apply
  pattern,  ///< masked, and the key set's own test applies (a partial tile)
};

template <class Arch, class Pol, class Keys>
tile_kind classify_tile(const bwd_call<Arch, Pol, Keys>& c, index_t b, index_t h, const bwd_strip& st, index_t j0) {
  constexpr index_t BN = simd::tile_shape<Arch>::keys;
  if (st.hi_hi <= j0 || st.lo_lo >= j0 + BN || st.hi_hi <= st.lo_lo || j0 >= c.sh.k_len) return tile_kind::empty;
  bool partial = false;
  if constexpr (Keys::active) {
    const tile_class tc = c.keys.classify(c.no_block, b, h, st.row0, st.row0 + st.rows, j0, j0 + BN);
    if (tc == tile_class::empty) return tile_kind::empty;
    partial = tc == tile_class::partial;
  }
  if (partial) return tile_kind::pattern;
  const bool full = st.lo_hi <= j0 && st.hi_lo >= j0 + BN && !c.elementwise;
  return full ? tile_kind::full : tile_kind::masked;
}

/// apply_elementwise_tile of the forward (kernel/prefill/logits.hpp), the same
/// operations in the same order, plus c' = 1 − t² of the soft-cap into cp (row stride
/// ldc) when cp is not null.
template <class Arch, int R, int NC>
ATTNKIT_FORCE_INLINE void bwd_elementwise_tile(typename simd::ops<Arch>::vf (&acc)[R][NC], index_t row0, index_t j0,
                                               const options& opt, index_t b, index_t h, batch_keys bk,
                                               const index_t* lo, const index_t* hi, float unit, float* cp, long ldc) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  const float cap = opt.softcap, inv_unit = unit == 1.0f ? 1.0f : ln2;
  const float slope = opt.alibi_slopes.empty() ? 0.0f : opt.alibi_slopes[static_cast<std::size_t>(h)] * unit;
  const vf io = O::iota(static_cast<float>(j0));
  for (int r = 0; r < R; ++r) {
    const index_t i = row0 + r;
    const float* brow = opt.bias.data ? broadcast_row(opt.bias, b, h, i) : nullptr;
    const std::uint8_t* mrow = opt.mask.data ? broadcast_row(opt.mask, b, h, i) : nullptr;
    const float flo = static_cast<float>(lo[r]), fhi = static_cast<float>(hi[r]);
    const vf diag = O::set1(static_cast<float>(i + bk.delta));
    for (int c = 0; c < NC; ++c) {
      const vf idx = io + O::set1(static_cast<float>(c * W));
      const index_t j = j0 + c * W;
      vf x = acc[r][c];
      if (cap > 0.0f) {
        const vf t = O::tanh(x * O::set1(inv_unit / cap));
        x = O::set1(cap * unit) * t;
        if (cp) O::store(cp + r * ldc + c * W, O::set1(1.0f) - t * t);
      }
      if (brow) x = O::fma(O::load(brow + j), O::set1(unit), x);
      if (slope != 0.0f) x = x - O::set1(slope) * O::abs(diag - idx);
      x = O::mask_range(x, idx, flo, fhi);
      if (mrow) x = O::mask_bool(x, mrow + j);
      acc[r][c] = x;
    }
  }
}

/// apply_elementwise of the forward (the scalar path of a tile that crosses Lk), with
/// c' as above.
inline void bwd_elementwise_scalar(float* tile, index_t tile_stride, index_t len, int R, index_t row0, index_t j0,
                                   const options& opt, index_t b, index_t h, batch_keys bk, const index_t* lo,
                                   const index_t* hi, float unit, float* cp, long ldc) {
  const float cap = opt.softcap, inv_unit = unit == 1.0f ? 1.0f : ln2;
  const float slope = opt.alibi_slopes.empty() ? 0.0f : opt.alibi_slopes[static_cast<std::size_t>(h)];
  for (int r = 0; r < R; ++r) {
    const index_t i = row0 + r;
    const float* brow = opt.bias.data ? broadcast_row(opt.bias, b, h, i) : nullptr;
    const std::uint8_t* mrow = opt.mask.data ? broadcast_row(opt.mask, b, h, i) : nullptr;
    float* s = tile + r * tile_stride;
    for (index_t jj = 0; jj < len; ++jj) {
      const index_t j = j0 + jj;
      if (j < lo[r] || j >= hi[r] || (mrow && !mrow[j])) {
        s[jj] = neg_inf;
        continue;
      }
      float x = s[jj];
      if (cap > 0.0f) {
        const float t = std::tanh(x * inv_unit / cap);
        x = cap * t * unit;
        if (cp) cp[r * ldc + jj] = 1.0f - t * t;
      }
      if (brow) x += brow[j] * unit;
      if (slope != 0.0f) x -= slope * static_cast<float>(std::abs(i + bk.delta - j)) * unit;
      s[jj] = x;
    }
  }
}

/// The key set's test on a partial tile (apply_pattern_partial of the forward):
/// a value filter (top_k), lane masks from allowed_bits, or the element test /
/// additive term.
template <class Arch, int R, int NC, class Pol, class Keys>
ATTNKIT_FORCE_INLINE void bwd_pattern_partial(const bwd_call<Arch, Pol, Keys>& c, index_t row0, index_t j0, index_t b,
                                              index_t h, typename simd::ops<Arch>::vf (&acc)[R][NC]) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  if constexpr (Keys::filters) {
    for (int r = 0; r < R; ++r) c.keys.template filter<Arch, NC>(c.no_block, b, h, row0 + r, j0, acc[r]);
  } else if constexpr (NC * W <= 64 && Keys::has_bits) {
    const int n = static_cast<int>(std::min<index_t>(NC * W, c.sh.k_len - j0));
    for (int r = 0; r < R; ++r) {
      const std::uint64_t bits = n > 0 ? c.keys.allowed_bits(b, h, row0 + r, j0, n) : 0;
      for (int k = 0; k < NC; ++k) acc[r][k] = O::mask_bits(acc[r][k], static_cast<std::uint32_t>(bits >> (k * W)));
    }
  } else {
    alignas(64) float t[NC * W];
    for (int r = 0; r < R; ++r) {
      const index_t row = row0 + r;
      for (int k = 0; k < NC; ++k) O::store(t + k * W, acc[r][k]);
      for (int jj = 0; jj < NC * W; ++jj) {
        const index_t j = j0 + jj;
        if (j >= c.sh.k_len) {
          t[jj] = neg_inf;
        } else if constexpr (Keys::adjusts) {
          const float a = c.keys.adjust(b, h, row, j);
          t[jj] = a == neg_inf ? neg_inf : t[jj] + a * logit_unit<Pol>;
        } else if (!c.keys.allowed(b, h, row, j)) {
          t[jj] = neg_inf;
        }
      }
      for (int k = 0; k < NC; ++k) acc[r][k] = O::load(t + k * W);
    }
  }
}

/// The final logits (the forward's units: log2 for softmax, natural otherwise) of a
/// strip of R rows against the key tile at j0, masked (−inf) unless `kind` is full.
/// q: the strip's scaled Q rows (stride qs); kpanel: Kᵀ of the tile (rows kstride
/// apart). cp (row stride ldc): c' of the soft-cap, when set.
template <class Arch, int R, class Pol, class Keys>
ATTNKIT_FORCE_INLINE void strip_scores(const bwd_call<Arch, Pol, Keys>& c, index_t b, index_t h, const bwd_strip& st,
                                       const float* q, long qs, index_t j0, const float* kpanel, long kstride,
                                       tile_kind kind, float* tmp,
                                       typename simd::ops<Arch>::vf (&acc)[R][simd::tile_shape<Arch>::key_vectors],
                                       float* cp, long ldc) {
  using O = simd::ops<Arch>;
  constexpr int NC = simd::tile_shape<Arch>::key_vectors, W = O::width, BN = simd::tile_shape<Arch>::keys;
  simd::qk_tile<Arch, R, NC>(q, qs, kpanel, c.sh.head_dim, acc, kstride);
  if (kind == tile_kind::full) return;
  const batch_keys bk = keys_of_batch(c.opt, b, c.sh.q_len, c.sh.k_len);
  if (c.elementwise && j0 + BN <= c.sh.k_len) {
    bwd_elementwise_tile<Arch, R, NC>(acc, st.row0, j0, c.opt, b, h, bk, st.lo, st.hi, logit_unit<Pol>, cp, ldc);
  } else if (c.elementwise) {  // the tile crosses Lk: bias/mask rows end inside it
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < NC; ++k) O::store(tmp + r * BN + k * W, acc[r][k]);
    bwd_elementwise_scalar(tmp, BN, BN, R, st.row0, j0, c.opt, b, h, bk, st.lo, st.hi, logit_unit<Pol>, cp, ldc);
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < NC; ++k) acc[r][k] = O::load(tmp + r * BN + k * W);
  } else {
    const auto io = O::iota(static_cast<float>(j0));
    for (int r = 0; r < R; ++r) {
      const float lo = static_cast<float>(st.lo[r]), hi = static_cast<float>(st.hi[r]);
      for (int k = 0; k < NC; ++k) acc[r][k] = O::mask_range(acc[r][k], io + O::set1(float(k * W)), lo, hi);
    }
  }
  if constexpr (Keys::active)
    if (kind == tile_kind::pattern) bwd_pattern_partial<Arch, R, NC>(c, st.row0, j0, b, h, acc);
}

}  // namespace attnkit::detail
