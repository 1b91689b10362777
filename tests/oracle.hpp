#pragma once
// Kernel-vs-oracle comparison used by the variant tests: run attnkit::attention<Arch>
// and reference::attention on the same random data and report the error relative
// to max|reference| (plus LSE error when the variant has one).
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <string>

#include "support.hpp"

namespace attnkit_test {

struct oracle_error {
  double out = 0;  ///< max |kernel − oracle| / max(1e-30, max |oracle|)
  double lse = 0;  ///< max |lse − oracle lse| over rows with a finite oracle LSE
  bool nan_mismatch = false;
};

/// Compares one call. `with_lse`: request options.lse (softmax family only).
template <class Arch, class P>
oracle_error compare_with_oracle(const P& pol, const problem& p, attnkit::options opt, bool with_lse = false) {
  std::vector<float> out(p.out_size(), -7.0f);
  std::vector<double> ref(p.out_size());
  std::vector<float> lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
  if (with_lse) opt.lse = lse.data();
  attnkit::attention<Arch>(pol, p.qv(), p.kv(), p.vv(), p.ov(out), opt);
  opt.lse = nullptr;
  const auto res = attnkit::reference::attention(pol, p.qv(), p.kv(), p.vv(),
                                                 attnkit::bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), opt);
  oracle_error e;
  double scale = 1e-30;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (std::isnan(ref[i]) != std::isnan(out[i])) e.nan_mismatch = true;
    if (!std::isnan(ref[i])) e.out = std::max(e.out, std::abs(out[i] - ref[i]) / scale);
  }
  if (with_lse)
    for (std::size_t r = 0; r < lse.size(); ++r) {
      if (std::isfinite(res.lse[r]))
        e.lse = std::max(e.lse, std::abs(lse[r] - res.lse[r]) / std::max(1.0, std::abs(res.lse[r])));
      else if (lse[r] != static_cast<float>(res.lse[r]))
        e.lse = std::max(e.lse, 1.0);
    }
  return e;
}

}  // namespace attnkit_test
