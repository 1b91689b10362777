#pragma once
/// \file
/// Neighbourhood attention (NATTEN semantics) over a 1-D sequence or a 2-D token
/// grid: every query sees exactly `kernel` keys per axis (the window shifts at the
/// borders), optionally dilated.
#include <algorithm>
#include <cstdint>
#include <string>

#include "window.hpp"

namespace attnkit::pattern {

namespace detail {
/// Keys lo, lo + step, … below hi.
struct stride_span {
  index_t lo = 0, hi = 0;
};
/// The NATTEN window of position p on a line of L positions (dilation d): positions
/// split by residue p mod d into groups; within its group of Lg positions a query
/// at group index g sees the `kernel` consecutive members starting at
/// clamp(g − kernel/2, 0, Lg − kernel) (all Lg of them if Lg ≤ kernel), as a
/// progression of step d (empty when p is off the line).
constexpr stride_span neighbor_span(index_t p, index_t L, index_t kernel, index_t d) noexcept {
  if (p < 0 || p >= L || kernel <= 0 || d <= 0) return {};
  const index_t r = p % d, Lg = attnkit::detail::ceil_div(L - r, d);  // d may be huge: no L − r + d − 1
  if (Lg <= kernel) return {r, r + (Lg - 1) * d + 1};
  const index_t start = std::clamp<index_t>(p / d - kernel / 2, 0, Lg - kernel);
  return {r + start * d, r + (start + kernel - 1) * d + 1};
}
/// Whether key j is in the window of position p (see neighbor_span).
constexpr bool neighbor_1d(index_t p, index_t j, index_t L, index_t kernel, index_t d) noexcept {
  if (j < 0 || j >= L) return false;
  const stride_span s = neighbor_span(p, L, kernel, d);
  return j >= s.lo && j < s.hi && (j - s.lo) % d == 0;
}
}  // namespace detail

/// 1-D neighbourhood attention (NATTEN) over the key sequence: query position p
/// sees exactly `kernel` keys with stride `dilation` (the window shifts at the
/// borders). For odd kernels the centred window has kernel/2 keys on each side; for
/// even kernels kernel/2 before and kernel/2 − 1 after. options.causal intersects
/// (then border queries see fewer keys).
struct neighborhood_1d {
  index_t kernel = 7;
  index_t dilation = 1;

  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    return detail::neighbor_1d(r.position(), j, r.k_len, kernel, dilation);
  }
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return allowed(row_query{0, 0, i, Lq, Lk, Lk - Lq}, j);
  }
  constexpr key_range hull(const row_query& r) const noexcept {
    const detail::stride_span s = detail::neighbor_span(r.position(), r.k_len, kernel, dilation);
    return {s.lo, s.hi};
  }
  constexpr tile_class classify(const tile_query&) const noexcept {
    return dilation == 1 ? tile_class::full : tile_class::partial;
  }
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const detail::stride_span s = detail::neighbor_span(r.position(), r.k_len, kernel, dilation);
    return stride_bits(s.lo, s.hi, s.lo, dilation, j0, n);
  }
  constexpr index_t band() const noexcept { return detail::sat_mul(kernel, dilation); }
  void check(const problem_shape&, const options&) const {
    if (kernel <= 0) attnkit::detail::fail("pattern.kernel", "", "> 0", kernel);
    if (dilation <= 0) attnkit::detail::fail("pattern.dilation", "", "> 0", dilation);
  }
  /// Residue order (self-attention, dilation > 1): each query's keys are one run.
  bool rank_order(const rank_query& q, std::vector<index_t>& order) const {
    return dilated_window::residue_order(q.n, dilation, order);
  }
  key_range rank_hull(const rank_row& r) const noexcept {
    const index_t t = r.token(), m = t / dilation, first = r.rank - m;
    const index_t size = attnkit::detail::ceil_div(r.n - t % dilation, dilation);
    if (size <= kernel) return {first, first + size};
    const index_t start = std::clamp<index_t>(m - kernel / 2, 0, size - kernel);
    return {first + start, first + start + kernel};
  }
  constexpr index_t rank_band() const noexcept { return kernel; }
};

