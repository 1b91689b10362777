#pragma once
/// \file
/// The dropout mask of an attention call (options.dropout) as a pure function of
/// (seed, offset, b, h, i, j): no mask is stored, the forward and the backward (and
/// the float64 oracle) draw the same one, and any thread count or tile order gives
/// the same bits.
///
/// Construction, in full (so that another implementation can reproduce it):
///  1. call key: (k0, k1) = the first two words of
///     philox4x32_10(counter = (lo32(offset), hi32(offset), 0, 0), key = (lo32(seed), hi32(seed)));
///  2. element (b, h, i, j) — batch, query head, query row, key, all in the call's
///     original indexing — reads word j mod 4 of
///     philox4x32_10(counter = (j div 4, i, h, b), key = (k0, k1)),
///     so one Philox block serves four neighbouring keys;
///  3. the element is dropped iff that word < t = floor(p · 2^32) (keep probability
///     1 − t/2^32, within 2^−32 of 1 − p); a kept weight is scaled by 1/(1 − p).
/// The counter fields are 32 bits wide, so dropout requires batch, query heads and
/// Lq ≤ 2^32 and Lk ≤ 2^34 (validation rejects larger calls).
#include <cmath>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "options.hpp"
#include "philox.hpp"
#include "tensor_view.hpp"

namespace attnkit {

/// Keep/drop decisions of one options.dropout (see the file comment).
class dropout_mask {
 public:
  explicit dropout_mask(const dropout& d) noexcept : p_(d.p) {
    const random::philox_key seed{static_cast<std::uint32_t>(d.seed), static_cast<std::uint32_t>(d.seed >> 32)};
    const auto k = random::philox4x32_10(
        {static_cast<std::uint32_t>(d.offset), static_cast<std::uint32_t>(d.offset >> 32), 0u, 0u}, seed);
    key_ = {k[0], k[1]};
    // p is validated to lie in [0, 1); clamp anyway so the conversion is always defined.
    const double t = std::floor(static_cast<double>(d.p) * 4294967296.0);
    threshold_ = !(t > 0) ? 0u : t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(t);
  }

  /// True when the call drops anything (p > 0).
  bool active() const noexcept { return p_ > 0.0f; }
  /// Words of keys 4c .. 4c+3 of row (b, h, i): one Philox block.
  random::philox_counter block(index_t b, index_t h, index_t i, index_t c) const noexcept {
    return random::philox4x32_10(
        {static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(h),
         static_cast<std::uint32_t>(b)},
        key_);
  }
  /// Whether element (b, h, i, j) is kept.
  bool keep(index_t b, index_t h, index_t i, index_t j) const noexcept {
    return block(b, h, i, j >> 2)[static_cast<std::size_t>(j & 3)] >= threshold_;
  }
  /// The factor of element (b, h, i, j) in double: 1/(1 − p) if kept, else 0 (1 if off).
  double factor(index_t b, index_t h, index_t i, index_t j) const noexcept {
    if (!active()) return 1.0;
    return keep(b, h, i, j) ? scale() : 0.0;
  }
  /// 1/(1 − p), the scale of kept weights.
  double scale() const noexcept { return 1.0 / (1.0 - static_cast<double>(p_)); }
  /// Dropped iff the element's word < threshold().
  std::uint32_t threshold() const noexcept { return threshold_; }
  const random::philox_key& key() const noexcept { return key_; }

 private:
  float p_ = 0.0f;
  random::philox_key key_{};
  std::uint32_t threshold_ = 0;
};

namespace detail {
/// options.dropout of a call with the given extents: p finite in [0, 1), and the
/// extents within the counter's 32-bit fields when dropout is on.
inline void check_dropout(const dropout& d, index_t batch, index_t q_heads, index_t q_len, index_t k_len) {
  if (!(d.p >= 0.0f && d.p < 1.0f)) fail("options.dropout", "p", "in [0, 1) (0 = off)", d.p);
  if (!d.active()) return;
  constexpr index_t lim32 = index_t{1} << 32, lim34 = index_t{1} << 34;
  if (batch > lim32) fail("options.dropout", "batch", "<= 2^32 with dropout (Philox counter field)", batch);
  if (q_heads > lim32) fail("options.dropout", "q.heads", "<= 2^32 with dropout (Philox counter field)", q_heads);
  if (q_len > lim32) fail("options.dropout", "q.seq", "<= 2^32 with dropout (Philox counter field)", q_len);
  if (k_len > lim34) fail("options.dropout", "k.seq", "<= 2^34 with dropout (Philox counter field)", k_len);
}
}  // namespace detail

}  // namespace attnkit
