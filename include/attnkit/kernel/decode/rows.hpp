#pragma once
/// \file
/// Where the decode skeleton finds the K and V rows of a (batch, kv head): a dense
/// cache (a strided view, the rows of a head `seq stride` elements apart) or a paged
/// one (a pool of pages and a block table, vLLM / FlashAttention layout). The
/// skeleton asks a source for runs of rows that lie a constant stride apart (a
/// whole head of a dense cache, the rest of one page of a paged cache), so its
/// kernels read either without knowing which.
///
/// Elements: float, bfloat16, float16 (one value each) or block_q8<S> (32 values),
/// so a row of D values is D / values_per_element<E> elements.
#include <algorithm>
#include <cstdint>

#include "../../core/dtype.hpp"
#include "../../core/quant.hpp"
#include "../../core/tensor_view.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// Rows [j, j + count) of one head, `stride` elements apart.
template <class E>
struct row_run {
  const E* data;
  index_t stride;
  index_t count;
};

/// The rows of a dense cache: view [B, Hkv, L, D / values_per_element].
template <class E>
struct dense_rows {
  using element = E;
  tensor_view<const E> view;

  const E* row(index_t b, index_t g, index_t j) const noexcept { return view.row(b, g, j); }
  /// Rows [j, end): one run.
  row_run<E> run(index_t b, index_t g, index_t j, index_t end) const noexcept {
    return {view.row(b, g, j), view.stride[seq_axis], end - j};
  }
};

/// The rows of a paged cache: page p holds keys [p·page_size, (p+1)·page_size) of
/// the sequence whose block-table row names it; element (row r of page, head g) is
/// at pool + page·page_stride + r·row_stride + g·head_stride.
template <class E>
struct paged_rows {
  using element = E;
  const E* pool = nullptr;
  index_t page_stride = 0, row_stride = 0, head_stride = 0, page_size = 0;
  const std::int32_t* table = nullptr;  ///< [B, table_stride] page indices
  index_t table_stride = 0;

  const E* row(index_t b, index_t g, index_t j) const noexcept {
    const index_t page = table[b * table_stride + j / page_size];
    return pool + page * page_stride + g * head_stride + (j % page_size) * row_stride;
  }
  /// Rows [j, end) up to the end of j's page.
  row_run<E> run(index_t b, index_t g, index_t j, index_t end) const noexcept {
    return {row(b, g, j), row_stride, std::min(end, (j / page_size + 1) * page_size) - j};
  }
};

/// Values of one row as float (exact: widening or dequantisation).
template <class E>
inline void row_to_float(const E* src, float* dst, index_t d) noexcept {
  if constexpr (is_q8_v<E>)
    dequantize_q8(src, d, dst);
  else
    widen(src, dst, d);
}

/// Bytes of one row of d values.
template <class E>
constexpr std::size_t row_bytes(index_t d) noexcept {
  return static_cast<std::size_t>(d / values_per_element<E>) * sizeof(E);
}

}  // namespace attnkit::detail
