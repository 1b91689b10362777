#pragma once
/// \file
/// Running first and second moments of float rows in double, with the rows'
/// extremes: the one pass over all of Q or K that log-normal attention's moment
/// matching makes (kernel/kernelized/moments.hpp). It reads whole tensors from
/// memory, so it is written to run at memory speed: each float vector is widened in
/// registers into two double vectors (vcvtps2pd on x86, one overload per arch tag
/// below) that feed independent double accumulators. A scalar loop here cost LLN
/// ~17% of its time.
#include <limits>
#include <utility>

#include "vec.hpp"

namespace attnkit::simd {

namespace detail {

/// The low and high halves of a float vector as two double vectors.
template <class A>
ATTNKIT_FORCE_INLINE std::pair<xsimd::batch<double, A>, xsimd::batch<double, A>> widen_halves(
    xsimd::batch<float, A> x, xsimd::generic) noexcept {
  constexpr std::size_t n = xsimd::batch<double, A>::size;
  alignas(64) float f[2 * n];
  alignas(64) double lo[n], hi[n];
  x.store_aligned(f);
  for (std::size_t i = 0; i < n; ++i) lo[i] = f[i], hi[i] = f[n + i];
  return {xsimd::batch<double, A>::load_aligned(lo), xsimd::batch<double, A>::load_aligned(hi)};
}
#if XSIMD_WITH_SSE2
template <class A>
ATTNKIT_FORCE_INLINE std::pair<xsimd::batch<double, A>, xsimd::batch<double, A>> widen_halves(
    xsimd::batch<float, A> x, xsimd::sse2) noexcept {
  const __m128 v = x;
  return {_mm_cvtps_pd(v), _mm_cvtps_pd(_mm_movehl_ps(v, v))};
}
#endif
#if XSIMD_WITH_AVX
template <class A>
ATTNKIT_FORCE_INLINE std::pair<xsimd::batch<double, A>, xsimd::batch<double, A>> widen_halves(
    xsimd::batch<float, A> x, xsimd::avx) noexcept {
  const __m256 v = x;
  return {_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))};
}
#endif
#if XSIMD_WITH_AVX512F
template <class A>
ATTNKIT_FORCE_INLINE std::pair<xsimd::batch<double, A>, xsimd::batch<double, A>> widen_halves(
    xsimd::batch<float, A> x, xsimd::avx512f) noexcept {
  const __m512 v = x;
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return {_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(high)};
}
#endif

}  // namespace detail

/// Σ(x − c), Σ(x − c)² (double) and max/min (float) over rows of floats, c a
/// centre chosen by the caller (the cancellation of a one-pass variance in double
/// is then ε·(μ − c)²/σ² relative). Extremes are taken only over rows added with
/// `track`; a NaN never replaces an extreme (x86 max/min keep their second operand
/// on NaN), ±inf is kept. Results depend only on the rows added and their order.
template <class Arch>
struct moment_sums {
  static constexpr float inf = std::numeric_limits<float>::infinity();
  double t1 = 0, t2 = 0;  ///< scalar parts (the arch's tail; everything on simd::scalar)
  float thi = -inf, tlo = inf;
  double centre = 0;

  explicit moment_sums(double c) noexcept : centre(c) {}

  /// Adds x[0..n).
  void add_row(const float* x, long n, bool track) noexcept {
    for (long d = 0; d < n; ++d) add_one(x[d], track);
  }
  /// (Σ(x − c), Σ(x − c)², max, min) of everything added.
  void finish(double& s1, double& s2, float& hi, float& lo) const noexcept { s1 = t1, s2 = t2, hi = thi, lo = tlo; }

 protected:
  ATTNKIT_FORCE_INLINE void add_one(float x, bool track) noexcept {
    const double y = static_cast<double>(x) - centre;
    t1 += y;
    t2 += y * y;
    if (track) {
      thi = x > thi ? x : thi;
      tlo = x < tlo ? x : tlo;
    }
  }
};

/// SIMD form: two float vectors per step, each widened into two double vectors,
/// so four independent chains per sum hide the add latency.
template <class Arch>
  requires(!is_scalar_v<Arch>)
struct moment_sums<Arch> : moment_sums<scalar> {
  using O = ops<Arch>;
  using vf = typename O::vf;
  using vd = xsimd::batch<double, Arch>;
  static constexpr int W = O::width;
  vd s1[4], s2[4], c;
  vf hi = vf(-inf), lo = vf(inf);

  explicit moment_sums(double centre) noexcept : moment_sums<scalar>(centre), c(centre) {
    for (int u = 0; u < 4; ++u) s1[u] = vd(0.0), s2[u] = vd(0.0);
  }

  void add_row(const float* x, long n, bool track) noexcept {
    if (track)
      add<true>(x, n);
    else
      add<false>(x, n);
  }

  void finish(double& r1, double& r2, float& rhi, float& rlo) const noexcept {
    const vd a = (s1[0] + s1[1]) + (s1[2] + s1[3]), b = (s2[0] + s2[1]) + (s2[2] + s2[3]);
    alignas(64) double la[vd::size], lb[vd::size];
    alignas(64) float fh[W], fl[W];
    a.store_aligned(la);
    b.store_aligned(lb);
    hi.store_aligned(fh);
    lo.store_aligned(fl);
    r1 = t1, r2 = t2, rhi = thi, rlo = tlo;
    for (std::size_t l = 0; l < vd::size; ++l) r1 += la[l], r2 += lb[l];
    for (int l = 0; l < W; ++l) {
      rhi = fh[l] > rhi ? fh[l] : rhi;
      rlo = fl[l] < rlo ? fl[l] : rlo;
    }
  }

 private:
  template <bool Track>
  ATTNKIT_FORCE_INLINE void add(const float* x, long n) noexcept {
    long d = 0;
    for (; d + 2 * W <= n; d += 2 * W) {
      step<0, Track>(O::load(x + d));
      step<2, Track>(O::load(x + d + W));
    }
    for (; d + W <= n; d += W) step<0, Track>(O::load(x + d));
    for (; d < n; ++d) add_one(x[d], Track);
  }
  template <int U, bool Track>
  ATTNKIT_FORCE_INLINE void step(vf x) noexcept {
    if constexpr (Track) {
      hi = O::max(x, hi);
      lo = O::min(x, lo);
    }
    const auto [a, b] = detail::widen_halves(x, Arch{});
    const vd ya = a - c, yb = b - c;
    s1[U] += ya;
    s1[U + 1] += yb;
    s2[U] = xsimd::fma(ya, ya, s2[U]);
    s2[U + 1] = xsimd::fma(yb, yb, s2[U + 1]);
  }
};

}  // namespace attnkit::simd
