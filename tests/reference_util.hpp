#pragma once
// Small helpers of the reference-oracle tests (tests/test_reference_*.cpp):
// deterministic data and contiguous tensors, independent of the kernels.
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

namespace reftest {

using attnkit::index_t;

/// Deterministic values in [-scale, scale) from a counter-based hash (same on every
/// standard library).
inline std::vector<double> data(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::vector<double> x(n);
  for (std::size_t i = 0; i < n; ++i)
    x[i] = scale * (2.0 * attnkit::random::uniform_open01(attnkit::random::counter_hash(seed, 17, 0, i)) - 1.0);
  return x;
}

/// A contiguous BHSD tensor of doubles.
struct tensor {
  index_t B, H, L, D;
  std::vector<double> x;
  tensor(index_t b, index_t h, index_t l, index_t d, std::uint64_t seed = 0, double scale = 1.0)
      : B(b), H(h), L(l), D(d), x(seed ? data(static_cast<std::size_t>(b * h * l * d), seed, scale)
                                       : std::vector<double>(static_cast<std::size_t>(b * h * l * d), 0.0)) {}
  attnkit::tensor_view<const double> cv() const { return attnkit::bhsd(x.data(), B, H, L, D); }
  attnkit::tensor_view<double> v() { return attnkit::bhsd(x.data(), B, H, L, D); }
  double& operator()(index_t b, index_t h, index_t l, index_t d) { return x[static_cast<std::size_t>(((b * H + h) * L + l) * D + d)]; }
  double at(index_t b, index_t h, index_t l, index_t d) const { return x[static_cast<std::size_t>(((b * H + h) * L + l) * D + d)]; }
};

inline double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = a.size() == b.size() ? 0.0 : INFINITY;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace reftest
