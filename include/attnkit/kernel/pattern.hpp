#pragma once
/// \file
/// Sparse patterns on the quadratic skeleton. Each pattern becomes a key-set
/// adapter (see no_pattern in quadratic.hpp): a hull interval per row, an analytic
/// class per (strip, key tile) — so empty tiles are never computed and full tiles
/// skip element tests — and the pattern's own `allowed` for partial tiles. Cost
/// follows the number of visited tiles, never N².
#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "../policy/sparse.hpp"
#include "quadratic.hpp"
#include "top_k.hpp"

namespace attnkit::detail {

/// Bits of keys [lo, hi) among j0 … j0 + n − 1.
inline std::uint64_t range_bits(index_t lo, index_t hi, index_t j0, int n) {
  lo = std::max(lo, j0);
  hi = std::min(hi, j0 + n);
  if (hi <= lo) return 0;
  const index_t len = hi - lo;
  return (len >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << len) - 1) << (lo - j0);
}
/// Bits of keys j ≡ r (mod step) in [lo, hi) among j0 … j0 + n − 1 (|r − lo| small:
/// r is a position, lo clipped to the tile; step may be anything up to INT64_MAX).
inline std::uint64_t stride_bits(index_t lo, index_t hi, index_t r, index_t step, index_t j0, int n) {
  if (step == 1) return range_bits(lo, hi, j0, n);
  lo = std::max(lo, j0);
  hi = std::min(hi, j0 + n);
  if (hi <= lo) return 0;
  index_t off = (r - lo) % step;  // no (x % step + step): that overflows for a huge step
  if (off < 0) off += step;
  std::uint64_t bits = 0;
  for (index_t j = lo + std::min(off, hi - lo); j < hi; j += step) {
    bits |= std::uint64_t{1} << (j - j0);
    if (hi - j <= step) break;
  }
  return bits;
}

/// Position-based pattern P as a key-set adapter.
template <class P>
struct static_pattern_keys {
  static constexpr bool active = true;
  const P& pat;
  const options& opt;
  index_t q_len = 0, k_len = 0;
  /// log2 of a power-of-two block size of a block-sparse layout, else −1 (after
  /// the fields above, so brace initialisation leaves them to these defaults).
  int q_shift = block_shift(pat, true), k_shift = block_shift(pat, false);

  index_t lk(index_t b) const { return keys_of_batch(opt, b, q_len, k_len).lk; }
  index_t pos(index_t b, index_t i) const { return i + lk(b) - q_len; }  // query position p = i + Δ

  key_range hull(index_t b, index_t, index_t i) const {
    const index_t L = lk(b), p = pos(b, i);
    auto clip = [&](index_t lo, index_t hi) { return key_range{std::clamp<index_t>(lo, 0, L), std::clamp<index_t>(hi, 0, L)}; };
    if constexpr (std::is_same_v<P, pattern::sliding_window>) {
      return clip(pat.left < 0 ? 0 : sat_sub(p, pat.left), pat.right < 0 ? L : sat_add(sat_add(p, pat.right), 1));
    } else if constexpr (std::is_same_v<P, pattern::dilated_window>) {
      const index_t reach = sat_mul(pat.window, pat.dilation);
      return clip(sat_sub(p, reach), sat_add(sat_add(p, reach), 1));
    } else if constexpr (std::is_same_v<P, pattern::sink_window> || std::is_same_v<P, pattern::power_attention>) {
      return clip(0, p + 1);
    } else if constexpr (std::is_same_v<P, pattern::neighborhood_1d>) {
      return neighbor_hull(p, L, pat.kernel, pat.dilation);
    } else if constexpr (std::is_same_v<P, pattern::neighborhood_2d>) {
      if (pat.width <= 0 || p < 0 || p >= sat_mul(pat.height, pat.width)) return {0, 0};
      const key_range rows = neighbor_hull(p / pat.width, pat.height, pat.kernel_h, pat.dilation);
      return clip(rows.lo * pat.width, rows.hi * pat.width);
    } else {
      return clip(0, L);
    }
  }

  /// Query rows come in blocks of this many for block-sparse layouts (0: no blocks).
  index_t row_block() const {
    if constexpr (std::is_same_v<P, pattern::block_sparse>)
      return pat.block_q;
    else
      return 0;
  }

