#pragma once
/// \file
/// Reduced-precision storage types for K and V (fp32 accumulation everywhere).
/// They are plain 16-bit containers: kernels widen them to float when packing
/// (prefill) or on the fly (decode), halving the bytes read from memory.
#include <bit>
#include <cstdint>
#include <cstring>

#include "tensor_view.hpp"

namespace attnkit {

/// bfloat16: the upper 16 bits of an IEEE float. Conversion from float rounds to
/// nearest even; NaN stays NaN.
struct bfloat16 {
  std::uint16_t bits = 0;

  static constexpr bfloat16 from_float(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
    const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return {static_cast<std::uint16_t>(rounded >> 16)};
  }
  constexpr float to_float() const noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }
  constexpr explicit operator float() const noexcept { return to_float(); }
};

/// IEEE binary16. Conversion from float rounds to nearest even, handles
/// subnormals, overflow to ±inf and NaN.
struct float16 {
  std::uint16_t bits = 0;

  static constexpr float16 from_float(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7e00u)};  // NaN
    if (a >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};  // overflow -> inf
    if (a < 0x38800000u) {  // subnormal or zero in half precision
      if (a < 0x33000000u) return {static_cast<std::uint16_t>(sign)};
      const std::uint32_t e = a >> 23;
      const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
      const std::uint32_t shift = 126u - e;  // 14..24
      std::uint32_t h = m >> shift;
      const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
      if (rem > half || (rem == half && (h & 1u))) ++h;
      return {static_cast<std::uint16_t>(sign | h)};
    }
    std::uint32_t h = ((a - 0x38000000u) >> 13);
    const std::uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return {static_cast<std::uint16_t>(sign | h)};
  }
  constexpr float to_float() const noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    if (e == 0) {
      if (m == 0) return std::bit_cast<float>(sign);
      // subnormal: m · 2^-24
      const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
      return sign ? -v : v;
    }
    if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
    return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
  }
  constexpr explicit operator float() const noexcept { return to_float(); }
};

/// Element types accepted for K and V.
template <class T>
inline constexpr bool is_kv_storage_v =
    std::is_same_v<T, float> || std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

inline constexpr float to_float(float x) noexcept { return x; }
inline constexpr float to_float(bfloat16 x) noexcept { return x.to_float(); }
inline constexpr float to_float(float16 x) noexcept { return x.to_float(); }

// Widening whole rows: attnkit::widen in simd/widen.hpp.

}  // namespace attnkit
