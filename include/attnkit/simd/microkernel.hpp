#pragma once
/// \file
/// Register-blocked micro-kernels shared by every quadratic-family variant.
///
/// qk_tile: S[R][NC·W] = Q[R][D] · Kᵀ panel [D][NC·W] (panel rows `kstride` floats
///   apart, so a narrower tile can read a sub-range of a wider panel). One operand is broadcast
///   (a query element), the other is a vector load from the packed Kᵀ panel, so
///   R·NC accumulators stay in registers for the whole D loop (6×4 zmm on AVX-512).
/// pv_tile:  O[R][NV·W] += P[R][BN] · V[BN][NV·W], broadcasting P, loading V rows
///   (pv_tile_segments: over several (P, V) pieces, O kept in registers between them).
#include <type_traits>

#include "vec.hpp"

/// Fully unrolls a fixed-trip loop over register-tile rows/vectors. GCC only does
/// this by itself at -O3; without it the accumulators spill at -O2 (3x slower).
#if defined(__GNUC__)
#define ATTNKIT_UNROLL _Pragma("GCC unroll 16")
#else
#define ATTNKIT_UNROLL
#endif

namespace attnkit::simd {

/// Tile shape per architecture: R query rows × NC vectors of keys. 32 vector
/// registers (AVX-512) hold 6×4 accumulators; 16 (SSE/AVX2) hold 6×2.
template <class Arch>
struct tile_shape {
  static constexpr int width = ops<Arch>::width;
  static constexpr int rows = 6;
  static constexpr int key_vectors = is_scalar_v<Arch> ? 8 : (width >= 16 ? 4 : 2);
  static constexpr int keys = key_vectors * width;  ///< keys per tile (BN)
  static constexpr int value_vectors = key_vectors;  ///< output vectors per P·V pass
};

template <class Arch, int R, int NC>
ATTNKIT_FORCE_INLINE void qk_tile(const float* q, long q_stride, const float* kpanel, long d_len,
                    typename ops<Arch>::vf (&acc)[R][NC], long kstride = NC * ops<Arch>::width) noexcept {
  using O = ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NC; ++c) acc[r][c] = O::set1(0.0f);
  for (long d = 0; d < d_len; ++d) {
    const float* kp = kpanel + d * kstride;
    vf kv[NC];
    ATTNKIT_UNROLL
    for (int c = 0; c < NC; ++c) kv[c] = O::load(kp + c * W);
    ATTNKIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const vf qb = O::set1(q[r * q_stride + d]);
      ATTNKIT_UNROLL
      for (int c = 0; c < NC; ++c) acc[r][c] = O::fma(qb, kv[c], acc[r][c]);
    }
  }
}

/// A piece of a P·V pass: `keys` weights from p (one per key, rows p_stride apart)
/// against the V rows from v (v_stride apart).
struct pv_segment {
  const float* p;
  const float* v;
  long keys;
};

/// O[R][NV·W] = row_scale·O + Σ_segments P·V. The o rows (stride o_stride) are
/// loaded and multiplied by `row_scale[r]` (the online softmax rescale; 1 for
/// unnormalised variants) once, kept in registers across the segments (the runs of
/// a sparse pattern's visited tiles), and stored back once. `v_offset` selects the
/// output columns of this pass inside each V row.
template <class Arch, int R, int NV>
ATTNKIT_FORCE_INLINE void pv_tile_segments(const pv_segment* seg, int nseg, long p_stride, long v_stride,
                                           long v_offset, float* o, long o_stride, const float* row_scale) noexcept {
  using O = ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  vf acc[R][NV];
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r) {
    const vf s = O::set1(row_scale[r]);
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = O::load(o + r * o_stride + c * W) * s;
  }
  for (int u = 0; u < nseg; ++u) {
    const float* p = seg[u].p;
    const float* v = seg[u].v + v_offset;
    for (long j = 0; j < seg[u].keys; ++j) {
      vf vv[NV];
      ATTNKIT_UNROLL
      for (int c = 0; c < NV; ++c) vv[c] = O::load(v + j * v_stride + c * W);
      ATTNKIT_UNROLL
      for (int r = 0; r < R; ++r) {
        const vf pb = O::set1(p[r * p_stride + j]);
        ATTNKIT_UNROLL
        for (int c = 0; c < NV; ++c) acc[r][c] = O::fma(pb, vv[c], acc[r][c]);
      }
    }
  }
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) O::store(o + r * o_stride + c * W, acc[r][c]);
}