  tile_class classify(const block_scratch&, index_t b, index_t, index_t i0, index_t i1, index_t j0, index_t j1) const {
    if constexpr (std::is_same_v<P, pattern::sliding_window>) {
      return tile_class::full;  // the hull is exact
    } else if constexpr (std::is_same_v<P, pattern::dilated_window> || std::is_same_v<P, pattern::neighborhood_1d>) {
      return pat.dilation == 1 ? tile_class::full : tile_class::partial;
    } else if constexpr (std::is_same_v<P, pattern::sink_window>) {
      const index_t p0 = pos(b, i0), p1 = pos(b, i1 - 1);
      if (j1 <= pat.sinks || j0 >= sat_add(sat_sub(p1, pat.window), 1)) return tile_class::full;  // causal edge: hull
      if (j0 >= pat.sinks && j1 <= sat_add(sat_sub(p0, pat.window), 1)) return tile_class::empty;
      return tile_class::partial;
    } else if constexpr (std::is_same_v<P, pattern::block_sparse>) {
      bool any = false, all = true;
      for (index_t qb = q_block(i0); qb <= q_block(i1 - 1); ++qb)
        for (index_t kb = k_block(j0); kb <= k_block(j1 - 1); ++kb) {
          const bool on = qb < pat.num_q_blocks && kb < pat.num_k_blocks && pat.layout[qb * pat.num_k_blocks + kb];
          any = any || on;
          all = all && on;
        }
      return all ? tile_class::full : any ? tile_class::partial : tile_class::empty;
    } else if constexpr (std::is_same_v<P, pattern::power_attention>) {
      const index_t blk = pat.block;
      bool any = false, all = true;
      for (index_t qb = pos(b, i0) / blk; qb <= pos(b, i1 - 1) / blk; ++qb)
        for (index_t kb = j0 / blk; kb <= (j1 - 1) / blk; ++kb) {
          const index_t d = qb - kb;
          const bool on = d >= 0 && (d <= pat.local || kb < pat.sinks || (d & (d - 1)) == 0);
          any = any || on;
          all = all && on;
        }
      return all ? tile_class::full : any ? tile_class::partial : tile_class::empty;
    } else {
      return tile_class::partial;
    }
  }

  bool allowed(index_t b, index_t, index_t i, index_t j) const { return pat.allowed(i, j, q_len, lk(b)); }

  /// Sink window: an interval holding every key rows [i0, i1) may see among keys
  /// [j0, j1) (the sinks' tile far behind the window: its first `sinks` keys).
  key_range tile_keys(index_t b, index_t, index_t i0, index_t i1, index_t j0, index_t j1) const
    requires std::is_same_v<P, pattern::sink_window>
  {
    const index_t p0 = pos(b, i0), p1 = pos(b, i1 - 1);
    const key_range sinks{std::max<index_t>(j0, 0), std::min({j1, pat.sinks, p1 + 1})};
    const key_range recent{std::max(j0, sat_add(sat_sub(p0, pat.window), 1)), std::min(j1, p1 + 1)};
    if (sinks.size() <= 0) return recent.size() > 0 ? recent : key_range{j0, j0};
    if (recent.size() <= 0) return sinks;
    return {std::min(sinks.lo, recent.lo), std::max(sinks.hi, recent.hi)};
  }

