#pragma once
/// \file
/// The key-set protocol between the prefill skeleton and what restricts a call's
/// keys (sparse patterns, permutation windows, data-dependent selections).
#include "../../core/mask.hpp"
#include "../../policy/pattern.hpp"

namespace attnkit::detail {

/// The key-set protocol of the prefill skeleton. Every adapter derives from
/// key_set_base and states what it provides with the flags below, so the skeleton
/// asks for exactly what an adapter has (no probing for members that might be
/// misspelt). For head (b, h):
///   key_range hull(b, h, i)                      — a key interval containing row i's keys
///   tile_class classify(sc, b, h, i0, i1, j0, j1) — rows [i0,i1) × keys [j0,j1): empty /
///                                                  partial / full (full: no element test)
///   bool allowed(b, h, i, j)                     — the element test on partial tiles
///   has_bits:      uint64 allowed_bits(b, h, i, j0, n) — the same for keys j0 … j0+n−1
///                                                  as bits (n ≤ 64): lane masks
///   has_tile_keys: key_range tile_keys(b, h, i0, i1, j0, j1) — an interval holding every
///                                                  allowed key of a partial tile
///   adjusts:       float adjust(b, h, i, j)      — an additive logit term on partial tiles
///                                                  (natural units, −inf = masked) instead
///                                                  of allowed
///   filters:       filter<Arch, NC>(sc, b, h, i, j0, row) — a value test on one row's
///                                                  logit vectors (top_k)
///   prepares:      prepare(call, sc, b, h, bk, row0, n) — per query block, before the
///                                                  main pass (may narrow sc.lo/hi)
///   reordered:     token(h, i), kv_token(g, j)   — skeleton row i of query head h reads
///                                                  and writes token row token(h, i);
///                                                  packed key j of kv head g is key
///                                                  kv_token(g, j)
///   gathers:       gather_rows(), gather_keys(b, h, row0, n, keys), gathered_hull(b, h, i, row0, n)
///                                                — each task (a block of gather_rows() rows)
///                                                  packs its own keys, in the order `keys`;
///                                                  row i sees the exact run gathered_hull
///   index_t row_block()                          — strips never straddle row blocks (0: none)
/// `sc` is the task's block_scratch (per-task state of data-dependent key sets).
/// The keys the call sees are the adapter's, intersected with the options' masks.
struct key_set_base {
  static constexpr bool active = true;
  static constexpr bool has_bits = false;
  static constexpr bool has_tile_keys = false;
  static constexpr bool adjusts = false;
  static constexpr bool filters = false;
  static constexpr bool prepares = false;
  static constexpr bool reordered = false;
  static constexpr bool gathers = false;
  constexpr index_t row_block() const noexcept { return 0; }
};

/// The plain call: every key the options allow.
struct no_pattern : key_set_base {
  static constexpr bool active = false;
};

}  // namespace attnkit::detail
