#pragma once
/// \file
/// The key-set pattern of the sparse family: which keys each query row may see.
/// `allowed` is the only required member; everything else is an optional hook that
/// lets the kernels skip work analytically (as CUTLASS's mask fusions do):
///
///   bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const;   // required, or
///   bool allowed(const pattern::row_query&, index_t j) const;          // (batch/head aware)
///   key_range hull(const pattern::row_query&) const;                     // keys ⊆ [lo, hi)
///   tile_class classify(const pattern::tile_query&) const;               // empty/partial/full
///   std::uint64_t allowed_bits(const pattern::row_query&, index_t j0, int n) const;
///   key_range tile_keys(const pattern::tile_query&) const;               // a partial tile's keys
///   index_t row_block() const;      // strips never straddle blocks of this many rows
///   index_t band() const;           // every row sees at most this many keys (0: unbounded)
///   void check(const problem_shape&, const options&) const;             // validation
///   index_t gather_rows() const;    // rows are gathered in blocks of this many (0: not this call)
///   void gather_keys(const pattern::gather_query&, std::vector<index_t>& keys) const;
///   key_range gathered_hull(const pattern::row_query&, const pattern::gather_query&) const;
///   bool rank_order(const pattern::rank_query&, std::vector<index_t>& order) const;
///   key_range rank_hull(const pattern::rank_row&) const;                 // (token reordering:
///   index_t rank_band() const;                                           //  each row's exact run)
///
/// Defaults (pattern::base spells them out): hull = every key, classify = partial,
/// allowed_bits = `allowed` per key, no tile_keys, no row blocks, no band, no
/// checks, no reordering. A member named like a hook but declared with another
/// signature is a compile error naming the expected one — never a silently lost
/// fast path. Every built-in pattern carries its hooks in its own header
/// (policy/patterns/); a user's pattern is the same kind of struct:
///
/// \code
///   struct document_mask {                         // block-diagonal by segment ∧ causal
///     const int* segment;                          // segment id per token
///     bool allowed(index_t i, index_t j, index_t, index_t) const { return j <= i && segment[i] == segment[j]; }
///   };
///   attnkit::attention(attnkit::sparse{document_mask{ids}}, q, k, v, out);
/// \endcode
///
/// Conventions: i is the query index, j the key index, Lq the call's query length,
/// Lk the batch's valid key length (options.key_lengths[b] or k.seq). Patterns that
/// speak of a query *position* use p = i + Δ with Δ = Lk − Lq (bottom-right
/// alignment: p = i for self-attention, after the cache when decoding).
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <vector>

#include "../core/hooks.hpp"
#include "../core/mask.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"

ATTNKIT_DETAIL_MEMBER_DETECTOR(allowed)
ATTNKIT_DETAIL_MEMBER_DETECTOR(hull)
ATTNKIT_DETAIL_MEMBER_DETECTOR(classify)
ATTNKIT_DETAIL_MEMBER_DETECTOR(allowed_bits)
ATTNKIT_DETAIL_MEMBER_DETECTOR(tile_keys)
ATTNKIT_DETAIL_MEMBER_DETECTOR(row_block)
ATTNKIT_DETAIL_MEMBER_DETECTOR(band)
ATTNKIT_DETAIL_MEMBER_DETECTOR(check)
ATTNKIT_DETAIL_MEMBER_DETECTOR(rank_order)
ATTNKIT_DETAIL_MEMBER_DETECTOR(rank_hull)
ATTNKIT_DETAIL_MEMBER_DETECTOR(rank_band)
ATTNKIT_DETAIL_MEMBER_DETECTOR(gather_rows)
ATTNKIT_DETAIL_MEMBER_DETECTOR(gather_keys)
ATTNKIT_DETAIL_MEMBER_DETECTOR(gathered_hull)