  /// allowed(b, h, i, j) for keys j0 … j0 + n − 1 as bits (bit jj: key j0 + jj;
  /// 0 < n ≤ 64, j0 ≥ 0): the partial-tile test as a few interval and stride
  /// operations per row instead of a call per element (which, with the divisions
  /// of the neighbourhood and dilated tests, cost 10-50× the tile's dot products).
  /// test_sparse_oracle checks it against `allowed` bit by bit.
  std::uint64_t allowed_bits(index_t b, index_t, index_t i, index_t j0, int n) const {
    const index_t L = lk(b), p = pos(b, i);
    constexpr index_t none_below = std::numeric_limits<index_t>::min() / 2, none_above = std::numeric_limits<index_t>::max() / 2;
    if constexpr (std::is_same_v<P, pattern::sliding_window>) {
      return range_bits(pat.left < 0 ? none_below : sat_sub(p, pat.left),
                        pat.right < 0 ? none_above : sat_add(sat_add(p, pat.right), 1), j0, n);
    } else if constexpr (std::is_same_v<P, pattern::dilated_window>) {
      const index_t reach = sat_mul(pat.window, pat.dilation);
      return stride_bits(sat_sub(p, reach), sat_add(sat_add(p, reach), 1), p, pat.dilation, j0, n);
    } else if constexpr (std::is_same_v<P, pattern::sink_window>) {
      return range_bits(none_below, std::min(pat.sinks, p + 1), j0, n) |
             range_bits(sat_add(sat_sub(p, pat.window), 1), p + 1, j0, n);
    } else if constexpr (std::is_same_v<P, pattern::block_sparse>) {
      const index_t qb = q_block(i);
      std::uint64_t bits = 0;
      if (qb >= pat.num_q_blocks) return 0;
      for (index_t kb = k_block(j0); kb <= k_block(j0 + n - 1) && kb < pat.num_k_blocks; ++kb)
        if (pat.layout[qb * pat.num_k_blocks + kb])
          bits |= range_bits(kb * pat.block_k, sat_mul(kb + 1, pat.block_k), j0, n);
      return bits;
    } else if constexpr (std::is_same_v<P, pattern::neighborhood_1d>) {
      const stride_span s = neighbor_span(p, L, pat.kernel, pat.dilation);
      return stride_bits(s.lo, s.hi, s.lo, pat.dilation, j0, n);
    } else if constexpr (std::is_same_v<P, pattern::neighborhood_2d>) {
      const index_t Wd = pat.width;
      if (Wd <= 0 || p < 0 || p >= sat_mul(pat.height, Wd)) return 0;
      const stride_span ys = neighbor_span(p / Wd, pat.height, pat.kernel_h, pat.dilation);
      const stride_span xs = neighbor_span(p % Wd, Wd, pat.kernel_w, pat.dilation);
      std::uint64_t bits = 0;
      // The grid rows the keys cover, on the query's row progression.
      for (index_t y = std::max(ys.lo, j0 / Wd); y < ys.hi && y <= (j0 + n - 1) / Wd; ++y)
        if ((y - ys.lo) % pat.dilation == 0) bits |= stride_bits(y * Wd + xs.lo, y * Wd + xs.hi, y * Wd + xs.lo, pat.dilation, j0, n);
      return bits;
    } else if constexpr (std::is_same_v<P, pattern::power_attention>) {
      if (p < 0) return 0;
      const index_t blk = pat.block, qb = p / blk;
      std::uint64_t bits = 0;
      for (index_t kb = j0 / blk; kb <= (j0 + n - 1) / blk && kb <= qb; ++kb) {
        const index_t d = qb - kb;
        if (d <= pat.local || kb < pat.sinks || (d & (d - 1)) == 0)
          bits |= range_bits(kb * blk, std::min(sat_mul(kb + 1, blk), p + 1), j0, n);
      }
      return bits;
    } else {
      std::uint64_t bits = 0;
      for (int jj = 0; jj < n; ++jj) bits |= static_cast<std::uint64_t>(pat.allowed(i, j0 + jj, q_len, L)) << jj;
      return bits;
    }
  }

 private:
  /// classify runs per (strip, tile); its four 64-bit divisions were a few percent
  /// of a block-sparse call.
  static constexpr int block_shift(const P& p, bool rows) {
    if constexpr (std::is_same_v<P, pattern::block_sparse>) {
      const index_t x = rows ? p.block_q : p.block_k;
      return x > 0 && (x & (x - 1)) == 0 ? std::countr_zero(static_cast<std::uint64_t>(x)) : -1;
    } else {
      (void)p, (void)rows;
      return -1;
    }
  }
  index_t q_block(index_t i) const {
    if constexpr (std::is_same_v<P, pattern::block_sparse>) return q_shift >= 0 ? i >> q_shift : i / pat.block_q;
    return 0;
  }
  index_t k_block(index_t j) const {
    if constexpr (std::is_same_v<P, pattern::block_sparse>) return k_shift >= 0 ? j >> k_shift : j / pat.block_k;
    return 0;
  }

