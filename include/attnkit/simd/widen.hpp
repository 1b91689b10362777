#pragma once
/// \file
/// Widening of 16-bit storage (bf16, fp16) to float rows, and narrowing back, with
/// the widest conversion the compile target has (simd/isa.hpp picks it by
/// architecture tag).
#include <cstring>
#include <type_traits>

#include "../core/dtype.hpp"
#include "arch.hpp"
#include "isa.hpp"

namespace attnkit {

/// dst[0..n) = float(src[0..n)).
template <class T>
inline void widen(const T* src, float* dst, index_t n) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else if constexpr (simd::is_scalar_v<simd::default_arch>) {
    simd::isa::widen(src, dst, n, xsimd::generic{});
  } else {
    simd::isa::widen(src, dst, n, simd::default_arch{});
  }
}

/// dst[0..n) = T(src[0..n)) for T = bfloat16 or float16, rounded to nearest even:
/// the values of T::from_float (a NaN stays a NaN; fp16 NaN payloads may differ).
template <class T>
inline void narrow(const float* src, T* dst, index_t n) noexcept {
  if constexpr (simd::is_scalar_v<simd::default_arch>) {
    simd::isa::narrow(src, dst, n, xsimd::generic{});
  } else {
    simd::isa::narrow(src, dst, n, simd::default_arch{});
  }
}

}  // namespace attnkit
