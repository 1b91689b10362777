#pragma once
/// \file
/// One pass over a view for log-normal attention's moment matching: the sample
/// standard deviation of all entries and, on request, each (batch, head)'s extremes
/// over its valid rows (the key shift). The arithmetic is simd::moment_sums.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/dtype.hpp"
#include "../../core/tensor_view.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "../../simd/arch.hpp"
#include "../../simd/moments.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// What one pass over a view yields: the sample standard deviation (n − 1) of all
/// its entries and, when asked for, each (batch, head)'s largest and smallest entry
/// over the rows [0, rows(batch)) (NaN skipped, ±inf kept).
struct view_moments {
  double std = 0;
  std::vector<float> max, min;  ///< [batch · heads]; empty unless extremes were asked for
};

/// A worker's buffer for 16-bit rows widened to float (moments_of).
struct widened_row {
  aligned_vector<float> wide;
  std::size_t bytes() const { return wide.capacity() * sizeof(float); }
};

/// One pass over a view, in double: sums of x − s and (x − s)² with s the mean of the
/// first row, var = (Σ(x−s)² − (Σ(x−s))²/n) / (n − 1). In double the cancellation
/// costs about ε·(μ − s)²/σ² relative: negligible unless the first row sits ~10⁶ σ
/// from the mean. Rows are split by (batch, head) over the thread pool and the
/// partial sums combined in a fixed order: the result does not depend on the thread
/// count. `rows(b)` (extremes only) bounds the rows whose extremes count.
template <class Arch, class T, class Rows>
view_moments moments_of(const tensor_view<const T>& t, int threads, bool extremes, Rows rows, workspace& ws) {
  const index_t B = t.batch(), H = t.heads(), L = t.seq(), D = t.dim();
  const double n = static_cast<double>(B * H * L * D);
  view_moments out;
  constexpr float inf = std::numeric_limits<float>::infinity();
  if (extremes) {
    out.max.assign(static_cast<std::size_t>(B * H), -inf);
    out.min.assign(static_cast<std::size_t>(B * H), inf);
  }
  if (B * H * L * D == 0) return out;
  double pilot = 0;
  for (index_t d = 0; d < D; ++d) pilot += static_cast<double>(to_float(t.row(0, 0, 0)[d]));
  pilot /= static_cast<double>(D);
  if (!std::isfinite(pilot)) pilot = 0;  // NaN/Inf data: the sums below carry it
  std::vector<double> part1(static_cast<std::size_t>(B * H)), part2(part1.size());
  ws.reserve_slots(threads);
  parallel_for(B * H, threads, [&](index_t bh, int slot) {
    simd::moment_sums<Arch> sums(pilot);
    const index_t tracked = extremes ? std::min<index_t>(std::max<index_t>(rows(bh / H), 0), L) : 0;
    auto& wide = ws.slot(slot).get<widened_row>().wide;  // 16-bit rows, widened
    if constexpr (!std::is_same_v<T, float>)
      if (wide.size() < static_cast<std::size_t>(D)) wide.resize(static_cast<std::size_t>(D));
    for (index_t s = 0; s < L; ++s) {
      const float* r;
      if constexpr (std::is_same_v<T, float>) {
        r = t.row(bh / H, bh % H, s);
      } else {
        widen(t.row(bh / H, bh % H, s), wide.data(), D);
        r = wide.data();
      }
      sums.add_row(r, D, s < tracked);
    }
    float hi, lo;
    sums.finish(part1[static_cast<std::size_t>(bh)], part2[static_cast<std::size_t>(bh)], hi, lo);
    if (extremes) {
      out.max[static_cast<std::size_t>(bh)] = hi;
      out.min[static_cast<std::size_t>(bh)] = lo;
    }
  });
  if (n < 2) return out;
  double S1 = 0, S2 = 0;
  for (std::size_t x = 0; x < part1.size(); ++x) S1 += part1[x], S2 += part2[x];
  const double var = (S2 - S1 * S1 / n) / (n - 1);
  out.std = std::sqrt(var < 0 ? 0.0 : var);  // NaN data stays NaN
  return out;
}

/// Sample standard deviation (n − 1) of every entry of a view (moments_of).
template <class Arch = simd::default_arch, class T>
double sample_std_of(const tensor_view<const T>& t, int threads, workspace& ws) {
  return moments_of<Arch>(t, threads, false, [](index_t) { return index_t{0}; }, ws).std;
}

}  // namespace attnkit::detail
