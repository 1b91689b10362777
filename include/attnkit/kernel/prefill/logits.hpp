#pragma once
/// \file
/// A strip's logits: the Q·Kᵀ register tile, then the options' element terms
/// (softcap, bias, ALiBi, bool mask, key ranges) and the pattern's partial-tile test,
/// stored to the strip's logit buffer with each row's running chunk maximum.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../../core/mask.hpp"
#include "../../core/options.hpp"
#include "../../simd/microkernel.hpp"
#include "call.hpp"
#include "units.hpp"

namespace attnkit::detail {

/// Element path: applies range mask, soft-capping, bias, ALiBi and the boolean
/// mask to one R×len tile held in `tile` (logits in units of `unit`: log2 e for
/// log2-scaled softmax logits, 1 for natural ones; see logit_unit).
inline void apply_elementwise(float* tile, index_t tile_stride, index_t len, int R, index_t row0, index_t j0,
                              const options& opt, index_t b, index_t h, batch_keys bk, const index_t* lo,
                              const index_t* hi, float unit) {
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
      if (cap > 0.0f) x = cap * std::tanh(x * inv_unit / cap) * unit;
      if (brow) x += brow[j] * unit;
      if (slope != 0.0f) x -= slope * static_cast<float>(std::abs(i + bk.delta - j)) * unit;
      s[jj] = x;
    }
  }
}

/// Inserts x into a descending list of K entries (−inf = empty slot).
inline void topk_insert(float* list, int K, float x) noexcept {
  if (!(x > list[K - 1])) return;
  int pos = K - 1;
  while (pos > 0 && list[pos - 1] < x) {
    list[pos] = list[pos - 1];
    --pos;
  }
  list[pos] = x;
}

/// Vector form of apply_elementwise for tiles wholly inside [0, Lk): works on the
/// register tile, loading bias and mask rows as vectors.
template <class Arch, int R, int NC>
inline void apply_elementwise_tile(typename simd::ops<Arch>::vf (&acc)[R][NC], index_t row0, index_t j0,
                                   const options& opt, index_t b, index_t h, batch_keys bk, const index_t* lo,
                                   const index_t* hi, float unit) {
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
      if (cap > 0.0f) x = O::set1(cap * unit) * O::tanh(x * O::set1(inv_unit / cap));
      if (brow) x = O::fma(O::load(brow + j), O::set1(unit), x);
      if (slope != 0.0f) x = x - O::set1(slope) * O::abs(diag - idx);
      x = O::mask_range(x, idx, flo, fhi);
      if (mrow) x = O::mask_bool(x, mrow + j);
      acc[r][c] = x;
    }
  }
}

/// The final logits (log2 units) of one strip of R rows against one key tile, with
/// the options' masks applied (masked → −inf) when Masked. Shared by strip_step and
/// by patterns that look at the logits before the main pass (top_k), so both see
/// bitwise the same values. NK ≤ key_vectors: the strip may compute only the NK
/// vectors of keys from j0 on (kpanel then points into a wider panel). Forced
/// inline: out of line, the register tile would go through memory (GCC does not
/// inline the masked instances by itself).
template <class Arch, int R, bool Masked, class Pol, class Keys, int NK>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void strip_logits(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int r0, index_t row0, index_t j0,
                  const float* kpanel, index_t b, index_t h, batch_keys bk,
                  typename simd::ops<Arch>::vf (&acc)[R][NK]) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  using tile = simd::tile_shape<Arch>;
  constexpr int W = O::width, NC = NK, BN = tile::keys, span = NK * W;
  const index_t D = c.shape.head_dim;
  simd::qk_tile<Arch, R, NC>(sc.q.data() + r0 * D, D, kpanel, D, acc, BN);

  if constexpr (Masked) {
    // The vector/scalar choice follows the whole tile, not the computed vectors: the
    // two paths round softcap's tanh differently, and top_k's passes must agree.
    const index_t tile_end = j0 / BN * BN + BN;
    if (c.elementwise && tile_end <= c.shape.k_len) {
      apply_elementwise_tile<Arch, R, NC>(acc, row0 + r0, j0, c.opt, b, h, bk, sc.lo.data() + r0, sc.hi.data() + r0,
                                          logit_unit<Pol>);
    } else if (c.elementwise) {  // the tile crosses Lk: bias/mask rows end inside it
      float* t = sc.tile.data();
      for (int r = 0; r < R; ++r)
        for (int k = 0; k < NC; ++k) O::store(t + r * BN + k * W, acc[r][k]);
      apply_elementwise(t, BN, span, R, row0 + r0, j0, c.opt, b, h, bk, sc.lo.data() + r0, sc.hi.data() + r0,
                        logit_unit<Pol>);
      for (int r = 0; r < R; ++r)
        for (int k = 0; k < NC; ++k) acc[r][k] = O::load(t + r * BN + k * W);
    } else {
      const vf io = O::iota(static_cast<float>(j0));
      for (int r = 0; r < R; ++r) {
        const float lo = static_cast<float>(sc.lo[r0 + r]), hi = static_cast<float>(sc.hi[r0 + r]);
        for (int k = 0; k < NC; ++k) acc[r][k] = O::mask_range(acc[r][k], io + O::set1(float(k * W)), lo, hi);
      }
    }
  } else {
    (void)sc, (void)row0, (void)j0, (void)b, (void)h, (void)bk;
  }
}