/// 2-D neighbourhood attention over a row-major height × width token grid (Lk must
/// equal height·width): token p = y·width + x sees the kernel_h × kernel_w keys
/// whose row is in the 1-D neighbourhood of y (along height) and whose column is in
/// the 1-D neighbourhood of x (along width), both with `dilation`.
struct neighborhood_2d {
  index_t height = 0;
  index_t width = 0;
  index_t kernel_h = 7;
  index_t kernel_w = 7;
  index_t dilation = 1;

  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    const index_t p = r.position();
    if (width <= 0 || height <= 0 || p < 0 || p / width >= height || j < 0 || j / width >= height) return false;
    return detail::neighbor_1d(p / width, j / width, height, kernel_h, dilation) &&
           detail::neighbor_1d(p % width, j % width, width, kernel_w, dilation);
  }
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return allowed(row_query{0, 0, i, Lq, Lk, Lk - Lq}, j);
  }
  constexpr key_range hull(const row_query& r) const noexcept {
    const index_t p = r.position();
    if (width <= 0 || height <= 0 || p < 0 || p / width >= height) return {0, 0};
    const detail::stride_span rows = detail::neighbor_span(p / width, height, kernel_h, dilation);
    return detail::clip(rows.lo * width, rows.hi * width, r.k_len);
  }
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const index_t p = r.position(), Wd = width;
    if (Wd <= 0 || height <= 0 || p < 0 || p / Wd >= height) return 0;
    const detail::stride_span ys = detail::neighbor_span(p / Wd, height, kernel_h, dilation);
    const detail::stride_span xs = detail::neighbor_span(p % Wd, Wd, kernel_w, dilation);
    std::uint64_t bits = 0;
    // The grid rows the keys cover, on the query's row progression.
    for (index_t y = std::max(ys.lo, j0 / Wd); y < ys.hi && y <= (j0 + n - 1) / Wd; ++y)
      if ((y - ys.lo) % dilation == 0) bits |= stride_bits(y * Wd + xs.lo, y * Wd + xs.hi, y * Wd + xs.lo, dilation, j0, n);
    return bits;
  }
  /// Every query sees at most kernel_h × kernel_w keys.
  constexpr index_t band() const noexcept { return detail::sat_mul(kernel_h, kernel_w); }
  /// Gathering (dilation 1): each grid row of queries is one block; its keys are the
  /// grid rows of its vertical window, gathered column by column, so query x's
  /// kernel_h × kernel_w keys are one run: columns [xs, xs + kernel_w) of the block's
  /// band (NATTEN's tiling of the grid, done as a gather). Within a column, grid row
  /// r sits at slot r mod (band height): the next grid row's band keeps every other
  /// row where it was, so the kernel repacks one grid row per block.
  constexpr index_t gather_rows() const noexcept { return dilation == 1 && width > 0 && height > 0 ? width : 0; }
  void gather_keys(const gather_query& g, std::vector<index_t>& keys) const {
    const index_t y = (g.row_begin + g.delta) / width;
    const detail::stride_span band = detail::neighbor_span(y, height, kernel_h, 1);
    const index_t rows = band.hi - band.lo;
    keys.resize(static_cast<std::size_t>(rows * width));
    for (index_t x = 0; x < width; ++x)
      for (index_t r = band.lo; r < band.hi; ++r) keys[static_cast<std::size_t>(x * rows + r % rows)] = r * width + x;
  }
  constexpr key_range gathered_hull(const row_query& r, const gather_query& g) const noexcept {
    const index_t p = r.position(), y = (g.row_begin + g.delta) / width;
    if (p < 0 || p / width != y) return {0, 0};
    const detail::stride_span band = detail::neighbor_span(y, height, kernel_h, 1);
    const detail::stride_span cols = detail::neighbor_span(p % width, width, kernel_w, 1);
    const index_t rows = band.hi - band.lo;
    return {cols.lo * rows, cols.hi * rows};
  }
  void check(const problem_shape& sh, const options&) const {
    using attnkit::detail::fail;
    if (height < 0) fail("pattern.height", "", ">= 0", height);
    if (width < 0) fail("pattern.width", "", ">= 0", width);
    index_t cells = 0;  // checked: {7, 7905747460161236412} would wrap to 36
    if (!attnkit::detail::checked_mul(height, width, cells))
      fail("pattern", "height*width", std::to_string(sh.k_len) + " (= k.seq)",
           std::to_string(height) + " × " + std::to_string(width) + " (past 64 bits)");
    if (cells != sh.k_len) fail("pattern", "height*width", std::to_string(sh.k_len) + " (= k.seq)", cells);
    if (kernel_h <= 0) fail("pattern.kernel_h", "", "> 0", kernel_h);
    if (kernel_w <= 0) fail("pattern.kernel_w", "", "> 0", kernel_w);
    if (dilation <= 0) fail("pattern.dilation", "", "> 0", dilation);
  }
};

}  // namespace attnkit::pattern
