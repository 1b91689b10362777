#pragma once
/// \file
/// Overflow-safe integer arithmetic for positions, windows, strides and sizes.
/// Windows and pattern fields are user-given and may be anything up to INT64_MAX
/// (a natural "unbounded"), so `p + window` or `window * dilation` can leave the
/// range of index_t; signed overflow is undefined behaviour and, in practice,
/// wraps an "everything visible" bound into "nothing visible".
///
/// Saturating forms clamp to [INT64_MIN, INT64_MAX]: a bound compared against real
/// indices (which lie far inside that range) then gives the exact result, since a
/// true value past the range is past every index too. Checked forms report the
/// overflow instead, for sizes that must be exact (a view's span, a grid's area).
#include <cstdint>
#include <limits>

namespace attnkit {

using index_t = std::int64_t;  // as in tensor_view.hpp, which builds on this header

namespace detail {

inline constexpr index_t index_max = std::numeric_limits<index_t>::max();
inline constexpr index_t index_min = std::numeric_limits<index_t>::min();

/// a + b, clamped to the range of index_t.
constexpr index_t sat_add(index_t a, index_t b) noexcept {
  index_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? index_max : index_min;
  return r;
}

/// a − b, clamped to the range of index_t.
constexpr index_t sat_sub(index_t a, index_t b) noexcept {
  index_t r = 0;
  if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? index_max : index_min;
  return r;
}

/// a · b, clamped to the range of index_t.
constexpr index_t sat_mul(index_t a, index_t b) noexcept {
  index_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return (a < 0) != (b < 0) ? index_min : index_max;
  return r;
}

/// a · b into `r`; false (r unspecified) when the product leaves index_t.
constexpr bool checked_mul(index_t a, index_t b, index_t& r) noexcept { return !__builtin_mul_overflow(a, b, &r); }

/// a + b into `r`; false (r unspecified) when the sum leaves index_t.
constexpr bool checked_add(index_t a, index_t b, index_t& r) noexcept { return !__builtin_add_overflow(a, b, &r); }

/// ceil(n / d) for n ≥ 0, d ≥ 1, without the n + d − 1 that overflows for a huge d.
constexpr index_t ceil_div(index_t n, index_t d) noexcept { return n <= 0 ? 0 : (n - 1) / d + 1; }

}  // namespace detail
}  // namespace attnkit
