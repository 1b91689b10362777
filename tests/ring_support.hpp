#pragma once
// Shared by tests/test_ring_plan.cpp (the ring simulated in one process) and
// tests/mpi/test_ring_mpi.cpp (across MPI ranks): a rank's rows of a whole-sequence
// problem under a layout, the whole-sequence results (attention() and the float64
// oracle) and the comparison of a rank's rows with them.
#include <attnkit/distributed/ring_plan.hpp>
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "support.hpp"

namespace ringtest {

using attnkit::index_t;
using attnkit::distributed::chunk;
using attnkit::distributed::layout;
using attnkit_test::problem;

/// The runs rank r holds: chunks_of(), or consecutive blocks of the given lengths.
inline std::vector<chunk> runs_of(layout l, index_t n, int P, int r, const std::vector<index_t>& lengths = {}) {
  if (lengths.empty()) return attnkit::distributed::chunks_of(l, n, P, r);
  index_t at = 0;
  for (int s = 0; s < r; ++s) at += lengths[static_cast<std::size_t>(s)];
  return {chunk{0, at, lengths[static_cast<std::size_t>(r)]}};
}

inline index_t rows_in(const std::vector<chunk>& runs) {
  index_t n = 0;
  for (const chunk& c : runs) n += c.length;
  return n;
}

/// The rows of `runs` of a contiguous [B, H, N, D] tensor, as a contiguous [B, H, n, D].
template <class T>
std::vector<T> take_rows(const std::vector<T>& g, index_t B, index_t H, index_t N, index_t D,
                         const std::vector<chunk>& runs) {
  const index_t n = rows_in(runs);
  std::vector<T> out(static_cast<std::size_t>(B * H * n * D));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (const chunk& c : runs)
        for (index_t i = 0; i < c.length; ++i)
          for (index_t d = 0; d < D; ++d)
            out[static_cast<std::size_t>(((b * H + h) * n + c.local + i) * D + d)] =
                g[static_cast<std::size_t>(((b * H + h) * N + c.global + i) * D + d)];
  return out;
}

/// The whole-sequence results a ring call must reproduce.
struct expected {
  std::vector<float> out, lse;       ///< attention() in one process
  std::vector<double> ref, ref_lse;  ///< the float64 oracle
};

inline expected whole(const problem& p, attnkit::options o) {
  expected e;
  e.out.assign(p.out_size(), -7.0f);
  e.lse.assign(static_cast<std::size_t>(p.B * p.Hq * p.Lq), -7.0f);
  e.ref.assign(p.out_size(), 0.0);
  o.lse = e.lse.data();
  attnkit::attention(attnkit::softmax{}, p.qv(), p.kv(), p.vv(), p.ov(e.out), o);
  o.lse = nullptr;
  const auto res = attnkit::reference::attention(attnkit::softmax{}, p.qv(), p.kv(), p.vv(),
                                                 attnkit::bhsd(e.ref.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  e.ref_lse = res.lse;
  return e;
}

/// Errors of a rank's rows (out [B,Hq,n,Dv], lse [B,Hq,n]) relative to max|oracle|;
/// LSE errors relative to max(1, |lse|). Rows whose expected LSE is not finite must
/// match it exactly.
struct errors {
  double vs_single = 0, vs_oracle = 0, lse_single = 0, lse_oracle = 0;
  bool nan_mismatch = false;
};

inline errors compare_rows(const problem& p, const std::vector<chunk>& runs, const std::vector<float>& out,
                           const std::vector<float>& lse, const expected& e) {
  errors r;
  double scale = 1e-30;
  for (double x : e.ref)
    if (!std::isnan(x)) scale = std::max(scale, std::abs(x));
  const index_t n = rows_in(runs);
  auto lse_err = [](double got, double want) {
    if (std::isnan(want) || std::isnan(got)) return std::isnan(want) == std::isnan(got) ? 0.0 : 1.0;
    if (!std::isfinite(want)) return got == want ? 0.0 : 1.0;
    return std::abs(got - want) / std::max(1.0, std::abs(want));
  };
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h)
      for (const chunk& c : runs)
        for (index_t i = 0; i < c.length; ++i) {
          const auto lr = static_cast<std::size_t>((b * p.Hq + h) * n + c.local + i);
          const auto gr = static_cast<std::size_t>((b * p.Hq + h) * p.Lq + c.global + i);
          r.lse_single = std::max(r.lse_single, lse_err(lse[lr], e.lse[gr]));
          r.lse_oracle = std::max(r.lse_oracle, lse_err(lse[lr], e.ref_lse[gr]));
          for (index_t d = 0; d < p.Dv; ++d) {
            const float x = out[lr * static_cast<std::size_t>(p.Dv) + static_cast<std::size_t>(d)];
            const float s = e.out[gr * static_cast<std::size_t>(p.Dv) + static_cast<std::size_t>(d)];
            const double o = e.ref[gr * static_cast<std::size_t>(p.Dv) + static_cast<std::size_t>(d)];
            if (std::isnan(x) != std::isnan(s) || std::isnan(x) != std::isnan(o)) r.nan_mismatch = true;
            if (!std::isnan(s) && !std::isnan(x)) r.vs_single = std::max(r.vs_single, std::abs(x - s) / scale);
            if (!std::isnan(o) && !std::isnan(x)) r.vs_oracle = std::max(r.vs_oracle, std::abs(x - o) / scale);
          }
        }
  return r;
}

}  // namespace ringtest
