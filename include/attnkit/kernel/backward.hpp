#pragma once
/// \file
/// The backward pass: attnkit::attention_backward(policy, q, k, v, out, lse, dout,
/// dq, dk, dv, opt [, backward_options]) — the gradients of the forward call
/// attention(policy, q, k, v, out, opt) for the loss whose gradient w.r.t. `out`
/// is `dout` (docs/training.md). It validates everything first (nothing is written
/// on a bad call), then runs the quadratic family's backward (kernel/backward/) —
/// softmax, sigmoid and user weight functions, sparse patterns, stochastic
/// permutation — or hands kernelised policies to their own backward.
#include <optional>
#include <type_traits>
#include <vector>

#include "../core/backward_options.hpp"
#include "../core/validate_backward.hpp"
#include "../policy/family.hpp"
#include "../policy/softmax.hpp"
#include "../policy/sparse.hpp"
#include "../policy/stochastic_permutation.hpp"
#include "../policy/traits.hpp"
#include "../simd/arch.hpp"
#include "backward/run.hpp"
#include "kernelized/backward.hpp"
#include "permutation.hpp"
#include "sparse/flex_prefill.hpp"
#include "sparse/pattern_keys.hpp"
#include "sparse/run.hpp"
#include "sparse/top_k.hpp"
#include "staging.hpp"

