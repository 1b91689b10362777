#pragma once
/// \file
/// pattern::top_k on the quadratic skeleton, in two passes per query block.
///
/// Pass 1 (`prepare`, before the main pass): for each 6-row strip, the final logits
/// of every key tile the rows may see are computed with the skeleton's own
/// strip_logits (so they are bitwise the values the main pass will recompute) into a
/// per-thread strip buffer of 6 × Lk floats, with the maximum of every vector of W
/// keys. Each row then gets a threshold: its k-th largest logit t and the key index
/// of the last tie kept (ties go to the smaller index). The k-th largest group
/// maximum is a lower bound of t, so only groups reaching it are scanned and only
/// the few logits above it are candidates for t (k > Lk / W: all of them).
///
/// Pass 2 (the skeleton's main pass) drops, on every visited tile, the logits below
/// the row's threshold (`filter`, on the register tile), and skips tiles in which no
/// row of the strip keeps a key (`classify`). Cost: two Q·Kᵀ products, one P·V and
/// O(Lk) selection per row — O(Lq·Lk·D) like dense attention, never an Lq × Lk buffer.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../../policy/sparse.hpp"
#include "../prefill/schedule.hpp"
#include "selection.hpp"

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
  std::vector<float> gmax;       ///< maxima of W-key groups of `logits` [rows][span / W]
  std::vector<float> vals;       ///< candidates of one row
};

template <class Arch>
struct top_k_keys : key_set_base {
  static constexpr bool filters = true;
  static constexpr bool prepares = true;
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  static constexpr int MR = simd::tile_shape<Arch>::rows, BN = simd::tile_shape<Arch>::keys;
  static constexpr int NC = simd::tile_shape<Arch>::key_vectors, W = O::width;

  index_t k = 0, k_len = 0;

  /// The block's selection lives in the task's scratch: pass 1 of a block and its
  /// main pass run in the same task.
  static top_k_block& state(block_scratch& sc) { return sc.ext.get<top_k_block>(); }
  static const top_k_block& state(const block_scratch& sc) { return *sc.ext.find<top_k_block>(); }

  key_range hull(index_t, index_t, index_t) const { return {0, k_len}; }

  tile_class classify(const block_scratch& sc, index_t, index_t, index_t i0, index_t, index_t j0, index_t) const {
    const top_k_block& s = state(sc);
    const unsigned char on = s.on[static_cast<std::size_t>((i0 - s.row0) / MR * s.tiles + j0 / BN)];
    return on == 0 ? tile_class::empty : on == 1 ? tile_class::partial : tile_class::full;
  }

