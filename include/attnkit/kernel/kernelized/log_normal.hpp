#pragma once
/// \file
/// The kernelised engine of log_normal (LLN, engine.hpp): α and β by moment
/// matching unless given, and the per (batch, kv head) key shift, from one pass
/// over K (moments.hpp); features exp(α·q − row max) and exp(β·k − shift).
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/mask.hpp"
#include "../../core/options.hpp"
#include "../../core/validate.hpp"
#include "../../policy/log_normal.hpp"
#include "engine.hpp"
#include "features.hpp"
#include "moments.hpp"
#include "options.hpp"

namespace attnkit::detail {

/// LLN's resolved query/key feature maps for one call: α, β (moment matching unless
/// given) and the per (batch, kv head) key shift. Owns the shift table.
template <class Arch>
struct lln_feature_pair {
  std::vector<float> shift;
  lln_feature<Arch> q, k;  ///< k points into `shift`: the pair is filled in place
  lln_feature_pair() = default;
  lln_feature_pair(const lln_feature_pair&) = delete;
  lln_feature_pair& operator=(const lln_feature_pair&) = delete;
};

template <class Arch, class KV>
void lln_features(const log_normal& pol, const problem_shape& sh, const tensor_view<const float>& q,
                  const tensor_view<const KV>& k, const options& opt, lln_feature_pair<Arch>& f, workspace& ws) {
  lln_coefficients c{pol.alpha.value_or(1.0), pol.beta.value_or(1.0)};
  const int threads = resolve_num_threads(opt.num_threads);
  // One pass over K gives σk and each (batch, kv head)'s extremes over its valid keys.
  const view_moments mk = moments_of<Arch>(
      k, threads, true, [&](index_t b) { return keys_of_batch(opt, b, sh.q_len, sh.k_len).lk; }, ws);
  if (!pol.alpha || !pol.beta) c = pol.resolve(sample_std_of<Arch>(q, threads, ws), mk.std);
  // Per (batch, kv head) max of β·k over the valid keys: cancels in the ratio.
  // Rounding is monotone, so max_j fl(β·k_j) = fl(β·max k) for β > 0 and fl(β·min k)
  // for β < 0: the extremes give it without a second pass. β·x is formed in double
  // only when β is beyond float range (tiny σ, e.g. subnormal keys). A NaN product
  // (β = 0 against ±inf, NaN β) or −inf (no valid key) leaves the shift at 0.
  f.shift.assign(static_cast<std::size_t>(sh.batch * sh.kv_heads), 0.0f);
  const bool wide = !(std::abs(c.beta) < 1e30);
  for (std::size_t bg = 0; bg < f.shift.size(); ++bg) {
    const float x = c.beta > 0 ? mk.max[bg] : mk.min[bg];
    const float y = wide ? static_cast<float>(c.beta * static_cast<double>(x)) : static_cast<float>(c.beta) * x;
    if (y == y && y != -std::numeric_limits<float>::infinity()) f.shift[bg] = y;
  }
  f.q = lln_feature<Arch>{c.alpha, sh.head_dim, nullptr, sh.kv_heads};
  f.k = lln_feature<Arch>{c.beta, sh.head_dim, &f.shift, sh.kv_heads};
}

template <>
struct kernelized_engine<log_normal> {
  static constexpr const char* name = "log-normal attention";

  static void check(const log_normal& pol, const problem_shape&, const options& opt) {
    check_kernelized_options(opt, name);
    if (!(pol.eps >= 0)) fail("policy.eps", "", ">= 0", pol.eps);
  }

  template <class Arch, class KV, class Body>
  static void with_features(const log_normal& pol, const problem_shape& sh, const tensor_view<const float>& q,
                            const tensor_view<const KV>& k, const options& opt, workspace& ws, Body&& body) {
    lln_feature_pair<Arch> f;
    lln_features<Arch>(pol, sh, q, k, opt, f, ws);
    body(f.q, f.k, kernelized_params{true, pol.eps, {}});
  }

  /// LLN+Diag: the average of LLN and block-diagonal softmax.
  static double kernel_share(const log_normal& pol) noexcept { return pol.diag ? 0.5 : 1.0; }
  static bool block_diagonal(const log_normal& pol) noexcept { return pol.diag; }
};

}  // namespace attnkit::detail
