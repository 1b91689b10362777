#pragma once
/// \file
/// Philox-4x32 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
/// 1, 2, 3", SC 2011): a counter-based generator. Every output block is a pure
/// function of a 128-bit counter and a 64-bit key, so any element of a random
/// stream is computed directly from its coordinates — no state, no order, the same
/// numbers on any thread count. Philox-4x32-10 is the generator PyTorch and
/// FlashAttention use for dropout.
///
/// One round maps the counter (c0, c1, c2, c3) with the round key (k0, k1) to
///   (hi(M1·c2) ⊕ c1 ⊕ k0,  lo(M1·c2),  hi(M0·c0) ⊕ c3 ⊕ k1,  lo(M0·c0))
/// with 32×32→64-bit products, M0 = 0xD2511F53, M1 = 0xCD9E8D57; the key is bumped
/// by the Weyl constants (0x9E3779B9, 0xBB67AE85) before every round but the first.
/// Checked against the Random123 known-answer vectors (tests/test_philox.cpp).
#include <array>
#include <cstdint>

namespace attnkit::random {

using philox_counter = std::array<std::uint32_t, 4>;
using philox_key = std::array<std::uint32_t, 2>;

namespace detail {
inline constexpr std::uint32_t philox_m0 = 0xD2511F53u, philox_m1 = 0xCD9E8D57u;
inline constexpr std::uint32_t philox_w0 = 0x9E3779B9u, philox_w1 = 0xBB67AE85u;

constexpr philox_counter philox_round(const philox_counter& c, const philox_key& k) noexcept {
  const std::uint64_t p0 = static_cast<std::uint64_t>(philox_m0) * c[0];
  const std::uint64_t p1 = static_cast<std::uint64_t>(philox_m1) * c[2];
  return {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<std::uint32_t>(p1),
          static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<std::uint32_t>(p0)};
}
}  // namespace detail

/// Philox-4x32 with `Rounds` rounds: four 32-bit random words for (counter, key).
template <int Rounds>
constexpr philox_counter philox4x32(philox_counter counter, philox_key key) noexcept {
  static_assert(Rounds >= 1);
  counter = detail::philox_round(counter, key);
  for (int r = 1; r < Rounds; ++r) {
    key[0] += detail::philox_w0;  // unsigned: wraps modulo 2^32 as specified
    key[1] += detail::philox_w1;
    counter = detail::philox_round(counter, key);
  }
  return counter;
}

/// Philox-4x32-10, the standard (BigCrush-clean with a safety margin) variant.
constexpr philox_counter philox4x32_10(const philox_counter& counter, const philox_key& key) noexcept {
  return philox4x32<10>(counter, key);
}

}  // namespace attnkit::random