/// O[R][NV·W] = row_scale·O + P[R][keys]·V[keys][NV·W]: one segment.
template <class Arch, int R, int NV>
ATTNKIT_FORCE_INLINE void pv_tile(const float* p, long p_stride, const float* v, long v_stride, long keys, float* o,
                                  long o_stride, const float* row_scale) noexcept {
  const pv_segment seg{p, v, keys};
  pv_tile_segments<Arch, R, NV>(&seg, 1, p_stride, v_stride, 0, o, o_stride, row_scale);
}

/// Runtime (rows, vectors) -> compile-time pv_tile_segments instance.
template <class Arch, int R>
inline void pv_segments_r(int nv, const pv_segment* seg, int nseg, long ps, long vs, long v_offset, float* o,
                          long os, const float* scale) {
  switch (nv) {
    case 4: pv_tile_segments<Arch, R, 4>(seg, nseg, ps, vs, v_offset, o, os, scale); break;
    case 3: pv_tile_segments<Arch, R, 3>(seg, nseg, ps, vs, v_offset, o, os, scale); break;
    case 2: pv_tile_segments<Arch, R, 2>(seg, nseg, ps, vs, v_offset, o, os, scale); break;
    default: pv_tile_segments<Arch, R, 1>(seg, nseg, ps, vs, v_offset, o, os, scale); break;
  }
}
/// O[R][nv·W] = scale·O + Σ_segments P·V for any R <= 6 and nv >= 1 vectors (in
/// passes of <= 4 vectors).
template <class Arch>
inline void pv_segments(int R, int nv, const pv_segment* seg, int nseg, long ps, long vs, float* o, long os,
                        const float* scale) {
  constexpr int W = ops<Arch>::width;
  for (int c = 0; c < nv; c += 4) {
    const int n = nv - c < 4 ? nv - c : 4;
    const long off = c * W;
    float* oc = o + off;
    switch (R) {
      case 6: pv_segments_r<Arch, 6>(n, seg, nseg, ps, vs, off, oc, os, scale); break;
      case 5: pv_segments_r<Arch, 5>(n, seg, nseg, ps, vs, off, oc, os, scale); break;
      case 4: pv_segments_r<Arch, 4>(n, seg, nseg, ps, vs, off, oc, os, scale); break;
      case 3: pv_segments_r<Arch, 3>(n, seg, nseg, ps, vs, off, oc, os, scale); break;
      case 2: pv_segments_r<Arch, 2>(n, seg, nseg, ps, vs, off, oc, os, scale); break;
      default: pv_segments_r<Arch, 1>(n, seg, nseg, ps, vs, off, oc, os, scale); break;
    }
  }
}
/// O[R][nv·W] = scale·O + P·V for any R <= 6 and nv >= 1 vectors: one segment.
template <class Arch>
inline void pv_rows(int R, int nv, const float* p, long ps, const float* v, long vs, long keys, float* o,
                    long os, const float* scale) {
  const pv_segment seg{p, v, keys};
  pv_segments<Arch>(R, nv, &seg, 1, ps, vs, o, os, scale);
}

