#pragma once
/// \file
/// pattern::top_k on the quadratic skeleton, in two passes per query block.
///
/// Pass 1 (`prepare`, before the main pass): for each 6-row strip, the final logits
/// of every key tile the rows may see are computed with the skeleton's own
/// strip_logits (so they are bitwise the values the main pass will recompute) into a
/// per-thread strip buffer of 6 × Lk floats. Each row then gets a threshold: its
/// k-th largest logit t and the key index of the last tie kept (ties go to the
/// smaller index). Selection is linear: the k-th largest of ≥ k group maxima is a
/// lower bound of t, so only the few logits above it go to std::nth_element.
///
/// Pass 2 (the skeleton's main pass) drops, on every visited tile, the logits below
/// the row's threshold (`filter`, on the register tile), and skips tiles in which no
/// row of the strip keeps a key (`classify`). Cost: two Q·Kᵀ products, one P·V and
/// O(Lk) selection per row — O(Lq·Lk·D) like dense attention, never an Lq × Lk buffer.
#include <algorithm>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "../policy/sparse.hpp"
#include "quadratic.hpp"

namespace attnkit::detail {

/// The selection of the query block a thread is working on (pass 1 → pass 2).
struct top_k_block {
  index_t row0 = 0, tiles = 0;
  /// Per row, in log2 units: key j with logit x is dropped iff x < thr or
  /// (x == thr and j > tie). Keep-all rows: thr = −inf; keep-none rows: thr = +inf.
  aligned_vector<float> thr, tie;
  /// [strip][key tile]: 0 no row keeps a key there, 1 some do, 2 every row keeps all.
  std::vector<unsigned char> on;
  aligned_vector<float> logits;  ///< pass 1 strip buffer [rows][span]
  std::vector<float> vals;       ///< candidates of one row (permuted by nth_element)
};

template <class Arch>
struct top_k_keys {
  static constexpr bool active = true;
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  static constexpr int MR = simd::tile_shape<Arch>::rows, BN = simd::tile_shape<Arch>::keys;
  static constexpr int NC = simd::tile_shape<Arch>::key_vectors, W = O::width;

  index_t k = 0, k_len = 0;

  /// Per-thread state: a task runs start to end on one thread, so pass 1 of a block
  /// and its main pass see the same state.
  static top_k_block& state() {
    thread_local top_k_block s;
    return s;
  }

  key_range hull(index_t, index_t, index_t) const { return {0, k_len}; }

  tile_class classify(index_t, index_t, index_t i0, index_t, index_t j0, index_t) const {
    const top_k_block& s = state();
    const unsigned char on = s.on[static_cast<std::size_t>((i0 - s.row0) / MR * s.tiles + j0 / BN)];
    return on == 0 ? tile_class::empty : on == 1 ? tile_class::partial : tile_class::full;
  }

  template <class A, int N>
  void filter(index_t, index_t, index_t i, index_t j0, vf (&row)[N]) const {
    static_assert(std::is_same_v<A, Arch> && N == NC);
    const top_k_block& s = state();
    const auto r = static_cast<std::size_t>(i - s.row0);
    const float t = s.thr[r], tie = s.tie[r];
    if (t == neg_inf) return;  // keeps all (also keeps NaN logits)
    const vf io = O::iota(static_cast<float>(j0));
    for (int c = 0; c < N; ++c) {
      const vf x = row[c], idx = io + O::set1(static_cast<float>(c * W));
      if constexpr (simd::is_scalar_v<Arch>)
        row[c] = (x < t || (x == t && idx > tie)) ? neg_inf : x;
      else
        row[c] = xsimd::select((x < O::set1(t)) | ((x == O::set1(t)) & (idx > O::set1(tie))), O::set1(neg_inf), x);
    }
  }