namespace attnkit {

/// How a tile of keys relates to the rows of a strip, as a pattern sees it.
enum class tile_class : unsigned char { empty, partial, full };

namespace pattern {

/// One query row, as the hooks see it.
struct row_query {
  index_t batch = 0, head = 0;  ///< batch and query head
  index_t row = 0;              ///< query index i
  index_t q_len = 0;            ///< Lq of the call
  index_t k_len = 0;            ///< the batch's valid key length Lk
  index_t delta = 0;            ///< Δ: the row's position is row + Δ (Lk − Lq)
  constexpr index_t position() const noexcept { return row + delta; }
};

/// Query rows [row_begin, row_end) × keys [key_begin, key_end) of one head.
struct tile_query {
  index_t batch = 0, head = 0;
  index_t row_begin = 0, row_end = 0, key_begin = 0, key_end = 0;
  index_t q_len = 0, k_len = 0, delta = 0;
  constexpr row_query row(index_t i) const noexcept { return {batch, head, i, q_len, k_len, delta}; }
};

/// What a reordering hook is asked for: a self-attention call over n tokens.
struct rank_query {
  index_t n = 0;
};

/// A block of query rows [row_begin, row_end) whose keys a gathering pattern packs
/// side by side (gather_keys), in an order where each row's keys are one run.
struct gather_query {
  index_t batch = 0, head = 0;
  index_t row_begin = 0, row_end = 0;
  index_t q_len = 0, k_len = 0, delta = 0;
};

/// One query row in rank space: the token at `rank` of `order` (order[r] = token).
struct rank_row {
  index_t rank = 0, n = 0;
  std::span<const index_t> order;
  constexpr index_t token() const noexcept { return order[static_cast<std::size_t>(rank)]; }
};

/// The defaults of every optional hook, spelt out; deriving from it is optional
/// (the kernels apply the same defaults to a pattern that does not).
struct base {
  constexpr key_range hull(const row_query& r) const noexcept { return {0, r.k_len}; }
  constexpr tile_class classify(const tile_query&) const noexcept { return tile_class::partial; }
  constexpr index_t row_block() const noexcept { return 0; }
  constexpr index_t band() const noexcept { return 0; }
  void check(const problem_shape&, const options&) const noexcept {}
};

/// Bits of keys [lo, hi) among j0 … j0 + n − 1 (bit jj: key j0 + jj; n ≤ 64): a
/// building block of allowed_bits.
constexpr std::uint64_t range_bits(index_t lo, index_t hi, index_t j0, int n) noexcept {
  lo = std::max(lo, j0);
  hi = std::min(hi, j0 + n);
  if (hi <= lo) return 0;
  const index_t len = hi - lo;
  return (len >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << len) - 1) << (lo - j0);
}

/// Bits of keys j ≡ r (mod step) in [lo, hi) among j0 … j0 + n − 1 (step ≥ 1, up
/// to INT64_MAX; |r − lo| small: r is a position, lo clipped to the tile).
constexpr std::uint64_t stride_bits(index_t lo, index_t hi, index_t r, index_t step, index_t j0, int n) noexcept {
  if (step == 1) return range_bits(lo, hi, j0, n);
  lo = std::max(lo, j0);
  hi = std::min(hi, j0 + n);
  if (hi <= lo) return 0;
  index_t off = (r - lo) % step;  // no (x % step + step): that overflows for a huge step
  if (off < 0) off += step;
  std::uint64_t bits = 0;
  for (index_t j = lo + std::min(off, hi - lo); j < hi; j += step) {
    bits |= std::uint64_t{1} << (j - j0);
    if (hi - j <= step) break;  // j + step would pass hi (or overflow)
  }
  return bits;
}

/// A static pattern: `allowed` in one of its two forms.
template <class P>
concept static_pattern = std::copyable<P> && (requires(const P& p, index_t x) {
                           { p.allowed(x, x, x, x) } -> std::convertible_to<bool>;
                         } || requires(const P& p, const row_query& r, index_t j) {
                           { p.allowed(r, j) } -> std::convertible_to<bool>;
                         });

/// A pattern that looks at the data (scores) to select keys; its kernel is a
/// specialisation of detail::selection<P> (kernel/selection_*.hpp).
template <class P>
concept dynamic_pattern = std::copyable<P> && requires {
  requires P::data_dependent;
};

}  // namespace pattern

namespace detail {

/// The hooks of a pattern with their defaults, each checked against its expected
/// signature when the pattern has a member of that name.
template <class P>
struct pattern_hooks {
  using row_query = pattern::row_query;
  using tile_query = pattern::tile_query;

  static bool allowed(const P& p, const row_query& r, index_t j) {
    if constexpr (requires { { p.allowed(r, j) } -> std::convertible_to<bool>; })
      return p.allowed(r, j);
    else if constexpr (requires { { p.allowed(r.row, j, r.q_len, r.k_len) } -> std::convertible_to<bool>; })
      return p.allowed(r.row, j, r.q_len, r.k_len);
    else
      static_assert(sizeof(P) == 0,
                    "attnkit: a pattern needs `bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const` "
                    "or `bool allowed(const attnkit::pattern::row_query&, index_t j) const`");
  }
  /// The position form of `allowed` assumes Δ = Lk − Lq; a call with other
  /// positions needs the row_query form.
  static constexpr bool position_form_only =
      !requires(const P& p, const row_query& r, index_t j) { p.allowed(r, j); };