/// Runtime R -> qk_tile instance whose R×(NC·W) result is stored to `tile` (row stride NC·W).
template <class Arch>
inline void qk_rows(int R, const float* q, long q_stride, const float* kpanel, long d_len, float* tile) {
  using O = ops<Arch>;
  constexpr int NC = tile_shape<Arch>::key_vectors, W = O::width;
  auto run = [&](auto rows) {
    constexpr int RR = decltype(rows)::value;
    typename O::vf acc[RR][NC];
    qk_tile<Arch, RR, NC>(q, q_stride, kpanel, d_len, acc);
    ATTNKIT_UNROLL
    for (int r = 0; r < RR; ++r)
      ATTNKIT_UNROLL
      for (int c = 0; c < NC; ++c) O::store(tile + r * NC * W + c * W, acc[r][c]);
  };
  switch (R) {
    case 6: run(std::integral_constant<int, 6>{}); break;
    case 5: run(std::integral_constant<int, 5>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    default: run(std::integral_constant<int, 1>{}); break;
  }
}

/// Σ a[i]·b[i], two vector accumulators and a scalar tail.
template <class Arch>
inline float dot(const float* a, const float* b, long n) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  typename O::vf acc0 = O::set1(0.0f), acc1 = O::set1(0.0f);
  long d = 0;
  for (; d + 2 * W <= n; d += 2 * W) {
    acc0 = O::fma(O::load(a + d), O::load(b + d), acc0);
    acc1 = O::fma(O::load(a + d + W), O::load(b + d + W), acc1);
  }
  for (; d + W <= n; d += W) acc0 = O::fma(O::load(a + d), O::load(b + d), acc0);
  float s = O::reduce_add(acc0 + acc1);
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

/// Whether x[0..n) holds a NaN or ±Inf (x − x is NaN exactly then). Explicit
/// vectors: GCC's -O2 cost model leaves such a reduction loop scalar.
template <class Arch>
inline bool any_nonfinite(const float* x, long n) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  typename O::vf acc = O::set1(0.0f);
  long d = 0;
  for (; d + W <= n; d += W) {
    const typename O::vf v = O::load(x + d);
    acc = acc + (v - v);
  }
  float tail = 0.0f;
  for (; d < n; ++d) tail += x[d] - x[d];
  return O::has_nan(acc) || tail != tail;
}

/// y[0..n) = x[0..n); true when x holds a NaN or ±Inf. One pass: the packing of
/// V rows copies and probes each row while it is in registers.
template <class Arch>
inline bool copy_probe(const float* x, float* y, long n) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  typename O::vf acc = O::set1(0.0f);
  long d = 0;
  for (; d + W <= n; d += W) {
    const typename O::vf v = O::load(x + d);
    O::store(y + d, v);
    acc = acc + (v - v);
  }
  float tail = 0.0f;
  for (; d < n; ++d) {
    y[d] = x[d];
    tail += x[d] - x[d];
  }
  return O::has_nan(acc) || tail != tail;
}

/// p[0..n) = x. Explicit vector stores: glibc's memset takes `rep stosb` for a
/// block's few-KB accumulators, which ran at ≈ 8 bytes per cycle on Zen 5 here.
template <class Arch>
inline void fill(float* p, float x, long n) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  const typename O::vf v = O::set1(x);
  long d = 0;
  for (; d + W <= n; d += W) O::store(p + d, v);
  for (; d < n; ++d) p[d] = x;
}

/// y[0..n) = s · x[0..n). Explicit vectors (GCC 12 -O2 leaves loops with a tail
/// scalar); short per row, so out-of-order execution overlaps many rows' misses.
template <class Arch>
inline void scale_copy(const float* x, float s, float* y, long n) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  const typename O::vf sv = O::set1(s);
  long d = 0;
  for (; d + W <= n; d += W) O::store(y + d, O::load(x + d) * sv);
  for (; d < n; ++d) y[d] = x[d] * s;
}

/// o[0..n) += p · v[0..n)
template <class Arch>
inline void axpy(float p, const float* v, float* o, long n) noexcept {
  using O = simd::ops<Arch>;
  constexpr int W = O::width;
  const typename O::vf pv = O::set1(p);
  long d = 0;
  for (; d + W <= n; d += W) O::store(o + d, O::fma(pv, O::load(v + d), O::load(o + d)));
  for (; d < n; ++d) o[d] += p * v[d];
}

}  // namespace attnkit::simd