  /// Pass 1 on rows [row0, row0 + n) of head (b, h); sc holds the scaled Q rows and
  /// the rows' intervals [lo, hi) from the options, narrowed here to the kept keys.
  template <class Pol>
  void prepare(const quadratic_call<Arch, Pol, top_k_keys>& c, block_scratch& sc, index_t b, index_t h,
               batch_keys bk, index_t row0, int n) const {
    top_k_block& s = state();
    const index_t D = c.shape.head_dim, tiles = c.kv.key_tiles;
    const index_t strips = (n + MR - 1) / MR;
    s.row0 = row0;
    s.tiles = tiles;
    s.on.assign(static_cast<std::size_t>(strips * tiles), 0);
    auto grow = [](auto& vec, index_t size) {
      if (vec.size() < static_cast<std::size_t>(size)) vec.resize(static_cast<std::size_t>(size));
    };
    grow(s.thr, n);
    grow(s.tie, n);
    grow(s.logits, MR * tiles * BN);
    grow(s.vals, tiles * BN);
    const float* khead = c.kv.k_head(b * c.shape.kv_heads + h / c.shape.group());

    for (int r0 = 0; r0 < n; r0 += MR) {
      const int R = std::min(MR, n - r0);
      index_t lo = bk.lk, hi = 0;
      for (int r = r0; r < r0 + R; ++r)
        if (sc.hi[r] > sc.lo[r]) lo = std::min(lo, sc.lo[r]), hi = std::max(hi, sc.hi[r]);
      if (hi <= lo) {  // no row of the strip sees a key: nothing to select, no tile visited
        for (int r = r0; r < r0 + R; ++r) s.thr[r] = neg_inf, s.tie[r] = 0.0f;
        continue;
      }
      const index_t kb0 = lo / BN, kb1 = (hi + BN - 1) / BN, span = (kb1 - kb0) * BN;
      for (index_t kb = kb0; kb < kb1; ++kb) {
        const float* kpanel = khead + kb * D * BN;
        float* dst = s.logits.data() + (kb - kb0) * BN;
        switch (R) {
          case 6: strip_to<Pol, 6>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span); break;
          case 5: strip_to<Pol, 5>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span); break;
          case 4: strip_to<Pol, 4>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span); break;
          case 3: strip_to<Pol, 3>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span); break;
          case 2: strip_to<Pol, 2>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span); break;
          default: strip_to<Pol, 1>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span); break;
        }
      }
      bool all_kept = true;
      unsigned char* on = s.on.data() + static_cast<std::size_t>(r0 / MR * tiles);
      for (int r = r0; r < r0 + R; ++r)
        all_kept = select_row(s, s.logits.data() + (r - r0) * span, kb0 * BN, sc.lo[r], sc.hi[r], on, r) && all_kept;
      if (all_kept)  // no row is filtered: tiles with visible keys are full for the pattern
        for (index_t kb = kb0; kb < kb1; ++kb) on[kb] = on[kb] ? 2 : 0;
    }
  }

 private:
  template <class Pol, int R>
  static void strip_to(const quadratic_call<Arch, Pol, top_k_keys>& c, block_scratch& sc, int r0, index_t row0,
                       index_t j0, const float* kpanel, index_t b, index_t h, batch_keys bk, float* dst,
                       index_t stride) {
    vf acc[R][NC];
    strip_logits<Arch, R, true>(c, sc, r0, row0, j0, kpanel, b, h, bk, acc);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NC; ++v) O::store(dst + r * stride + v * W, acc[r][v]);
  }

  /// Threshold of one row from its logits x[j − base], keys [lo, hi); marks the
  /// tiles holding kept keys and narrows [lo, hi) to them. True iff the row keeps
  /// every visible key.
  bool select_row(top_k_block& s, const float* x, index_t base, index_t& lo, index_t& hi, unsigned char* on,
                  int r) const {
    const float* xs = x + (lo - base);
    const index_t len = hi - lo;
    index_t visible = 0;
    bool nan = false;
    for (index_t j = 0; j < len; ++j) {
      visible += xs[j] != neg_inf;
      nan = nan || xs[j] != xs[j];
    }
    if (nan || visible <= k) {  // keeps all (a NaN row stays NaN, as in the oracle)
      s.thr[r] = neg_inf;
      s.tie[r] = 0.0f;
      for (index_t j = 0; j < len; ++j)
        if (xs[j] != neg_inf) on[(lo + j) / BN] = 1;
      return true;
    }
    if (k == 0) {  // keeps none: the row is fully masked
      s.thr[r] = std::numeric_limits<float>::infinity();
      s.tie[r] = -1.0f;
      hi = lo;
      return false;
    }
    // Lower bound t0 of the k-th largest: the k-th largest of ng ≥ k group maxima
    // (k distinct logits are ≥ it). Only logits ≥ t0 are candidates.
    float* v = s.vals.data();
    float t0 = neg_inf;
    const index_t G = len / k;
    if (G > 1) {
      index_t ng = 0;
      for (index_t j = 0; j < len; j += G) {
        float m = neg_inf;
        for (index_t e = j; e < std::min(len, j + G); ++e) m = xs[e] > m ? xs[e] : m;
        v[ng++] = m;
      }
      std::nth_element(v, v + (k - 1), v + ng, std::greater<float>());
      t0 = v[k - 1];
    }
    index_t nc = 0;
    for (index_t j = 0; j < len; ++j)
      if (xs[j] >= t0 && xs[j] != neg_inf) v[nc++] = xs[j];
    std::nth_element(v, v + (k - 1), v + nc, std::greater<float>());
    const float t = v[k - 1];
    index_t greater = 0;  // all logits > t are candidates
    for (index_t e = 0; e < nc; ++e) greater += v[e] > t;
    // Keys equal to t are kept in index order until k keys are kept.
    index_t ties = k - greater, first = -1, last = -1;
    for (index_t j = 0; j < len; ++j) {
      const bool keep = xs[j] > t || (xs[j] == t && ties-- > 0);
      if (!keep) continue;
      if (first < 0) first = j;
      last = j;
      if (xs[j] == t) s.tie[r] = static_cast<float>(lo + j);
      on[(lo + j) / BN] = 1;
    }
    s.thr[r] = t;  // (t is one of the k kept logits, so tie was set above)
    hi = lo + last + 1;
    lo = lo + first;
    return false;
  }
};

}  // namespace attnkit::detail