  /// Keys lo, lo + step, … below hi.
  struct stride_span {
    index_t lo = 0, hi = 0;
  };
  /// The NATTEN window of position p on a line of L as a progression of step
  /// `dil` from lo (pattern::detail::neighbor_1d's keys; empty when p is off the line).
  static stride_span neighbor_span(index_t p, index_t L, index_t kernel, index_t dil) {
    if (p < 0 || p >= L || kernel <= 0 || dil <= 0) return {};
    const index_t r = p % dil, Lg = ceil_div(L - r, dil);
    if (Lg <= kernel) return {r, L};
    const index_t start = std::clamp<index_t>(p / dil - kernel / 2, 0, Lg - kernel);
    return {r + start * dil, r + (start + kernel - 1) * dil + 1};
  }
  /// Keys of the NATTEN window of position p on a line of L (all strides of the
  /// query's residue class lie inside this interval).
  static key_range neighbor_hull(index_t p, index_t L, index_t kernel, index_t dil) {
    if (p < 0 || p >= L || kernel <= 0 || dil <= 0) return {0, 0};
    const index_t r = p % dil, Lg = ceil_div(L - r, dil), g = p / dil;
    if (Lg <= kernel) return {r, r + (Lg - 1) * dil + 1};
    const index_t start = std::clamp<index_t>(g - kernel / 2, 0, Lg - kernel);
    return {r + start * dil, r + (start + kernel - 1) * dil + 1};
  }
};

/// FlexPrefill block selection as a key-set adapter: a per (batch, head, query
/// block) list of kept key blocks, decided before the attention pass from block
/// means (O((Lq/block)·(Lk/block)·D) work).
struct block_selection_keys {
  static constexpr bool active = true;
  index_t block = 64, q_blocks = 0, k_blocks = 0, heads = 0;
  std::vector<unsigned char> keep;  ///< [B·H][q_blocks][k_blocks]

  bool on(index_t b, index_t h, index_t qb, index_t kb) const {
    return keep[static_cast<std::size_t>(((b * heads + h) * q_blocks + qb) * k_blocks + kb)] != 0;
  }
  key_range hull(index_t, index_t, index_t) const { return {0, sat_mul(k_blocks, block)}; }
  tile_class classify(const block_scratch&, index_t b, index_t h, index_t i0, index_t i1, index_t j0, index_t j1) const {
    bool any = false, all = true;
    for (index_t qb = i0 / block; qb <= (i1 - 1) / block; ++qb)
      for (index_t kb = j0 / block; kb <= (j1 - 1) / block && kb < k_blocks; ++kb) {
        const bool x = on(b, h, qb, kb);
        any = any || x;
        all = all && x;
      }
    return all ? tile_class::full : any ? tile_class::partial : tile_class::empty;
  }
  bool allowed(index_t b, index_t h, index_t i, index_t j) const { return on(b, h, i / block, j / block); }
  /// allowed for keys j0 … j0 + n − 1 as bits (see static_pattern_keys::allowed_bits).
  std::uint64_t allowed_bits(index_t b, index_t h, index_t i, index_t j0, int n) const {
    std::uint64_t bits = 0;
    for (index_t kb = j0 / block; kb <= (j0 + n - 1) / block && kb < k_blocks; ++kb)
      if (on(b, h, i / block, kb)) bits |= range_bits(kb * block, sat_mul(kb + 1, block), j0, n);
    return bits;
  }
};

