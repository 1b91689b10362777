#pragma once
/// \file
/// Local windows: sliding_window (a band around the query position), dilated_window
/// (Longformer's strided window) and sink_window (StreamingLLM: sinks + recent keys),
/// each with the hooks that let the kernels skip what the window excludes.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../core/checked.hpp"
#include "../pattern.hpp"

namespace attnkit::pattern {

namespace detail {
using attnkit::detail::sat_add;
using attnkit::detail::sat_mul;
using attnkit::detail::sat_sub;
/// [lo, hi) clipped to the keys [0, L).
constexpr key_range clip(index_t lo, index_t hi, index_t L) noexcept {
  return {std::clamp<index_t>(lo, 0, L), std::clamp<index_t>(hi, 0, L)};
}
}  // namespace detail

/// Local window around p: p − left ≤ j ≤ p + right (the FlashAttention convention:
/// left + right + 1 keys); −1 = unbounded on that side. Both sides are always given
/// (`sliding_window{256}` does not compile: one side alone was ambiguous):
/// `sliding_window{256, 0}` is a causal window of 257 keys, `sliding_window{128, 128}`
/// a symmetric one; causal() and symmetric() say it in words.
struct sliding_window {
  index_t left;
  index_t right;

  constexpr sliding_window(index_t left_keys, index_t right_keys) noexcept : left(left_keys), right(right_keys) {}

  /// The causal local window of `keys` keys ending at the query (Mistral-style).
  static constexpr sliding_window causal(index_t keys) noexcept { return {keys - 1, 0}; }
  /// The window of `radius` keys on each side of the query.
  static constexpr sliding_window symmetric(index_t radius) noexcept { return {radius, radius}; }

  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    const index_t p = r.position();
    return (left < 0 || j >= detail::sat_sub(p, left)) && (right < 0 || j <= detail::sat_add(p, right));
  }
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return allowed(row_query{0, 0, i, Lq, Lk, Lk - Lq}, j);
  }
  constexpr key_range hull(const row_query& r) const noexcept {
    const index_t p = r.position();
    return detail::clip(left < 0 ? 0 : detail::sat_sub(p, left), right < 0 ? r.k_len : detail::sat_add(detail::sat_add(p, right), 1),
                        r.k_len);
  }
  constexpr tile_class classify(const tile_query&) const noexcept { return tile_class::full; }  // the hull is exact
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const index_t p = r.position();  // not clipped to the keys: bits equal `allowed` everywhere
    return range_bits(left < 0 ? j0 : detail::sat_sub(p, left), right < 0 ? j0 + n : detail::sat_add(detail::sat_add(p, right), 1),
                      j0, n);
  }
  constexpr index_t band() const noexcept {
    return left >= 0 && right >= 0 ? detail::sat_add(detail::sat_add(left, right), 1) : 0;
  }
  void check(const problem_shape&, const options&) const {
    if (left < -1) attnkit::detail::fail("pattern.left", "", ">= -1 (-1 = unbounded)", left);
    if (right < -1) attnkit::detail::fail("pattern.right", "", ">= -1 (-1 = unbounded)", right);
  }
};

/// Dilated window (Longformer): keys at distance 0, d, 2d, …, window·d on each side
/// of p (d = dilation): (p − j) mod d == 0 and |p − j| ≤ window·d. Interior queries
/// see 2·window + 1 keys; combine with options.causal for the one-sided form
/// (window + 1 keys). Self-attention with d > 1 and no positional option runs in
/// residue order (rank_order): every query's keys are one run of its residue class.
struct dilated_window {
  index_t window = 0;
  index_t dilation = 1;

