#pragma once
/// \file
/// The small dense products of the kernelised backward (backward_passes.hpp), on
/// the same register tiles as every other kernel (simd/microkernel.hpp): a GEMM
/// that accumulates into whole vectors, a row-block transpose, and the masked
/// tile product that keeps a masked entry's 0 from meeting a NaN or Inf (0·NaN).
#include <algorithm>

#include "../../simd/microkernel.hpp"
#include "../../simd/transpose.hpp"

namespace attnkit::detail {

/// C[m][0..n) += A[m][k] · B[k][0..n), n a multiple of the arch's width (padded
/// rows), in strips of 6 rows on pv_rows (B rows are vector loads, A broadcast).
template <class Arch>
void gemm_acc(index_t m, index_t n, index_t k, const float* A, index_t lda, const float* B, index_t ldb, float* C,
              index_t ldc) {
  constexpr int MR = simd::tile_shape<Arch>::rows, W = simd::ops<Arch>::width;
  static constexpr float ones[MR] = {1, 1, 1, 1, 1, 1};
  if (k <= 0 || n <= 0) return;
  for (index_t r0 = 0; r0 < m; r0 += MR) {
    const int R = static_cast<int>(std::min<index_t>(MR, m - r0));
    simd::pv_rows<Arch>(R, static_cast<int>(n / W), A + r0 * lda, lda, B, ldb, k, C + r0 * ldc, ldc, ones);
  }
}

/// dst[d·ld + i] = src[i·stride + d] for i < rows, d < dim, and dst[d·ld + i] = 0 for
/// rows ≤ i < cols (a zero-padded panel of `cols` columns).
template <class Arch>
void transpose_rows(const float* src, index_t stride, index_t rows, index_t dim, float* dst, index_t ld,
                    index_t cols) {
  index_t i = 0;
  for (; i + 16 <= rows; i += 16) simd::transpose_16<Arch>(src + i * stride, stride, dim, dst + i, ld);
  for (; i < rows; ++i)
    for (index_t d = 0; d < dim; ++d) dst[d * ld + i] = src[i * stride + d];
  if (rows < cols)
    for (index_t d = 0; d < dim; ++d) std::fill(dst + d * ld + rows, dst + d * ld + cols, 0.0f);
}

/// t[i] = lo ≤ i < hi ? (t[i] + add[i]) · scale[i] : 0 for i < n (n a multiple of
/// the width; `add`, `scale` optional and read at every i < n): one row of a masked
/// tile, a select per lane (a masked NaN or Inf becomes 0, never 0·NaN).
template <class Arch>
ATTNKIT_FORCE_INLINE void mask_tile_row(float* t, index_t n, index_t lo, index_t hi, const float* add,
                                        const float* scale) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  const auto base = O::iota(0.0f);
  const float up = static_cast<float>(hi), down = static_cast<float>(1 - lo);  // idx < hi and −idx < 1 − lo
  for (index_t i = 0; i < n; i += W) {
    const auto idx = base + O::set1(static_cast<float>(i));
    auto x = O::load(t + i);
    if (add) x = x + O::load(add + i);
    if (scale) x = x * O::load(scale + i);
    x = O::keep_below(x, idx, up);
    O::store(t + i, O::keep_below(x, O::set1(0.0f) - idx, down));
  }
}

/// C[R rows][0..n) += P[R][keys] · V[keys][0..n) for a masked weight tile P (row
/// stride ps): on the register tiles when V is finite, else key by key over the
/// non-zero weights only, so a masked key's NaN or Inf stays out of rows that do
/// not see it.
template <class Arch>
void masked_tile_acc(int R, const float* P, index_t ps, const float* V, index_t vs, index_t keys, float* C,
                     index_t cs, index_t n, bool v_nonfinite) {
  constexpr int W = simd::ops<Arch>::width;
  static constexpr float ones[6] = {1, 1, 1, 1, 1, 1};
  if (keys <= 0) return;
  if (!v_nonfinite) {
    simd::pv_rows<Arch>(R, static_cast<int>(n / W), P, ps, V, vs, keys, C, cs, ones);
    return;
  }
  for (int r = 0; r < R; ++r)
    for (index_t j = 0; j < keys; ++j)
      if (const float p = P[r * ps + j]; p != 0.0f) simd::axpy<Arch>(p, V + j * vs, C + r * cs, n);
}

}  // namespace attnkit::detail