  static key_range hull(const P& p, const row_query& r) {
    if constexpr (has_member_hull<P>) {
      static_assert(requires { { p.hull(r) } -> std::same_as<key_range>; },
                    "attnkit: pattern hook `hull` must be `key_range hull(const attnkit::pattern::row_query&) const`");
      return p.hull(r);
    } else {
      return {0, r.k_len};
    }
  }
  static tile_class classify(const P& p, const tile_query& t) {
    if constexpr (has_member_classify<P>) {
      static_assert(requires { { p.classify(t) } -> std::same_as<tile_class>; },
                    "attnkit: pattern hook `classify` must be `tile_class classify(const attnkit::pattern::tile_query&) const`");
      return p.classify(t);
    } else {
      return tile_class::partial;
    }
  }
  static constexpr bool has_bits = has_member_allowed_bits<P>;
  static std::uint64_t allowed_bits(const P& p, const row_query& r, index_t j0, int n) {
    if constexpr (has_bits) {
      static_assert(requires { { p.allowed_bits(r, j0, n) } -> std::same_as<std::uint64_t>; },
                    "attnkit: pattern hook `allowed_bits` must be "
                    "`std::uint64_t allowed_bits(const attnkit::pattern::row_query&, index_t j0, int n) const`");
      return p.allowed_bits(r, j0, n);
    } else {
      std::uint64_t bits = 0;
      for (int jj = 0; jj < n; ++jj) bits |= static_cast<std::uint64_t>(allowed(p, r, j0 + jj)) << jj;
      return bits;
    }
  }
  static constexpr bool has_tile_keys = has_member_tile_keys<P>;
  static key_range tile_keys(const P& p, const tile_query& t) {
    if constexpr (has_tile_keys) {
      static_assert(requires { { p.tile_keys(t) } -> std::same_as<key_range>; },
                    "attnkit: pattern hook `tile_keys` must be `key_range tile_keys(const attnkit::pattern::tile_query&) const`");
      return p.tile_keys(t);
    } else {
      return {t.key_begin, t.key_end};
    }
  }
  static index_t row_block(const P& p) {
    if constexpr (has_member_row_block<P>) {
      static_assert(requires { { p.row_block() } -> std::convertible_to<index_t>; },
                    "attnkit: pattern hook `row_block` must be `index_t row_block() const`");
      return p.row_block();
    } else {
      return 0;
    }
  }
  static index_t band(const P& p) {
    if constexpr (has_member_band<P>) {
      static_assert(requires { { p.band() } -> std::convertible_to<index_t>; },
                    "attnkit: pattern hook `band` must be `index_t band() const`");
      return p.band();
    } else {
      return 0;
    }
  }
  static void check(const P& p, const problem_shape& sh, const options& opt) {
    if constexpr (has_member_check<P>) {
      static_assert(requires { p.check(sh, opt); },
                    "attnkit: pattern hook `check` must be `void check(const attnkit::problem_shape&, const attnkit::options&) const`");
      p.check(sh, opt);
    }
  }
  // Gathering (self-attention without positional options): rows in blocks of
  // gather_rows(); each block's keys packed in gather_keys' order, where each row's
  // keys are the exact run gathered_hull (positions in that list).
  static constexpr bool gathers = has_member_gather_keys<P> || has_member_gathered_hull<P>;
  static index_t gather_rows(const P& p) {
    static_assert(has_member_gather_rows<P> && has_member_gather_keys<P> && has_member_gathered_hull<P>,
                  "attnkit: a gathering pattern needs `gather_rows`, `gather_keys` and `gathered_hull`");
    static_assert(requires { { p.gather_rows() } -> std::convertible_to<index_t>; },
                  "attnkit: pattern hook `gather_rows` must be `index_t gather_rows() const`");
    return p.gather_rows();
  }
  static void gather_keys(const P& p, const pattern::gather_query& g, std::vector<index_t>& keys) {
    static_assert(requires { p.gather_keys(g, keys); },
                  "attnkit: pattern hook `gather_keys` must be "
                  "`void gather_keys(const attnkit::pattern::gather_query&, std::vector<index_t>& keys) const`");
    p.gather_keys(g, keys);
  }
  static key_range gathered_hull(const P& p, const pattern::row_query& r, const pattern::gather_query& g) {
    static_assert(requires { { p.gathered_hull(r, g) } -> std::same_as<key_range>; },
                  "attnkit: pattern hook `gathered_hull` must be "
                  "`key_range gathered_hull(const attnkit::pattern::row_query&, const attnkit::pattern::gather_query&) const`");
    return p.gathered_hull(r, g);
  }
  static constexpr bool reorders = has_member_rank_order<P> || has_member_rank_hull<P>;
  // rank_order fills `order` with the token at each rank and returns false when the
  // call cannot use it; rank_hull must be exact (every rank in the run allowed).
  static bool rank_order(const P& p, const pattern::rank_query& q, std::vector<index_t>& order) {
    static_assert(has_member_rank_order<P> && has_member_rank_hull<P>,
                  "attnkit: a reordering pattern needs both `rank_order` and `rank_hull`");
    static_assert(requires { { p.rank_order(q, order) } -> std::convertible_to<bool>; },
                  "attnkit: pattern hook `rank_order` must be "
                  "`bool rank_order(const attnkit::pattern::rank_query&, std::vector<index_t>& order) const`");
    return p.rank_order(q, order);
  }
  static index_t rank_band(const P& p) {
    if constexpr (has_member_rank_band<P>) {
      static_assert(requires { { p.rank_band() } -> std::convertible_to<index_t>; },
                    "attnkit: pattern hook `rank_band` must be `index_t rank_band() const`");
      return p.rank_band();
    } else {
      return 0;
    }
  }
  static key_range rank_hull(const P& p, const pattern::rank_row& r) {
    static_assert(requires { { p.rank_hull(r) } -> std::same_as<key_range>; },
                  "attnkit: pattern hook `rank_hull` must be `key_range rank_hull(const attnkit::pattern::rank_row&) const`");
    return p.rank_hull(r);
  }
};

}  // namespace detail
}  // namespace attnkit
