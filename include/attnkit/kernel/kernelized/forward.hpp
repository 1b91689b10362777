#pragma once
/// \file
/// The forward of every kernelised policy, through its engine (engine.hpp): checks,
/// resolves the feature maps, runs the skeleton (skeleton.hpp), and mixes in the
/// block-diagonal softmax half when the engine asks for it.
#include "block_diagonal.hpp"
#include "engine.hpp"
#include "linear.hpp"
#include "log_normal.hpp"
#include "skeleton.hpp"

namespace attnkit::detail {

template <class Arch, class P, class KV>
void run_kernelized_forward(const P& pol, const problem_shape& sh, const tensor_view<const float>& q,
                            const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                            const tensor_view<float>& out, const options& opt, workspace& ws) {
  static_assert(check_kernelized_policy<P>());
  using E = kernelized_engine<P>;
  E::check(pol, sh, opt);
  E::template with_features<Arch>(pol, sh, q, k, opt, ws, [&](const auto& fq, const auto& fk, const kernelized_params& prm) {
    run_kernelized<Arch>(fq, fk, prm, sh, q, k, v, out, opt, ws);
  });
  if (E::block_diagonal(pol)) mix_block_diagonal<Arch>(E::kernel_share(pol), sh, q, k, v, out, opt, ws);
}

}  // namespace attnkit::detail
