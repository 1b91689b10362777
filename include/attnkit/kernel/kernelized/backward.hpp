#pragma once
/// \file
/// The backward of the kernelised family (linear attention, LLN), called by
/// attnkit::attention_backward for kernelised policies after validation. Placeholder:
/// the kernelised family's engineer replaces this body (same path and signature);
/// until then the call is refused before any gradient byte is written.
#include "../../core/backward_options.hpp"
#include "../../core/error.hpp"
#include "../../core/options.hpp"
#include "../../core/tensor_view.hpp"
#include "../../core/validate.hpp"
#include "../../parallel/workspace.hpp"

namespace attnkit::detail {

template <class Arch, class P, class KV>
void run_kernelized_backward(const P& pol, const problem_shape& sh, const tensor_view<const float>& q,
                             const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                             const tensor_view<const float>& out, const tensor_view<const float>& dout,
                             const tensor_view<float>& dq, const tensor_view<float>& dk, const tensor_view<float>& dv,
                             const options& opt, const backward_options& bo, workspace& ws) {
  (void)pol, (void)sh, (void)q, (void)k, (void)v, (void)out, (void)dout, (void)dq, (void)dk, (void)dv, (void)opt,
      (void)bo, (void)ws;
  throw invalid_argument_error(
      "policy", "attnkit: attention_backward: the kernelised family (linear, log_normal) is not implemented yet; "
                "reference::attention_backward computes its gradients");
}

}  // namespace attnkit::detail
