#pragma once
// Shared test helpers: seeded random tensors, error norms, the arch list.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

namespace attnkit_test {

using attnkit::index_t;

/// The SIMD code paths the tests instantiate. Every compiled arch by default; the
/// sanitizer build (ATTNKIT_TEST_ARCHS=best) keeps only the default (best) arch, to
/// stay in CI's time budget: ASan and UBSan look for memory and UB errors in the
/// shared skeleton, which every arch runs through, and in the widest vectors' tails
/// and masks; the scalar path (one lane, no tails) is checked by the plain build and,
/// under the sanitizers, by the edge-case tests (best_archs).
using best_archs = std::conditional_t<attnkit::simd::is_scalar_v<attnkit::simd::default_arch>,
                                      std::tuple<attnkit::simd::scalar>,
                                      std::tuple<attnkit::simd::scalar, attnkit::simd::default_arch>>;
#if defined(ATTNKIT_TEST_BEST_ARCH_ONLY)
using archs = std::tuple<attnkit::simd::default_arch>;
#else
using archs = attnkit::simd::compiled_archs;
#endif

/// Deterministic normal(0, sigma) data; the seed is printed by failing tests via INFO.
inline std::vector<float> randn(std::size_t n, std::uint32_t seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& e : x) e = nd(gen);
  return x;
}

inline double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float e : x) m = std::max(m, static_cast<double>(std::abs(e)));
  return m;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

/// A B×H×L×D problem with separate kv heads and value dim, stored BHSD.
struct problem {
  index_t B, Hq, Hkv, Lq, Lk, D, Dv;
  std::vector<float> q, k, v;
  problem(index_t B_, index_t Hq_, index_t Hkv_, index_t Lq_, index_t Lk_, index_t D_, index_t Dv_,
          std::uint32_t seed, float sigma = 1.0f)
      : B(B_), Hq(Hq_), Hkv(Hkv_), Lq(Lq_), Lk(Lk_), D(D_), Dv(Dv_),
        q(randn(static_cast<std::size_t>(B * Hq * Lq * D), seed, sigma)),
        k(randn(static_cast<std::size_t>(B * Hkv * Lk * D), seed + 1, sigma)),
        v(randn(static_cast<std::size_t>(B * Hkv * Lk * Dv), seed + 2)) {}
  std::size_t out_size() const { return static_cast<std::size_t>(B * Hq * Lq * Dv); }
  attnkit::tensor_view<const float> qv() const { return attnkit::bhsd(q.data(), B, Hq, Lq, D); }
  attnkit::tensor_view<const float> kv() const { return attnkit::bhsd(k.data(), B, Hkv, Lk, D); }
  attnkit::tensor_view<const float> vv() const { return attnkit::bhsd(v.data(), B, Hkv, Lk, Dv); }
  attnkit::tensor_view<float> ov(std::vector<float>& o) const { return attnkit::bhsd(o.data(), B, Hq, Lq, Dv); }
};

}  // namespace attnkit_test