/// The pattern's own test on a tile it classifies partial, applied to a strip's
/// logit vectors (masked → −inf): a value filter (top_k) or the element test.
template <class Arch, int R, int NC, class Pol, class Keys>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void apply_pattern_partial(const quadratic_call<Arch, Pol, Keys>& c, const block_scratch& sc, int r0, index_t row0, index_t j0, index_t b,
                                  index_t h, typename simd::ops<Arch>::vf (&acc)[R][NC]) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  if constexpr (Keys::filters) {
    for (int r = 0; r < R; ++r)  // value-based test on the row's logits (top_k)
      if (row0 + r0 + r < c.shape.q_len) c.keys.template filter<Arch, NC>(sc, b, h, row0 + r0 + r, j0, acc[r]);
  } else if constexpr (NC * W <= 64 && Keys::has_bits) {
    // The pattern's test as bits per row, applied as lane masks. Keys past Lk never
    // reach the pattern (nor do padding rows).
    const int n = static_cast<int>(std::min<index_t>(NC * W, c.shape.k_len - j0));
    for (int r = 0; r < R; ++r) {
      const index_t row = row0 + r0 + r;
      if (row >= c.shape.q_len) continue;
      const std::uint64_t bits = n > 0 ? c.keys.allowed_bits(b, h, row, j0, n) : 0;
      for (int k = 0; k < NC; ++k) acc[r][k] = O::mask_bits(acc[r][k], static_cast<std::uint32_t>(bits >> (k * W)));
    }
  } else {  // the pattern's element test on a tile it calls partial
    alignas(64) float t[NC * W];
    for (int r = 0; r < R; ++r) {
      // Padding rows of the last strip and keys past Lk never reach the pattern:
      // its hooks may index per-row or per-key tables (found by ASan).
      const index_t row = row0 + r0 + r;
      if (row >= c.shape.q_len) continue;
      for (int k = 0; k < NC; ++k) O::store(t + k * W, acc[r][k]);
      for (int jj = 0; jj < NC * W; ++jj) {
        const index_t j = j0 + jj;
        if (j >= c.shape.k_len) {
          t[jj] = neg_inf;
        } else if constexpr (Keys::adjusts) {  // additive: −inf masks
          const float a = c.keys.adjust(b, h, row, j);
          t[jj] = a == neg_inf ? neg_inf : t[jj] + a * logit_unit<Pol>;  // assigned: a masked NaN logit stays masked
        } else if (!c.keys.allowed(b, h, row, j)) {
          t[jj] = neg_inf;
        }
      }
      for (int k = 0; k < NC; ++k) acc[r][k] = O::load(t + k * W);
    }
  }
}

/// Logits of one strip against key vectors [c0, c1) of the tile at j0, stored to the
/// strip's logit rows `srow` (row stride `ss`): masked (options and pattern) unless
/// `full`. Each row's running chunk maximum (a vector per row at `rmax`) takes the
/// new logits while they are in registers, so the weights pass needs no maximum
/// pass of its own (x86 max drops NaN: row_weights finds NaN rows another way).
template <class Arch, class Pol, int R, int NK, class Keys>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline void tile_logits_to(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int r0, index_t row0,
                           index_t j0, const float* kpanel, index_t b, index_t h, batch_keys bk, bool full,
                           bool partial, float* srow, index_t ss, float* rmax) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  typename O::vf acc[R][NK];
  if (full) {
    strip_logits<Arch, R, false>(c, sc, r0, row0, j0, kpanel, b, h, bk, acc);
  } else {
    strip_logits<Arch, R, true>(c, sc, r0, row0, j0, kpanel, b, h, bk, acc);
    if constexpr (Keys::active)
      if (partial) apply_pattern_partial<Arch, R>(c, sc, r0, row0, j0, b, h, acc);
  }
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r) {
    typename O::vf mx = O::load(rmax + r * W);
    ATTNKIT_UNROLL
    for (int k = 0; k < NK; ++k) {
      O::store(srow + r * ss + k * W, acc[r][k]);
      if constexpr (online_softmax<Pol>) mx = O::max(acc[r][k], mx);
    }
    if constexpr (online_softmax<Pol>) O::store(rmax + r * W, mx);
  }
}

/// Instrumentation of one row's logits in a chunk (log2 units, masked = −inf):
/// allowed-key count, key-0 logit, running top-k.
template <class Arch, class Pol, class Keys>
void observe_logits(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int row, const float* x,
                    index_t n, index_t key0_column) {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  if (c.count_dynamic) {
    float cnt = 0.0f;
    for (index_t k = 0; k < n; k += W) cnt += O::count_finite(O::load(x + k));
    sc.count[row] += static_cast<index_t>(cnt);
  }
  if (key0_column >= 0) sc.first[row] = x[key0_column];
  if (const int K = c.obs_topk; K > 0) {
    float* list = sc.topk.data() + row * K;
    for (index_t j = 0; j < n; ++j) topk_insert(list, K, x[j]);
  }
}

}  // namespace attnkit::detail
