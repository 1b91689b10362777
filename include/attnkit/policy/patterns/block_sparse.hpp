#pragma once
/// \file
/// Explicit block layouts (BigBird / Longformer-style, MoA / DuoAttention /
/// SeerAttention per-head masks) and PowerAttention's power-of-two block distances.
#include <bit>
#include <cstdint>
#include <string>

#include "window.hpp"

namespace attnkit::pattern {

/// Explicit block layout: row-major bool [num_heads, num_q_blocks, num_k_blocks],
/// true = query block attends key block. One layout for every head (num_heads = 1,
/// the default) or one per query head (num_heads = q.heads, as MoA, DuoAttention and
/// SeerAttention select them). Uses the query *index* i (not the position): query i
/// is in block i / block_q, key j in block j / block_k; each layout must cover
/// ceil(Lq/block_q) × ceil(k.seq/block_k) blocks and outlive the call.
struct block_sparse {
  const bool* layout = nullptr;
  index_t block_q = 64;
  index_t block_k = 64;
  index_t num_q_blocks = 0;
  index_t num_k_blocks = 0;
  index_t num_heads = 1;

  constexpr bool on(index_t head, index_t qb, index_t kb) const noexcept {
    const index_t h = num_heads == 1 ? 0 : head;
    return qb < num_q_blocks && kb < num_k_blocks && layout[(h * num_q_blocks + qb) * num_k_blocks + kb];
  }
  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    return on(r.head, q_block(r.row), k_block(j));
  }
  /// The head-independent form (num_heads = 1 only).
  constexpr bool allowed(index_t i, index_t j, index_t, index_t) const noexcept { return on(0, q_block(i), k_block(j)); }
  constexpr tile_class classify(const tile_query& t) const noexcept {
    bool any = false, all = true;
    for (index_t qb = q_block(t.row_begin); qb <= q_block(t.row_end - 1); ++qb)
      for (index_t kb = k_block(t.key_begin); kb <= k_block(t.key_end - 1); ++kb) {
        const bool x = on(t.head, qb, kb);
        any = any || x;
        all = all && x;
      }
    return all ? tile_class::full : any ? tile_class::partial : tile_class::empty;
  }
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const index_t qb = q_block(r.row);
    std::uint64_t bits = 0;
    if (qb >= num_q_blocks) return 0;
    for (index_t kb = k_block(j0); kb <= k_block(j0 + n - 1) && kb < num_k_blocks; ++kb)
      if (on(r.head, qb, kb))
        bits |= range_bits(detail::sat_mul(kb, block_k), detail::sat_mul(kb + 1, block_k), j0, n);
    return bits;
  }
  /// Strips never straddle two query blocks (they would see the union of both rows'
  /// key sets: partial tiles).
  constexpr index_t row_block() const noexcept { return block_q; }
  void check(const problem_shape& sh, const options&) const {
    using attnkit::detail::fail;
    if (block_q <= 0) fail("pattern.block_q", "", "> 0", block_q);
    if (block_k <= 0) fail("pattern.block_k", "", "> 0", block_k);
    if (layout == nullptr) fail("pattern.layout", "", "a non-null pointer", "nullptr");
    if (num_q_blocks < 0) fail("pattern.num_q_blocks", "", ">= 0", num_q_blocks);
    if (num_k_blocks < 0) fail("pattern.num_k_blocks", "", ">= 0", num_k_blocks);
    index_t cells = 0;  // the layout's size: its indices must not wrap
    if (!attnkit::detail::checked_mul(num_q_blocks, num_k_blocks, cells) ||
        !attnkit::detail::checked_mul(cells, std::max<index_t>(num_heads, 1), cells))
      fail("pattern.num_k_blocks", "", "num_heads × num_q_blocks × num_k_blocks within 64 bits", num_k_blocks);
    if (detail::sat_mul(num_q_blocks, block_q) < sh.q_len)
      fail("pattern.num_q_blocks", "", ">= ceil(Lq / block_q) = " + std::to_string((sh.q_len + block_q - 1) / block_q),
           num_q_blocks);
    if (detail::sat_mul(num_k_blocks, block_k) < sh.k_len)
      fail("pattern.num_k_blocks", "", ">= ceil(Lk / block_k) = " + std::to_string((sh.k_len + block_k - 1) / block_k),
           num_k_blocks);
    if (num_heads != 1 && num_heads != sh.q_heads)
      fail("pattern.num_heads", "", "1 (one layout) or q.heads = " + std::to_string(sh.q_heads), num_heads);
  }

 private:
  // Per (strip, tile) in classify: shifts instead of divisions for power-of-two
  // blocks (the four divisions were a few percent of a block-sparse call).
  constexpr index_t q_block(index_t i) const noexcept {
    return std::has_single_bit(static_cast<std::uint64_t>(block_q)) ? i >> std::countr_zero(static_cast<std::uint64_t>(block_q))
                                                                    : i / block_q;
  }
  constexpr index_t k_block(index_t j) const noexcept {
    return std::has_single_bit(static_cast<std::uint64_t>(block_k)) ? j >> std::countr_zero(static_cast<std::uint64_t>(block_k))
                                                                    : j / block_k;
  }
};

/// PowerAttention (Chen et al. 2025), inherently causal: with query block
/// qb = p / block and key block kb = j / block, d = qb − kb, key j is visible iff
/// j ≤ p and (d ≤ local or kb < sinks or d is a power of two). d = 0 (the diagonal
/// block) is always visible.
struct power_attention {
  index_t block = 64;
  index_t sinks = 1;
  index_t local = 1;

  constexpr bool on(index_t qb, index_t kb) const noexcept {
    const index_t d = qb - kb;
    return d >= 0 && (d <= local || kb < sinks || (d & (d - 1)) == 0);
  }
  constexpr bool allowed(const row_query& r, index_t j) const noexcept {
    const index_t p = r.position();
    return j >= 0 && j <= p && on(p / block, j / block);
  }
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return allowed(row_query{0, 0, i, Lq, Lk, Lk - Lq}, j);
  }
  constexpr key_range hull(const row_query& r) const noexcept {
    return detail::clip(0, detail::sat_add(r.position(), 1), r.k_len);
  }
  constexpr tile_class classify(const tile_query& t) const noexcept {
    bool any = false, all = true;
    for (index_t qb = (t.row_begin + t.delta) / block; qb <= (t.row_end - 1 + t.delta) / block; ++qb)
      for (index_t kb = t.key_begin / block; kb <= (t.key_end - 1) / block; ++kb) {
        const bool x = on(qb, kb);
        any = any || x;
        all = all && x;
      }
    return all ? tile_class::full : any ? tile_class::partial : tile_class::empty;
  }
  constexpr std::uint64_t allowed_bits(const row_query& r, index_t j0, int n) const noexcept {
    const index_t p = r.position();
    if (p < 0) return 0;
    const index_t qb = p / block;
    std::uint64_t bits = 0;
    for (index_t kb = j0 / block; kb <= (j0 + n - 1) / block && kb <= qb; ++kb)
      if (on(qb, kb)) bits |= range_bits(kb * block, std::min(detail::sat_mul(kb + 1, block), p + 1), j0, n);
    return bits;
  }
  void check(const problem_shape&, const options&) const {
    if (block <= 0) attnkit::detail::fail("pattern.block", "", "> 0", block);
    if (sinks < 0) attnkit::detail::fail("pattern.sinks", "", ">= 0", sinks);
    if (local < 0) attnkit::detail::fail("pattern.local", "", ">= 0", local);
  }
};

}  // namespace attnkit::pattern
