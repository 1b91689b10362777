#pragma once
/// \file
/// 8-bit block-quantised storage for K/V caches: blocks of 32 values along the
/// head dimension, each with one scale, as llama.cpp's q8_0 (`block_q8<float16>`
/// has its exact layout: a binary16 scale then 32 int8, 34 bytes) or with an fp32
/// scale (`block_q8<float>`, 36 bytes). A row of D values is D / 32 blocks, so D
/// must be a multiple of 32. Kernels dequantise in registers (x = scale · q) and
/// accumulate in fp32.
///
/// Quantisation (quantize_q8): scale d = max|x| / 127 of the block, rounded to the
/// scale type; q = round(x / d) with the rounded d, so |x − d·q| ≤ d / 2 for every
/// element: the absolute error of a value is at most max|x of its block| / 254 ·
/// (1 + 2^-11) (fp16 scale) or · (1 + 2^-24) (fp32 scale). A block that holds a NaN
/// or ±Inf gets a NaN scale: all its values read back as NaN. A block of zeros has
/// scale 0.
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "dtype.hpp"

namespace attnkit {

/// Values per quantisation block.
inline constexpr index_t q8_block_size = 32;

/// One block of 32 int8 values with their scale: value i is float(scale) · q[i].
template <class Scale>
struct block_q8 {
  static_assert(std::is_same_v<Scale, float> || std::is_same_v<Scale, float16>,
                "attnkit::block_q8: the scale is float or attnkit::float16");
  using scale_type = Scale;
  Scale scale{};
  std::int8_t q[32]{};
};
static_assert(sizeof(block_q8<float16>) == 34, "block_q8<float16> must match ggml's q8_0 (34 bytes)");
static_assert(sizeof(block_q8<float>) == 36);

/// llama.cpp's q8_0 layout.
using block_q8_0 = block_q8<float16>;

template <class T>
inline constexpr bool is_q8_v = false;
template <class S>
inline constexpr bool is_q8_v<block_q8<S>> = true;

/// Logical values per stored element: 32 for a q8 block, 1 otherwise.
template <class T>
inline constexpr index_t values_per_element = is_q8_v<T> ? q8_block_size : 1;

inline float scale_to_float(float s) noexcept { return s; }
inline float scale_to_float(float16 s) noexcept { return s.to_float(); }

/// Quantises x[0, n) (n a multiple of 32) into n / 32 blocks.
template <class Scale>
void quantize_q8(const float* x, index_t n, block_q8<Scale>* out) noexcept {
  for (index_t b = 0; b < n / q8_block_size; ++b) {
    const float* xb = x + b * q8_block_size;
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < 32; ++i) {
      finite = finite && std::isfinite(xb[i]);
      amax = std::fmax(amax, std::fabs(xb[i]));
    }
    block_q8<Scale>& blk = out[b];
    if (!finite) {
      if constexpr (std::is_same_v<Scale, float16>)
        blk.scale = float16::from_float(std::numeric_limits<float>::quiet_NaN());
      else
        blk.scale = std::numeric_limits<float>::quiet_NaN();
      for (auto& v : blk.q) v = 0;
      continue;
    }
    float d = amax / 127.0f;
    if constexpr (std::is_same_v<Scale, float16>) {
      blk.scale = float16::from_float(d);
      d = blk.scale.to_float();
    } else {
      blk.scale = d;
    }
    const float inv = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; ++i) {
      const float r = std::nearbyint(xb[i] * inv);
      blk.q[i] = static_cast<std::int8_t>(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
  }
}

/// x[0, n) = the values of n / 32 blocks.
template <class Scale>
void dequantize_q8(const block_q8<Scale>* in, index_t n, float* x) noexcept {
  for (index_t b = 0; b < n / q8_block_size; ++b) {
    const float d = scale_to_float(in[b].scale);
    for (int i = 0; i < 32; ++i) x[b * q8_block_size + i] = d * static_cast<float>(in[b].q[i]);
  }
}

}  // namespace attnkit
