#pragma once
/// \file
/// A tiny counter-based random generator (splitmix64 mixing). Every draw is a pure
/// function of (key..., counter), so permutations and random projections are
/// reproducible across standard libraries, thread counts and call orders —
/// unlike std::normal_distribution, whose algorithm is implementation-defined.
#include <cmath>
#include <cstdint>
#include <numbers>

namespace attnkit::random {

/// splitmix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// Hash of a key tuple and a counter; each component is mixed in turn so that
/// (a, b) and (b, a) give unrelated streams.
constexpr std::uint64_t counter_hash(std::uint64_t k0, std::uint64_t k1, std::uint64_t k2,
                                     std::uint64_t counter) noexcept {
  std::uint64_t h = mix64(k0);
  h = mix64(h ^ k1);
  h = mix64(h ^ (k2 + 0x632be59bd9b4e019ULL));
  return mix64(h ^ (counter * 0xd1b54a32d192ed03ULL));
}

/// Uniform integer in [0, n) from 64 random bits (Lemire's multiply-shift; the bias
/// is below n / 2^64, irrelevant here and identical on every platform).
constexpr std::uint64_t uniform_below(std::uint64_t bits, std::uint64_t n) noexcept {
  __extension__ using u128 = unsigned __int128;  // GCC/Clang; __extension__ keeps -Wpedantic quiet
  return static_cast<std::uint64_t>((static_cast<u128>(bits) * n) >> 64);
}

/// Uniform double in (0, 1): 53 random bits, never exactly 0 (safe for log).
constexpr double uniform_open01(std::uint64_t bits) noexcept {
  return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53;
}

/// Standard normal number `counter` of the stream (k0, k1, k2), by Box–Muller on two
/// hashed uniforms (the cosine branch only, so each counter is independent).
inline double normal(std::uint64_t k0, std::uint64_t k1, std::uint64_t k2, std::uint64_t counter) noexcept {
  const double u1 = uniform_open01(counter_hash(k0, k1, k2, 2 * counter));
  const double u2 = uniform_open01(counter_hash(k0, k1, k2, 2 * counter + 1));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace attnkit::random
