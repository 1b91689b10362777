#pragma once
/// \file
/// The kernelised engine of linear<F> (engine.hpp): every feature map, built-in or
/// a user's, resolved to linear_feature (features.hpp) — one path for all.
#include "../../core/options.hpp"
#include "../../core/validate.hpp"
#include "../../policy/linear.hpp"
#include "engine.hpp"
#include "features.hpp"
#include "options.hpp"

namespace attnkit::detail {

template <class F>
struct kernelized_engine<linear<F>> {
  static constexpr const char* name = "linear attention";

  static void check(const linear<F>& pol, const problem_shape& sh, const options& opt) {
    check_kernelized_options(opt, name);
    check_linear_fields(pol, sh.q_heads, sh.head_dim, opt.causal != causal::none, false);
  }

  template <class Arch, class KV, class Body>
  static void with_features(const linear<F>& pol, const problem_shape& sh, const tensor_view<const float>&,
                            const tensor_view<const KV>&, const options& opt, workspace&, Body&& body) {
    const linear_feature<Arch, F> f{pol.phi, sh.head_dim, sh.q_len, resolved_scale(opt, sh.head_dim)};
    body(f, f, kernelized_params{pol.normalize, pol.eps, pol.decay});
  }

  static double kernel_share(const linear<F>&) noexcept { return 1.0; }
  static bool block_diagonal(const linear<F>&) noexcept { return false; }
};

}  // namespace attnkit::detail