  constexpr index_t reach() const noexcept { return detail::sat_mul(window, dilation); }
  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    const index_t p = r.position(), dist = p > j ? p - j : j - p;
    return dilation > 0 && dist % dilation == 0 && dist <= reach();
  }
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return allowed(row_query{0, 0, i, Lq, Lk, Lk - Lq}, j);
  }
  constexpr key_range hull(const row_query& r) const noexcept {
    const index_t p = r.position();
    return detail::clip(detail::sat_sub(p, reach()), detail::sat_add(detail::sat_add(p, reach()), 1), r.k_len);
  }
  constexpr tile_class classify(const tile_query&) const noexcept {
    return dilation == 1 ? tile_class::full : tile_class::partial;
  }
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const index_t p = r.position();  // not clipped to the keys: bits equal `allowed` everywhere
    return stride_bits(detail::sat_sub(p, reach()), detail::sat_add(detail::sat_add(p, reach()), 1), p, dilation, j0, n);
  }
  constexpr index_t band() const noexcept { return detail::sat_add(detail::sat_mul(2, reach()), 1); }
  void check(const problem_shape&, const options&) const {
    if (window < 0) attnkit::detail::fail("pattern.window", "", ">= 0", window);
    if (dilation <= 0) attnkit::detail::fail("pattern.dilation", "", "> 0", dilation);
  }
  /// Residue order: tokens sorted by p mod d (group r: r, r + d, …), O(n).
  bool rank_order(const rank_query& q, std::vector<index_t>& order) const {
    return residue_order(q.n, dilation, order);
  }
  key_range rank_hull(const rank_row& r) const noexcept {
    const index_t t = r.token(), m = t / dilation, first = r.rank - m;  // rank of the group's first token
    const index_t size = attnkit::detail::ceil_div(r.n - t % dilation, dilation);
    return {first + std::max<index_t>(0, detail::sat_sub(m, window)),
            first + std::min(size, detail::sat_add(detail::sat_add(m, window), 1))};
  }
  constexpr index_t rank_band() const noexcept { return detail::sat_add(detail::sat_mul(2, window), 1); }

  /// Tokens 0 … n − 1 sorted by residue mod d, stable; false when d ≤ 1 (nothing
  /// to gain) — shared by the dilated neighbourhood.
  static bool residue_order(index_t n, index_t d, std::vector<index_t>& order) {
    if (d <= 1 || n <= 1) return false;
    order.clear();
    order.reserve(static_cast<std::size_t>(n));
    const index_t groups = std::min(d, n);  // residues ≥ n hold no token: O(n), whatever d is
    for (index_t r = 0; r < groups; ++r)
      for (index_t t = r; t < n; t += d) {
        order.push_back(t);
        if (n - t <= d) break;  // t + d would pass n (or overflow)
      }
    return true;
  }
};

/// StreamingLLM: the first `sinks` keys plus the `window` most recent keys up to and
/// including p. Inherently causal: j ≤ p and (j < sinks or p − j < window).
struct sink_window {
  index_t sinks = 4;
  index_t window = 256;

  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    const index_t p = r.position();
    return j <= p && (j < sinks || p - j < window);
  }
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return allowed(row_query{0, 0, i, Lq, Lk, Lk - Lq}, j);
  }
  constexpr key_range hull(const row_query& r) const noexcept {
    return detail::clip(0, detail::sat_add(r.position(), 1), r.k_len);
  }
  constexpr tile_class classify(const tile_query& t) const noexcept {
    const index_t p0 = t.row_begin + t.delta, p1 = t.row_end - 1 + t.delta;
    const index_t recent0 = detail::sat_add(detail::sat_sub(p0, window), 1);  // first recent key of row p0
    if (t.key_end <= sinks || t.key_begin >= detail::sat_add(detail::sat_sub(p1, window), 1))
      return tile_class::full;  // causal edge: the hull
    if (t.key_begin >= sinks && t.key_end <= recent0) return tile_class::empty;
    return tile_class::partial;
  }
  /// The sinks' tile far behind the window: only its first `sinks` keys.
  constexpr key_range tile_keys(const tile_query& t) const noexcept {
    const index_t p0 = t.row_begin + t.delta, p1 = t.row_end - 1 + t.delta;
    const key_range s{std::max<index_t>(t.key_begin, 0), std::min({t.key_end, sinks, detail::sat_add(p1, 1)})};
    const key_range recent{std::max(t.key_begin, detail::sat_add(detail::sat_sub(p0, window), 1)),
                           std::min(t.key_end, detail::sat_add(p1, 1))};
    if (s.size() <= 0) return recent.size() > 0 ? recent : key_range{t.key_begin, t.key_begin};
    if (recent.size() <= 0) return s;
    return {std::min(s.lo, recent.lo), std::max(s.hi, recent.hi)};
  }
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const index_t p = r.position();
    return range_bits(attnkit::detail::index_min / 2, std::min(sinks, detail::sat_add(p, 1)), j0, n) |
           range_bits(detail::sat_add(detail::sat_sub(p, window), 1), detail::sat_add(p, 1), j0, n);
  }
  void check(const problem_shape&, const options&) const {
    if (sinks < 0) attnkit::detail::fail("pattern.sinks", "", ">= 0", sinks);
    if (window < 0) attnkit::detail::fail("pattern.window", "", ">= 0", window);
  }
};

}  // namespace attnkit::pattern