  template <class A, int N>
  void filter(const block_scratch& sc, index_t, index_t, index_t i, index_t j0, vf (&row)[N]) const {
    static_assert(std::is_same_v<A, Arch> && N <= NC);  // N < NC: a band-edge sub-tile from j0
    const top_k_block& s = state(sc);
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
    top_k_block& s = state(sc);
    const index_t D = c.shape.head_dim, tiles = c.kv->key_tiles;
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
    grow(s.gmax, MR * tiles * NC);
    grow(s.vals, tiles * BN + W);
    const index_t bg = b * c.shape.kv_heads + h / c.shape.group();
    const float* khead = c.kv->k_head(bg);

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
      vf visible[MR];
      for (auto& x : visible) x = O::set1(0.0f);
      for (index_t kb = kb0; kb < kb1; ++kb) {
        c.kv->ensure(bg, kb, sc.wide.data());  // a lazily packed call packs the tile here
        const float* kpanel = khead + kb * D * BN;
        float* dst = s.logits.data() + (kb - kb0) * BN;
        float* gm = s.gmax.data() + (kb - kb0) * NC;
        switch (R) {
          case 6: strip_to<Pol, 6>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span, gm, visible); break;
          case 5: strip_to<Pol, 5>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span, gm, visible); break;
          case 4: strip_to<Pol, 4>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span, gm, visible); break;
          case 3: strip_to<Pol, 3>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span, gm, visible); break;
          case 2: strip_to<Pol, 2>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span, gm, visible); break;
          default: strip_to<Pol, 1>(c, sc, r0, row0, kb * BN, kpanel, b, h, bk, dst, span, gm, visible); break;
        }
      }
      bool all_kept = true;
      unsigned char* on = s.on.data() + static_cast<std::size_t>(r0 / MR * tiles);
      for (int r = r0; r < r0 + R; ++r) {
        const auto nvis = static_cast<index_t>(O::reduce_add(visible[r - r0]));
        all_kept = select_row(s, s.logits.data() + (r - r0) * span, s.gmax.data() + (r - r0) * (span / W), kb0 * BN,
                              sc.lo[r], sc.hi[r], nvis, on, r) &&
                   all_kept;
      }
      if (all_kept)  // no row is filtered: tiles with visible keys are full for the pattern
        for (index_t kb = kb0; kb < kb1; ++kb) on[kb] = on[kb] ? 2 : 0;
    }
  }

 private:
  /// One tile of pass 1: logits into dst (row stride `stride`), the maximum of every
  /// W-key group into gm (row stride stride / W; NaN if the group holds a NaN) and
  /// the rows' visible (not −inf) counts into `visible`.
  template <class Pol, int R>
  static void strip_to(const quadratic_call<Arch, Pol, top_k_keys>& c, block_scratch& sc, int r0, index_t row0,
                       index_t j0, const float* kpanel, index_t b, index_t h, batch_keys bk, float* dst,
                       index_t stride, float* gm, vf (&visible)[MR]) {
    vf acc[R][NC];
    strip_logits<Arch, R, true>(c, sc, r0, row0, j0, kpanel, b, h, bk, acc);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NC; ++v) {
        const vf x = acc[r][v];
        O::store(dst + r * stride + v * W, x);
        // NaN tests by isnan and ==: xsimd's AVX-512 `!=` is ordered (false for NaN).
        if constexpr (simd::is_scalar_v<Arch>) {
          gm[r * (stride / W) + v] = x;
          visible[r] += x == neg_inf ? 0.0f : 1.0f;
        } else {
          gm[r * (stride / W) + v] =
              xsimd::any(xsimd::isnan(x)) ? std::numeric_limits<float>::quiet_NaN() : O::reduce_max(x);
          visible[r] = visible[r] + xsimd::select(x == O::set1(neg_inf), O::set1(0.0f), O::set1(1.0f));
        }
      }
  }

  /// Order-preserving map of non-NaN floats onto int32 (−0 just below +0).
  static std::int32_t key_of(float f) noexcept {
    const auto i = std::bit_cast<std::int32_t>(f);
    return i >= 0 ? i : i ^ 0x7fffffff;
  }
  static float value_of(std::int64_t key) noexcept {
    const auto i = static_cast<std::int32_t>(key);
    return std::bit_cast<float>(i >= 0 ? i : i ^ 0x7fffffff);
  }
  /// #{e : x[e] ≥ t}, vectorised.
  static index_t count_ge(const float* x, index_t n, float t) noexcept {
    index_t c = 0, e = 0;
    if constexpr (!simd::is_scalar_v<Arch>) {
      vf acc = O::set1(0.0f);
      for (; e + W <= n; e += W) acc = acc + xsimd::select(O::load(x + e) >= O::set1(t), O::set1(1.0f), O::set1(0.0f));
      c = static_cast<index_t>(O::reduce_add(acc));
    }
    for (; e < n; ++e) c += x[e] >= t;
    return c;
  }
  /// Appends the logits of one W-key group that are ≥ t and not −inf to dst (which
  /// has room for W); returns how many.
  static index_t compact_ge(const float* x, float t, float* dst) noexcept {
    if constexpr (simd::is_scalar_v<Arch>)
      return simd::isa::compact_ge<W>(x, t, dst, xsimd::generic{});
    else
      return simd::isa::compact_ge<W>(x, t, dst, Arch{});
  }

  /// The k-th largest of x[0, n) (1 ≤ k ≤ n, no NaN): bisection on the values'
  /// int32 keys with vectorised counts — ~32 passes of n/W compares, no data
  /// movement, cheaper than nth_element for the short arrays it gets here.
  static float kth_largest(const float* x, index_t n, index_t k) noexcept {
    float mn = x[0], mx = x[0];
    for (index_t e = 1; e < n; ++e) mn = std::min(mn, x[e]), mx = std::max(mx, x[e]);
    std::int64_t lo = key_of(mn), hi = key_of(mx);  // invariant: count_ge(value_of(lo)) ≥ k
    while (lo < hi) {
      const std::int64_t mid = lo + (hi - lo + 1) / 2;
      if (count_ge(x, n, value_of(mid)) >= k)
        lo = mid;
      else
        hi = mid - 1;
    }
    return value_of(lo);
  }

  /// Threshold of one row from its logits x[j − base] (keys [lo, hi), `visible` of
  /// them not −inf) and group maxima gm (W keys each); marks the tiles holding kept
  /// keys and narrows [lo, hi) to them. True iff the row keeps every visible key.
  bool select_row(top_k_block& s, const float* x, const float* gm, index_t base, index_t& lo, index_t& hi,
                  index_t visible, unsigned char* on, int r) const {
    const index_t g0 = (lo - base) / W, g1 = (hi - base + W - 1) / W;  // the row's groups
    bool nan = false;
    for (index_t g = g0; g < g1; ++g) nan |= gm[g] != gm[g];
    if (nan || visible <= k) {  // keeps all (a NaN row stays NaN, as in the oracle)
      s.thr[r] = neg_inf;
      s.tie[r] = 0.0f;
      for (index_t g = g0; g < g1; ++g)
        if (gm[g] != neg_inf) on[(base + g * W) / BN] = 1;
      return true;
    }
    if (k == 0) {  // keeps none: the row is fully masked
      s.thr[r] = std::numeric_limits<float>::infinity();
      s.tie[r] = -1.0f;
      hi = lo;
      return false;
    }
    // Lower bound t0 of the k-th largest logit: the k-th largest group maximum (the
    // k largest maxima are k distinct logits ≥ it). Only groups whose maximum reaches
    // t0 hold candidates; with fewer than k groups, every visible logit is one.
    float* v = s.vals.data();
    float t0 = neg_inf;
    if (g1 - g0 >= k) t0 = kth_largest(gm + g0, g1 - g0, k);
    index_t nc = 0;  // compaction; v has room for one group past the last
    for (index_t g = g0; g < g1; ++g)
      if (gm[g] >= t0 && gm[g] != neg_inf) nc += compact_ge(x + g * W, t0, v + nc);
    const float t = kth_largest(v, nc, k);
    index_t greater = 0, equal = 0;  // every logit ≥ t is a candidate
    for (index_t e = 0; e < nc; ++e) greater += v[e] > t, equal += v[e] == t;
    // Keys equal to t are kept in index order until k keys are kept: tie = the last
    // one kept (+huge when all of them are).
    float tie = std::numeric_limits<float>::max();
    if (equal > k - greater) {
      index_t left = k - greater;
      for (index_t g = g0; g < g1 && left > 0; ++g)
        if (gm[g] >= t)
          for (index_t j = g * W; j < g * W + W && left > 0; ++j)
            if (x[j] == t) --left, tie = static_cast<float>(base + j);
    }
    // Tiles and interval of the kept keys (whole groups reaching t: a superset).
    index_t first = -1, last = -1;
    for (index_t g = g0; g < g1; ++g)
      if (gm[g] >= t) {
        if (first < 0) first = g;
        last = g;
        on[(base + g * W) / BN] = 1;
      }
    s.thr[r] = t;
    s.tie[r] = tie;
    lo = std::max(lo, base + first * W);
    hi = std::min(hi, base + last * W + W);
    return false;
  }
};

/// The kernel of pattern::top_k: two passes per query block on the skeleton.
template <>
struct selection<pattern::top_k> {
  template <class Arch, class Inner, class Obs, class KV>
  static void run(const sparse<pattern::top_k, Inner>& pol, const problem_shape& sh,
                  const tensor_view<const float>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                  const tensor_view<float>& out, const options& opt, Obs& obs, workspace& ws) {
    run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws, top_k_keys<Arch>{{}, pol.pattern.k, sh.k_len});
  }
};

}  // namespace attnkit::detail
