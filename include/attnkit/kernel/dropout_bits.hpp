#pragma once
/// \file
/// The kernels' side of options.dropout: keep bits of a run of keys of one row,
/// drawn from the counter-based mask of core/dropout.hpp (one Philox block per four
/// neighbouring keys), and their application to a row of weights. Shared by the
/// prefill and decode forwards and by the backward, so all three drop exactly the
/// weights the float64 oracle drops, whatever the tiling or thread count.
#include <cstdint>

#include "../core/dropout.hpp"
#include "../core/tensor_view.hpp"

namespace attnkit::detail {

/// Keep bits of keys j0 … j0 + n − 1 (n ≤ 64) of row (b, h, i), in the call's
/// original indexing: bit t is set iff key j0 + t is kept.
inline std::uint64_t dropout_keep_bits(const dropout_mask& m, index_t b, index_t h, index_t i, index_t j0,
                                       int n) noexcept {
  std::uint64_t bits = 0;
  const std::uint32_t threshold = m.threshold();
  index_t j = j0;
  const index_t end = j0 + n;
  while (j < end) {
    const auto words = m.block(b, h, i, j >> 2);
    for (int x = static_cast<int>(j & 3); x < 4 && j < end; ++x, ++j)
      if (words[static_cast<std::size_t>(x)] >= threshold) bits |= std::uint64_t{1} << (j - j0);
  }
  return bits;
}

/// Drops weights p[0, n) of row (b, h, i) whose keys are j0 … j0 + n − 1: kept ones
/// are scaled by `scale` (1/(1 − p)), dropped ones become 0 (NaN included).
inline void drop_weights(const dropout_mask& m, float scale, index_t b, index_t h, index_t i, index_t j0, float* p,
                         index_t n) noexcept {
  for (index_t t0 = 0; t0 < n; t0 += 64) {
    const int len = static_cast<int>(n - t0 < 64 ? n - t0 : 64);
    const std::uint64_t keep = dropout_keep_bits(m, b, h, i, j0 + t0, len);
    float* x = p + t0;
    for (int t = 0; t < len; ++t) x[t] = (keep >> t) & 1u ? x[t] * scale : 0.0f;
  }
}

/// drop_weights for keys given one by one: weight t belongs to key `key(t)` (a row
/// reordered by a pattern or a permutation).
template <class Key>
void drop_weights_mapped(const dropout_mask& m, float scale, index_t b, index_t h, index_t i, float* p, index_t n,
                         const Key& key) {
  for (index_t t = 0; t < n; ++t) p[t] = m.keep(b, h, i, key(t)) ? p[t] * scale : 0.0f;
}

}  // namespace attnkit::detail
