#pragma once
/// \file
/// The accumulating register micro-kernel of the backward pass. Three of its five
/// products per tile accumulate into memory that outlives the tile:
///   dV[BN][Dv] += Pᵀ·dO,   dK[BN][D] += dSᵀ·Q   (A = P or dS read transposed)
///   dQ[M][D]   += dS·K                           (A = dS read as stored)
/// all of the form C[R][NV·W] += Σ_k A[r·ar + k·ak] · B[k·bs + c·W]: one operand
/// broadcast (an element of P or dS), the other a vector load of a packed row, the
/// R×NV C tile held in registers over the whole k loop (6×4 zmm on AVX-512), as in
/// the forward's qk_tile / pv_tile. The other two products (S = Q·Kᵀ, dP = dO·Vᵀ)
/// are the forward's qk_tile itself.
#include "../../simd/microkernel.hpp"

namespace attnkit::simd {

/// C[R][NV·W] += Σ_{k<K} A[r·ar + k·ak] · B[k·bs + c·W] (C rows cs apart).
template <class Arch, int R, int NV>
ATTNKIT_FORCE_INLINE void gemm_acc_tile(const float* A, long ar, long ak, const float* B, long bs, long K, float* C,
                                        long cs) noexcept {
  using O = ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  vf acc[R][NV];
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = O::load(C + r * cs + c * W);
  for (long k = 0; k < K; ++k) {
    vf b[NV];
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) b[c] = O::load(B + k * bs + c * W);
    const float* a = A + k * ak;
    ATTNKIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const vf x = O::set1(a[r * ar]);
      ATTNKIT_UNROLL
      for (int c = 0; c < NV; ++c) acc[r][c] = O::fma(x, b[c], acc[r][c]);
    }
  }
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) O::store(C + r * cs + c * W, acc[r][c]);
}

template <class Arch, int R>
inline void gemm_acc_rows(int nv, const float* A, long ar, long ak, const float* B, long bs, long K, float* C,
                          long cs) noexcept {
  switch (nv) {
    case 4: gemm_acc_tile<Arch, R, 4>(A, ar, ak, B, bs, K, C, cs); break;
    case 3: gemm_acc_tile<Arch, R, 3>(A, ar, ak, B, bs, K, C, cs); break;
    case 2: gemm_acc_tile<Arch, R, 2>(A, ar, ak, B, bs, K, C, cs); break;
    default: gemm_acc_tile<Arch, R, 1>(A, ar, ak, B, bs, K, C, cs); break;
  }
}

/// C[rows][vecs·W] += Σ_{k<K} A[r·ar + k·ak] · B[k·bs + c·W] for any rows and
/// vecs: tiles of up to 6 rows × 4 vectors (the last ones narrower).
template <class Arch>
inline void gemm_acc(int rows, int vecs, const float* A, long ar, long ak, const float* B, long bs, long K, float* C,
                     long cs) noexcept {
  constexpr int W = ops<Arch>::width;
  if (K <= 0) return;
  for (int r0 = 0; r0 < rows; r0 += 6) {
    const int R = rows - r0 < 6 ? rows - r0 : 6;
    const float* a = A + r0 * ar;
    float* c0 = C + r0 * cs;
    for (int v = 0; v < vecs; v += 4) {
      const int nv = vecs - v < 4 ? vecs - v : 4;
      const float* b = B + v * W;
      float* c = c0 + v * W;
      switch (R) {
        case 6: gemm_acc_rows<Arch, 6>(nv, a, ar, ak, b, bs, K, c, cs); break;
        case 5: gemm_acc_rows<Arch, 5>(nv, a, ar, ak, b, bs, K, c, cs); break;
        case 4: gemm_acc_rows<Arch, 4>(nv, a, ar, ak, b, bs, K, c, cs); break;
        case 3: gemm_acc_rows<Arch, 3>(nv, a, ar, ak, b, bs, K, c, cs); break;
        case 2: gemm_acc_rows<Arch, 2>(nv, a, ar, ak, b, bs, K, c, cs); break;
        default: gemm_acc_rows<Arch, 1>(nv, a, ar, ak, b, bs, K, c, cs); break;
      }
    }
  }
}

/// The same product, element by element, skipping the terms whose A element is 0:
/// the path of tiles that meet a NaN or Inf in B, where 0·NaN must not turn a
/// masked (query, key) pair into a NaN gradient. `n` = columns of C and B.
inline void gemm_acc_skip_zeros(int rows, long n, const float* A, long ar, long ak, const float* B, long bs, long K,
                                float* C, long cs) noexcept {
  for (int r = 0; r < rows; ++r) {
    float* c = C + r * cs;
    for (long k = 0; k < K; ++k) {
      const float a = A[r * ar + k * ak];
      if (a == 0.0f) continue;
      const float* b = B + k * bs;
      for (long d = 0; d < n; ++d) c[d] += a * b[d];
    }
  }
}

}  // namespace attnkit::simd