template <class KV>
block_selection_keys select_blocks(const pattern::flex_prefill& p, const problem_shape& sh,
                                   const tensor_view<const float>& q, const tensor_view<const KV>& k,
                                   const options& opt, int threads) {
  block_selection_keys sel;
  const index_t B = p.block, D = sh.head_dim;
  sel.block = B;
  sel.q_blocks = ceil_div(sh.q_len, B);  // B may be anything up to INT64_MAX
  sel.k_blocks = ceil_div(sh.k_len, B);
  sel.heads = sh.q_heads;
  sel.keep.assign(static_cast<std::size_t>(sh.batch * sh.q_heads * sel.q_blocks * sel.k_blocks), 0);
  const double tau = resolved_scale(opt, sh.head_dim);
  parallel_for(sh.batch * sh.q_heads, threads, [&](index_t bh) {
    const index_t b = bh / sh.q_heads, h = bh % sh.q_heads, g = h / sh.group();
    const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
    std::vector<double> kbar(static_cast<std::size_t>(sel.k_blocks * D), 0.0), qbar(static_cast<std::size_t>(D));
    for (index_t kb = 0; kb < sel.k_blocks; ++kb) {
      const index_t j0 = kb * B, jv = std::min(std::min(sh.k_len, sat_add(j0, B)), bk.lk);
      for (index_t j = j0; j < jv; ++j) {
        const KV* r = k.row(b, g, j);
        for (index_t d = 0; d < D; ++d) kbar[static_cast<std::size_t>(kb * D + d)] += to_float(r[d]);
      }
      for (index_t d = 0; d < D && jv > j0; ++d) kbar[static_cast<std::size_t>(kb * D + d)] /= static_cast<double>(jv - j0);
    }
    std::vector<index_t> cand;
    std::vector<double> est;
    std::vector<std::size_t> order;
    for (index_t qb = 0; qb < sel.q_blocks; ++qb) {
      const index_t i0 = qb * B, i1 = std::min(sh.q_len, sat_add(i0, B));
      std::fill(qbar.begin(), qbar.end(), 0.0);
      for (index_t i = i0; i < i1; ++i) {
        const float* r = q.row(b, h, i);
        for (index_t d = 0; d < D; ++d) qbar[static_cast<std::size_t>(d)] += r[d] / static_cast<double>(i1 - i0);
      }
      // Candidates: key blocks that some row of the query block may see.
      index_t lo = bk.lk, hi = 0;
      for (index_t i = i0; i < i1; ++i) {
        const key_range kr = analytic_range(opt, bk, i);
        if (kr.size() > 0) {
          lo = std::min(lo, kr.lo);
          hi = std::max(hi, kr.hi);
        }
      }
      cand.clear();
      est.clear();
      for (index_t kb = lo / B; kb < sel.k_blocks && kb * B < hi; ++kb) {
        bool any = false;  // exact test: some row's interval meets the block
        for (index_t i = i0; i < i1 && !any; ++i) {
          const key_range kr = analytic_range(opt, bk, i);
          any = kr.lo < std::min(sat_add(kb * B, B), sh.k_len) && kr.hi > kb * B && kr.size() > 0;
        }
        if (!any) continue;
        double s = 0;
        for (index_t d = 0; d < D; ++d) s += qbar[static_cast<std::size_t>(d)] * kbar[static_cast<std::size_t>(kb * D + d)];
        cand.push_back(kb);
        est.push_back(tau * s);
      }
      if (cand.empty()) continue;
      const double m = *std::max_element(est.begin(), est.end());
      double z = 0;
      for (auto& e : est) z += (e = std::exp(e - m));
      for (auto& e : est) e /= z;
      order.resize(cand.size());
      for (std::size_t x = 0; x < order.size(); ++x) order[x] = x;
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t c) { return est[a] > est[c]; });
      double cum = 0;
      index_t taken = 0;
      for (std::size_t o : order) {
        if (cum >= p.gamma && taken >= p.min_budget) break;
        sel.keep[static_cast<std::size_t>(((b * sh.q_heads + h) * sel.q_blocks + qb) * sel.k_blocks + cand[o])] = 1;
        cum += est[o];
        ++taken;
      }
    }
  });
  return sel;
}

/// The window a pattern bounds each row to (0: unbounded), for block sizing.
template <class P>
index_t pattern_band(const P& p) {
  if constexpr (std::is_same_v<P, pattern::sliding_window>)
    return p.left >= 0 && p.right >= 0 ? sat_add(sat_add(p.left, p.right), 1) : 0;
  else if constexpr (std::is_same_v<P, pattern::neighborhood_1d>)
    return sat_mul(p.kernel, p.dilation);
  else if constexpr (std::is_same_v<P, pattern::dilated_window>)
    return sat_add(sat_mul(2, sat_mul(p.window, p.dilation)), 1);
  else
    return 0;
}

/// A dilated window or 1-D neighbourhood in residue order: tokens sorted by
/// p mod dilation (group r holds r, r + d, r + 2d, …, in order), where each query
/// sees one contiguous run of its own group. The skeleton then runs a plain band
/// of full tiles on ranks (reading Q/K/V and writing O at the tokens' own rows, as
/// for stochastic permutation) instead of masking all but 1/d of each tile of the
/// position-space hull. Rank 0 is token 0, so the observer's key-0 logit holds.
/// Used for self-attention without options that depend on positions (causal,
/// window, key lengths, mask, bias, ALiBi): those stay on the position-space path.
template <class P>
struct residue_keys {
  static constexpr bool active = true;
  const P& pat;
  const std::vector<index_t>& order;  ///< token at rank r
  index_t n = 0, dil = 1;