namespace attnkit {
namespace detail {

/// top_k in the backward: the forward's per-row thresholds (recomputed in stage B by
/// the forward's own selection code), applied to every tile as the forward's filter.
struct bwd_top_k_keys : key_set_base {
  static constexpr bool filters = true;
  const bwd_rows& rows;
  index_t k_len = 0, q_heads = 0, q_len = 0;
  key_range hull(index_t, index_t, index_t) const { return {0, k_len}; }
  tile_class classify(const block_scratch&, index_t, index_t, index_t, index_t, index_t, index_t) const {
    return tile_class::partial;
  }
  /// Key j with logit x is dropped iff x < thr or (x == thr and j > tie) (top_k_keys::filter).
  template <class A, int N>
  void filter(const block_scratch&, index_t b, index_t h, index_t i, index_t j0,
              typename simd::ops<A>::vf (&row)[N]) const {
    using O = simd::ops<A>;
    constexpr int W = O::width;
    const auto u = static_cast<std::size_t>((b * q_heads + h) * q_len + i);
    const float t = rows.thr[u], tie = rows.tie[u];
    if (t == neg_inf) return;  // keeps all (NaN logits included)
    const auto io = O::iota(static_cast<float>(j0));
    for (int c = 0; c < N; ++c) {
      const auto x = row[c], idx = io + O::set1(static_cast<float>(c * W));
      if constexpr (simd::is_scalar_v<A>)
        row[c] = (x < t || (x == t && idx > tie)) ? neg_inf : x;
      else
        row[c] = xsimd::select((x < O::set1(t)) | ((x == O::set1(t)) & (idx > O::set1(tie))), O::set1(neg_inf), x);
    }
  }
};

template <class P>
constexpr const char* backward_policy_name() noexcept {
  using F = typename P::family;
  if constexpr (std::is_same_v<F, family::pattern>)
    return "sparse attention";
  else if constexpr (std::is_same_v<F, family::permutation>)
    return "stochastic permutation attention";
  else if constexpr (std::is_same_v<F, family::kernelized>)
    return "kernelised attention";
  else
    return "this weight function";
}

/// Compile-time checks of a weight function the backward differentiates.
template <class W>
constexpr bool check_backward_weight() {
  static_assert(check_weight_function<W>());
  if constexpr (W::normalization != normalization::softmax)
    static_assert(has_member_derivative<W>,
                  "attnkit::attention_backward: the weight function needs "
                  "`template <class V> V derivative(V s[, const Params&]) const` (dw/ds)");
  return true;
}

/// How the backward recomputes a data-dependent pattern's selection, as the
/// forward's `selection<P>` makes it (then a constant): run(keys, forward_keys).
template <class P>
struct backward_selection;

template <>
struct backward_selection<pattern::top_k> {
  template <class Arch, class Run>
  static void run(const pattern::top_k& pat, const problem_shape& sh, const tensor_view<const float>&, const auto&,
                  const options&, workspace& ws, Run&& run_with) {
    const top_k_keys<Arch> fwd{{}, pat.k, sh.k_len};
    run_with(bwd_top_k_keys{{}, ws.shared().get<bwd_rows>(), sh.k_len, sh.q_heads, sh.q_len}, &fwd);
  }
};

template <>
struct backward_selection<pattern::flex_prefill> {
  template <class Arch, class Run>
  static void run(const pattern::flex_prefill& pat, const problem_shape& sh, const tensor_view<const float>& q,
                  const auto& k, const options& opt, workspace&, Run&& run_with) {
    const top_k_keys<Arch>* none = nullptr;
    run_with(select_blocks(pat, sh, q, k, opt, resolve_num_threads(opt.num_threads)), none);
  }
};

/// The sparse family: top_k and flex_prefill with their selections recomputed as
/// the forward makes them (then constants); a static pattern in rank space when it
/// reorders this call's tokens (as the forward's run_sparse decides), else in
/// position space.
template <class Arch, class P, class Inner, class KV>
void sparse_backward(const sparse<P, Inner>& pol, const problem_shape& sh, const tensor_view<const float>& q,
                     const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                     const tensor_view<const float>& out, const float* lse, const tensor_view<const float>& dout,
                     const tensor_view<float>& dq, const tensor_view<float>& dk, const tensor_view<float>& dv,
                     const options& opt, const backward_options& bo, workspace& ws) {
  auto run = [&](const auto& keys, const auto* fwd) {
    run_quadratic_backward<Arch>(pol.inner, sh, q, k, v, out, lse, dout, dq, dk, dv, opt, bo, ws, keys, fwd);
  };
  const top_k_keys<Arch>* none = nullptr;
  if constexpr (pattern::dynamic_pattern<P>) {
    static_assert(requires { backward_selection<P>{}; },
                  "attnkit::attention_backward: no backward for this data-dependent pattern "
                  "(specialise attnkit::detail::backward_selection)");
    backward_selection<P>::template run<Arch>(pol.pattern, sh, q, k, opt, ws, run);
  } else {
    static_assert(pattern::static_pattern<P>, "attnkit::attention_backward: no backward for this data-dependent pattern");
    using hooks = pattern_hooks<P>;
    if constexpr (hooks::reorders) {
      if (sh.q_len == sh.k_len && !has_positional_terms(opt)) {
        auto& order = ws.shared().get<rank_order_storage>().order;
        if (hooks::rank_order(pol.pattern, pattern::rank_query{sh.k_len}, order)) {
          run(rank_keys<P>{{}, pol.pattern, order, sh.k_len}, none);
          return;
        }
      }
    }
    run(pattern_keys<P>{{}, pol.pattern, opt, sh.q_len, sh.k_len}, none);
  }
}

template <class Arch, class P, class KV>
void attention_backward_impl(const P& pol, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                             const tensor_view<const KV>& v, const tensor_view<const float>& out, const float* lse,
                             const tensor_view<const float>& dout, const tensor_view<float>& dq,
                             const tensor_view<float>& dk, const tensor_view<float>& dv, const options& opt,
                             const backward_options& bo, workspace* held = nullptr) {
  using F = typename P::family;
  const backward_policy_facts facts{softmax_normalized<P>(), is_kernelized_v<P>, backward_policy_name<P>()};
  const problem_shape sh = validate_backward_call(q, k, v, out, lse, dout, dq, dk, dv, opt, bo, facts, true);
  // The call's workspace: leased here, or the one a 16-bit call already holds.
  std::optional<workspace_lease> lease;
  const auto workspace_of_call = [&]() -> workspace& { return held ? *held : lease.emplace(opt.workspace).get(); };
  if constexpr (std::is_same_v<F, family::quadratic>) {
    static_assert(check_backward_weight<P>());
    check_weight_options<P>(opt);
    run_quadratic_backward<Arch>(pol, sh, q, k, v, out, lse, dout, dq, dk, dv, opt, bo, workspace_of_call(), no_pattern{});
  } else if constexpr (std::is_same_v<F, family::pattern>) {
    using inner = std::remove_cvref_t<decltype(pol.inner)>;
    static_assert(check_backward_weight<inner>());
    check_weight_options<inner>(opt);
    reject_positions(opt, "sparse patterns");
    pattern::check_arguments(pol.pattern, sh, opt);
    sparse_backward<Arch>(pol, sh, q, k, v, out, lse, dout, dq, dk, dv, opt, bo, workspace_of_call());
  } else if constexpr (std::is_same_v<F, family::permutation>) {
    static_assert(std::is_convertible_v<const P&, const stochastic_permutation&>,
                  "attnkit: the permutation family has one skeleton, for stochastic_permutation");
    reject_positions(opt, "stochastic permutation attention");
    check_permutation_arguments(pol, sh);
    workspace& ws = workspace_of_call();
    const auto perms = policy_permutations(pol, sh.k_len, sh.kv_heads, ws);
    // As run_rank_window: the skeleton works in rank space, original-index options
    // enter through the adapter's additive term.
    options ranked = opt;
    ranked.causal = causal::none;
    ranked.window = {};
    ranked.key_lengths = {};
    ranked.mask = {};
    ranked.bias = {};
    ranked.alibi_slopes = {};
    const bool original_terms = opt.causal != causal::none || opt.window.active() || !opt.key_lengths.empty() ||
                                opt.mask.data || opt.bias.data || !opt.alibi_slopes.empty();
    const index_t window = std::min(pol.window, sat_add(sat_mul(2, sh.q_len), 2));
    const rank_window_keys keys{{}, opt, *perms, sh.q_len, sh.group(), window, pol.kind, original_terms};
    run_quadratic_backward<Arch>(softmax{}, sh, q, k, v, out, lse, dout, dq, dk, dv, ranked, bo, ws, keys);
  } else {
    static_assert(std::is_same_v<F, family::kernelized>, "attnkit::attention_backward: no backward for this family");
    run_kernelized_backward<Arch>(pol, sh, q, k, v, out, dout, dq, dk, dv, opt, bo, workspace_of_call());
  }
}

/// q, k, v of one 16-bit type T; out and dout float or T; dq, dk, dv float or T.
/// Validated as given; q, out and dout are widened (K/V are read as T by the
/// kernels) and 16-bit gradients are staged in float — holding the caller's values
/// first under backward_options::accumulate — and rounded once at the end.
template <class Arch, class P, class T, class O, class G>
void attention_backward_half(const P& pol, const tensor_view<const T>& q, const tensor_view<const T>& k,
                             const tensor_view<const T>& v, const tensor_view<const O>& out, const float* lse,
                             const tensor_view<const O>& dout, const tensor_view<G>& dq, const tensor_view<G>& dk,
                             const tensor_view<G>& dv, const options& opt, const backward_options& bo) {
  const backward_policy_facts facts{softmax_normalized<P>(), is_kernelized_v<P>, backward_policy_name<P>()};
  validate_backward_call(q, k, v, out, lse, dout, dq, dk, dv, opt, bo, facts, true);
  workspace_lease lease(opt.workspace);
  auto& staged = lease.get().shared().get<staging_buffers<6>>();
  const auto gradient = [&](const tensor_view<G>& g, aligned_vector<float>& buf) {
    const tensor_view<float> f = float_out(g, buf);
    if constexpr (!std::is_same_v<G, float>)
      if (bo.accumulate) widened(tensor_view<const G>(g), buf);  // the caller's values, to add to
    return f;
  };
  const tensor_view<float> gq = gradient(dq, staged.slot[3]), gk = gradient(dk, staged.slot[4]),
                           gv = gradient(dv, staged.slot[5]);
  attention_backward_impl<Arch>(pol, float_input(q, staged.slot[0]), k, v, float_input(out, staged.slot[1]), lse,
                                float_input(dout, staged.slot[2]), gq, gk, gv, opt, bo, &lease.get());
  finish_out(gq, dq);
  finish_out(gk, dk);
  finish_out(gv, dv);
}
}  // namespace detail

/// Gradients of attention(policy, q, k, v, out, opt) for a loss with d loss/d out =
/// `dout`: dq, dk, dv (extents of q, k, v; overwritten, or added with
/// backward_options::accumulate; GQA: dk, dv sum over each group's query heads), and
/// optionally d sinks and d bias (backward_options). `lse`: the forward's
/// options.lse ([B, Hq, Lq]) for softmax-normalised policies, nullptr otherwise;
/// `opt`: the forward's options (dropout included; its lse pointer is not written).
/// Every element of dq, dk, dv is written: rows and keys without a visible pair get
/// exactly 0. Results are bitwise identical for any options.num_threads.
///
/// \code
///   opt.lse = lse.data();
///   attnkit::attention(attnkit::softmax{}, q, k, v, out, opt);
///   attnkit::attention_backward(attnkit::softmax{}, q, k, v, out, lse.data(), dout, dq, dk, dv, opt);
/// \endcode
template <class Arch = simd::default_arch, policy P>
void attention_backward(const P& pol, tensor_view<const float> q, tensor_view<const float> k,
                        tensor_view<const float> v, tensor_view<const float> out, const float* lse,
                        tensor_view<const float> dout, tensor_view<float> dq, tensor_view<float> dk,
                        tensor_view<float> dv, const options& opt = {}, const backward_options& bo = {}) {
  detail::attention_backward_impl<Arch>(pol, q, k, v, out, lse, dout, dq, dk, dv, opt, bo);
}

/// K/V stored as bfloat16 (the gradients are float).
template <class Arch = simd::default_arch, policy P>
void attention_backward(const P& pol, tensor_view<const float> q, tensor_view<const bfloat16> k,
                        tensor_view<const bfloat16> v, tensor_view<const float> out, const float* lse,
                        tensor_view<const float> dout, tensor_view<float> dq, tensor_view<float> dk,
                        tensor_view<float> dv, const options& opt = {}, const backward_options& bo = {}) {
  detail::attention_backward_impl<Arch>(pol, q, k, v, out, lse, dout, dq, dk, dv, opt, bo);
}

/// K/V stored as IEEE float16 (the gradients are float).
template <class Arch = simd::default_arch, policy P>
void attention_backward(const P& pol, tensor_view<const float> q, tensor_view<const float16> k,
                        tensor_view<const float16> v, tensor_view<const float> out, const float* lse,
                        tensor_view<const float> dout, tensor_view<float> dq, tensor_view<float> dk,
                        tensor_view<float> dv, const options& opt = {}, const backward_options& bo = {}) {
  detail::attention_backward_impl<Arch>(pol, q, k, v, out, lse, dout, dq, dk, dv, opt, bo);
}

/// q, k, v all bfloat16 or all float16 (attention()'s 16-bit rule); out and dout
/// of that type or float (the same for both); dq, dk, dv of that type or float
/// (the same for all three). Computed in float, gradients rounded once.
template <class Arch = simd::default_arch, policy P, class Q, class K, class V, class O, class dO, class GQ,
          class GK, class GV>
  requires detail::half_dtypes<Q, K, V, float> && std::is_same_v<std::remove_const_t<O>, std::remove_const_t<dO>> &&
           (std::is_same_v<std::remove_const_t<O>, float> || std::is_same_v<std::remove_const_t<O>, std::remove_const_t<Q>>) &&
           std::is_same_v<GQ, GK> && std::is_same_v<GQ, GV> &&
           (std::is_same_v<GQ, float> || std::is_same_v<GQ, std::remove_const_t<Q>>)
void attention_backward(const P& pol, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
                        const float* lse, tensor_view<dO> dout, tensor_view<GQ> dq, tensor_view<GK> dk,
                        tensor_view<GV> dv, const options& opt = {}, const backward_options& bo = {}) {
  using T = std::remove_const_t<Q>;
  using OT = std::remove_const_t<O>;
  detail::attention_backward_half<Arch>(pol, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                                        tensor_view<const OT>(out), lse, tensor_view<const OT>(dout), dq, dk, dv, opt,
                                        bo);
}

}  // namespace attnkit
