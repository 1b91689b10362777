#pragma once
/// \file
/// Up-front validation of a backward call
///   attention_backward(policy, q, k, v, out, lse, dout, dq, dk, dv, opt, backward_options)
/// — everything the forward checks, plus the gradients' shapes, the LSE, the
/// optional outputs, the regulariser and aliasing — before any gradient byte is
/// written. Policy-independent: the caller says what its policy is (`facts`).
#include <cmath>
#include <string>

#include "backward_options.hpp"
#include "error.hpp"
#include "options.hpp"
#include "tensor_view.hpp"
#include "validate.hpp"

namespace attnkit {

/// What the backward's validation needs to know about the policy (policy/traits.hpp).
struct backward_policy_facts {
  bool softmax_normalized = false;  ///< takes an LSE; may carry an entropy regulariser
  bool kernelized = false;          ///< no weight matrix: dropout is refused
  const char* name = "this policy";
};

namespace detail {

/// A gradient output: a valid view with `want`'s extents that does not broadcast.
template <class G, class T>
void check_gradient_view(const std::string& name, const tensor_view<G>& g, const tensor_view<T>& want,
                         const std::string& of, bool require_contiguous_dim) {
  check_view_basics(name, g);
  for (int a = 0; a < 4; ++a) check_extent(name, g, a, want.extent[a], "= " + of + "." + axis_name(a));
  if (require_contiguous_dim) check_unit_dim_stride(name, g);
  for (int a = 0; a < 4 && !g.empty(); ++a)
    if (g.extent[a] > 1 && g.stride[a] == 0)
      fail(name, std::string("stride '") + axis_name(a) + "'", "> 0 (outputs may not broadcast)", 0);
}

inline void check_regularizer(const regularizer& r, const problem_shape& s, const backward_policy_facts& f) {
  if (r.kind != regularizer_kind::none && r.kind != regularizer_kind::mean_entropy &&
      r.kind != regularizer_kind::negative_entropy && r.kind != regularizer_kind::entropy_band)
    fail("backward_options.reg", "kind", "a regularizer_kind", static_cast<int>(r.kind));
  if (!r.active()) return;
  if (!f.softmax_normalized)
    fail("backward_options.reg", "kind",
         std::string("none for ") + f.name + " (the regulariser is the entropy of softmax(logits))", "a regulariser");
  if (!(r.lambda >= 0.0) || !std::isfinite(r.lambda)) fail("backward_options.reg", "lambda", ">= 0 and finite", r.lambda);
  if (r.kind != regularizer_kind::entropy_band) return;
  if (static_cast<index_t>(r.theta.size()) != s.q_heads)
    fail("backward_options.reg", "theta size", std::to_string(s.q_heads) + " (= q.heads)", r.theta.size());
  for (std::size_t h = 0; h < r.theta.size(); ++h)
    if (!std::isfinite(r.theta[h])) fail("backward_options.reg", "theta[" + std::to_string(h) + "]", "finite", r.theta[h]);
  if (!(r.gamma >= 0.0) || !std::isfinite(r.gamma)) fail("backward_options.reg", "gamma", ">= 0 and finite", r.gamma);
  if (!(r.max_entropy >= 0.0) || !std::isfinite(r.max_entropy))
    fail("backward_options.reg", "max_entropy", ">= 0 and finite (0 = log(k.seq))", r.max_entropy);
  if (r.form != band_config::shape::squared && r.form != band_config::shape::hinge)
    fail("backward_options.reg", "form", "band_config::shape::squared or hinge", static_cast<int>(r.form));
}

}  // namespace detail

/// Validates a backward call; returns the problem's shape. `require_contiguous_dim`:
/// as in validate_call (true for kernels, false for the oracle).
template <class TQ, class TK, class TV, class TO, class TdO, class GQ, class GK, class GV>
problem_shape validate_backward_call(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                                     const tensor_view<TO>& out, const float* lse, const tensor_view<TdO>& dout,
                                     const tensor_view<GQ>& dq, const tensor_view<GK>& dk, const tensor_view<GV>& dv,
                                     const options& opt, const backward_options& bo, const backward_policy_facts& f,
                                     bool require_contiguous_dim) {
  using detail::fail;
  const problem_shape s = validate_call(q, k, v, out, opt, require_contiguous_dim, /*kernel_takes_dropout=*/true);
  detail::check_view_basics("dout", dout);
  for (int a = 0; a < 4; ++a) detail::check_extent("dout", dout, a, out.extent[a], std::string("= out.") + detail::axis_name(a));
  if (require_contiguous_dim) detail::check_unit_dim_stride("dout", dout);
  detail::check_gradient_view("dq", dq, q, "q", require_contiguous_dim);
  detail::check_gradient_view("dk", dk, k, "k", require_contiguous_dim);
  detail::check_gradient_view("dv", dv, v, "v", require_contiguous_dim);

  const index_t rows = s.batch * s.q_heads * s.q_len;  // ≤ q's element count: no overflow
  if (f.softmax_normalized && lse == nullptr && rows > 0)
    fail("lse", "", std::string("the forward's options.lse, [B, Hq, Lq] floats (") + f.name + " is softmax-normalised)",
         "nullptr");
  if (!f.softmax_normalized && lse != nullptr)
    fail("lse", "", std::string("nullptr (") + f.name + " has no LSE)", "a pointer");
  if (f.kernelized && opt.dropout.active())
    fail("options.dropout", "p", std::string("0 (") + f.name + " has no attention-weight matrix to drop)", opt.dropout.p);
  if (bo.dsinks != nullptr && opt.sinks.empty())
    fail("backward_options.dsinks", "", "nullptr (options.sinks is empty)", "a pointer");
  if (bo.dbias.data != nullptr) {
    if (opt.bias.data == nullptr) fail("backward_options.dbias", "", "no view (options.bias is not set)", "a view");
    detail::check_gradient_view("backward_options.dbias", bo.dbias, opt.bias, "options.bias", false);
  }
  detail::check_regularizer(bo.reg, s, f);

  // Aliasing: no gradient output may overlap an input or another output.
  const detail::byte_span in[] = {
      detail::byte_range(q),           detail::byte_range(k),           detail::byte_range(v),
      detail::byte_range(out),         detail::byte_range(dout),        detail::bytes_at(lse, rows, sizeof(float)),
      detail::bytes_at(opt.lse, rows, sizeof(float)),
      opt.mask.data ? detail::byte_range(opt.mask) : detail::byte_span{},
      opt.bias.data ? detail::byte_range(opt.bias) : detail::byte_span{},
      detail::byte_range(opt.sinks),   detail::byte_range(opt.alibi_slopes), detail::byte_range(opt.key_lengths),
      detail::byte_range(bo.reg.theta)};
  const char* in_names[] = {"q", "k", "v", "out", "dout", "lse", "options.lse", "options.mask", "options.bias",
                            "options.sinks", "options.alibi_slopes", "options.key_lengths", "backward_options.reg.theta"};
  const detail::byte_span outs[] = {detail::byte_range(dq), detail::byte_range(dk), detail::byte_range(dv),
                                    detail::bytes_at(bo.dsinks, bo.dsinks ? s.q_heads : 0, sizeof(float)),
                                    bo.dbias.data ? detail::byte_range(bo.dbias) : detail::byte_span{}};
  const char* out_names[] = {"dq", "dk", "dv", "backward_options.dsinks", "backward_options.dbias"};
  for (std::size_t o = 0; o < std::size(outs); ++o) {
    for (std::size_t i = 0; i < std::size(in); ++i)
      if (detail::overlaps(outs[o], in[i])) fail(out_names[o], "memory", std::string("no overlap with ") + in_names[i], "overlap");
    for (std::size_t p = 0; p < o; ++p)
      if (detail::overlaps(outs[o], outs[p])) fail(out_names[o], "memory", std::string("no overlap with ") + out_names[p], "overlap");
  }
  return s;
}

}  // namespace attnkit