  index_t token(index_t, index_t r) const { return order[static_cast<std::size_t>(r)]; }
  index_t kv_token(index_t, index_t r) const { return order[static_cast<std::size_t>(r)]; }
  key_range hull(index_t, index_t, index_t r) const {
    const index_t t = order[static_cast<std::size_t>(r)], m = t / dil, first = r - m;  // first: rank of group start
    const index_t size = ceil_div(n - t % dil, dil);
    if constexpr (std::is_same_v<P, pattern::dilated_window>) {
      return {first + std::max<index_t>(0, sat_sub(m, pat.window)), first + std::min(size, sat_add(m, sat_add(pat.window, 1)))};
    } else {
      if (size <= pat.kernel) return {first, first + size};
      const index_t start = std::clamp<index_t>(m - pat.kernel / 2, 0, size - pat.kernel);
      return {first + start, first + start + pat.kernel};
    }
  }
  tile_class classify(const block_scratch&, index_t, index_t, index_t, index_t, index_t, index_t) const { return tile_class::full; }
  bool allowed(index_t b, index_t h, index_t i, index_t j) const { return hull(b, h, i).contains(j); }
};

/// The last residue order built with a workspace, and for which (n, d).
struct residue_order_cache {
  index_t last_n = -1, last_d = -1;
  std::shared_ptr<const std::vector<index_t>> cached;
  std::size_t bytes() const { return cached ? cached->capacity() * sizeof(index_t) : 0; }
};

/// Tokens 0 … n − 1 sorted by residue mod d (stable); the workspace keeps the
/// last order, so a stream of same-shape calls builds it once.
inline std::shared_ptr<const std::vector<index_t>> residue_order(index_t n, index_t d, workspace& ws) {
  auto& [last_n, last_d, cached] = ws.shared().get<residue_order_cache>();
  if (cached && last_n == n && last_d == d) return cached;
  auto order = std::make_shared<std::vector<index_t>>();
  order->reserve(static_cast<std::size_t>(n));
  for (index_t r = 0; r < std::min(d, n); ++r)
    for (index_t t = r; t < n; t += d) {
      order->push_back(t);
      if (n - t <= d) break;  // t + d would pass n (or overflow)
    }
  cached = std::move(order);
  last_n = n;
  last_d = d;
  return cached;
}

template <class Arch, class P, class Inner, class Obs, class KV>
void run_sparse(const sparse<P, Inner>& pol, const problem_shape& sh, const tensor_view<const float>& q,
                const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                const options& opt, Obs& obs, workspace& ws) {
  pattern::check_arguments(pol.pattern, sh, opt);
  if constexpr (std::is_same_v<P, pattern::flex_prefill>) {
    const auto sel = select_blocks(pol.pattern, sh, q, k, opt, resolve_num_threads(opt.num_threads));
    run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws, sel);
  } else if constexpr (std::is_same_v<P, pattern::top_k>) {
    run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws, top_k_keys<Arch>{pol.pattern.k, sh.k_len});
  } else {
    static_assert(pattern::static_pattern<P>, "attnkit: this data-dependent pattern has no kernel yet");
    if constexpr (std::is_same_v<P, pattern::dilated_window> || std::is_same_v<P, pattern::neighborhood_1d>) {
      const bool positional = opt.causal != causal::none || opt.window.active() || !opt.key_lengths.empty() ||
                              opt.mask.data || opt.bias.data || !opt.alibi_slopes.empty();
      if (pol.pattern.dilation > 1 && sh.q_len == sh.k_len && !positional) {
        const auto order = residue_order(sh.k_len, pol.pattern.dilation, ws);  // kept alive for the call
        index_t band = 0;  // the window on ranks
        if constexpr (std::is_same_v<P, pattern::dilated_window>)
          band = sat_add(sat_mul(2, pol.pattern.window), 1);
        else
          band = pol.pattern.kernel;
        run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws,
                            residue_keys<P>{pol.pattern, *order, sh.k_len, pol.pattern.dilation}, band);
        return;
      }
    }
    run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws, static_pattern_keys<P>{pol.pattern, opt, sh.q_len, sh.k_len},
                        pattern_band(pol.pattern));
  }
}

}  // namespace attnkit::detail
