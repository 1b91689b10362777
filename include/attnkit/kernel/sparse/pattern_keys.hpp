#pragma once
/// \file
/// Static patterns on the prefill skeleton. A pattern's hooks (policy/pattern.hpp)
/// become the skeleton's key-set protocol (prefill/keys.hpp): a hull per row, an
/// analytic class per (strip, key tile) — empty tiles are never computed, full
/// tiles skip element tests — and lane masks from allowed_bits on partial tiles.
/// Cost follows the number of visited tiles, never N². A pattern that can reorder
/// the tokens so each row's keys are one run (rank_order / rank_hull) runs as a
/// plain band of full tiles in rank space instead (rank_keys).
#include <cstdint>
#include <span>

#include "../../policy/pattern.hpp"
#include "../prefill/call.hpp"
#include "../prefill/keys.hpp"

namespace attnkit::detail {

/// Position-space adapter of a static pattern P.
template <class P>
struct pattern_keys : key_set_base {
  using hooks = pattern_hooks<P>;
  static constexpr bool has_bits = true;  // the default loops over `allowed`: never slower than element tests
  static constexpr bool has_tile_keys = hooks::has_tile_keys;
  const P& pat;
  const options& opt;
  index_t q_len = 0, k_len = 0;

  pattern::row_query row(index_t b, index_t h, index_t i) const {
    const batch_keys bk = keys_of_batch(opt, b, q_len, k_len);
    return {b, h, i, q_len, bk.lk, bk.delta};
  }
  pattern::tile_query tile(index_t b, index_t h, index_t i0, index_t i1, index_t j0, index_t j1) const {
    const batch_keys bk = keys_of_batch(opt, b, q_len, k_len);
    return {b, h, i0, i1, j0, j1, q_len, bk.lk, bk.delta};
  }
  key_range hull(index_t b, index_t h, index_t i) const { return hooks::hull(pat, row(b, h, i)); }
  tile_class classify(const block_scratch&, index_t b, index_t h, index_t i0, index_t i1, index_t j0, index_t j1) const {
    return hooks::classify(pat, tile(b, h, i0, i1, j0, j1));
  }
  bool allowed(index_t b, index_t h, index_t i, index_t j) const { return hooks::allowed(pat, row(b, h, i), j); }
  std::uint64_t allowed_bits(index_t b, index_t h, index_t i, index_t j0, int n) const {
    return hooks::allowed_bits(pat, row(b, h, i), j0, n);
  }
  key_range tile_keys(index_t b, index_t h, index_t i0, index_t i1, index_t j0, index_t j1) const {
    return hooks::tile_keys(pat, tile(b, h, i0, i1, j0, j1));
  }
  index_t row_block() const { return hooks::row_block(pat); }
};

/// Gathering adapter: each task packs its block's keys in the pattern's order, and a
/// row's keys are the exact run gathered_hull of that list (every tile full: the
/// intervals alone mask, so `allowed` is never asked).
template <class P>
struct gathered_keys : key_set_base {
  using hooks = pattern_hooks<P>;
  static constexpr bool gathers = true;
  const P& pat;
  const options& opt;
  index_t q_len = 0, k_len = 0;

  pattern::gather_query block(index_t b, index_t h, index_t row0, index_t n) const {
    const batch_keys bk = keys_of_batch(opt, b, q_len, k_len);
    return {b, h, row0, row0 + n, q_len, bk.lk, bk.delta};
  }
  index_t gather_rows() const { return hooks::gather_rows(pat); }
  void gather_keys(index_t b, index_t h, index_t row0, index_t n, std::vector<index_t>& keys) const {
    hooks::gather_keys(pat, block(b, h, row0, n), keys);
  }
  key_range gathered_hull(index_t b, index_t h, index_t i, index_t row0, index_t n) const {
    const pattern::gather_query g = block(b, h, row0, n);
    return hooks::gathered_hull(pat, pattern::row_query{b, h, i, q_len, g.k_len, g.delta}, g);
  }
  key_range hull(index_t, index_t, index_t) const { return {0, k_len}; }  // unused: gathered_hull replaces it
  tile_class classify(const block_scratch&, index_t, index_t, index_t, index_t, index_t, index_t) const {
    return tile_class::full;
  }
  bool allowed(index_t, index_t, index_t, index_t) const { return true; }  // never asked: every tile is full
};

/// Rank-space adapter of a reordering pattern: skeleton row r is token order[r],
/// packed key r is key order[r], and the row's keys are the exact run rank_hull(r).
template <class P>
struct rank_keys : key_set_base {
  using hooks = pattern_hooks<P>;
  static constexpr bool reordered = true;
  const P& pat;
  std::span<const index_t> order;
  index_t n = 0;

  index_t token(index_t, index_t r) const { return order[static_cast<std::size_t>(r)]; }
  index_t kv_token(index_t, index_t r) const { return order[static_cast<std::size_t>(r)]; }
  key_range hull(index_t, index_t, index_t r) const { return hooks::rank_hull(pat, pattern::rank_row{r, n, order}); }
  tile_class classify(const block_scratch&, index_t, index_t, index_t, index_t, index_t, index_t) const {
    return tile_class::full;  // the run is exact: the hull alone masks
  }
  bool allowed(index_t b, index_t h, index_t i, index_t j) const { return hull(b, h, i).contains(j); }
};

}  // namespace attnkit::detail
