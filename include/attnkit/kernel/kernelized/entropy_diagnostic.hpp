#pragma once
/// \file
/// Exact attention entropy of kernelised variants (linear, LLN), as an explicit
/// diagnostic. Their fused pass never forms the weights w_ij = φ(q_i)·φ(k_j), so the
/// entropy of a row's normalised weights costs O(Lk·M) per row: this function pays
/// it for every row, or for `sample_rows` rows per head drawn from `seed`
/// (reproducible, the same rows for every head), and reports them to an observer
/// as unnormalised rows (sum = Σw, tsum = Σ w log w). Weights must be
/// non-negative (every built-in map except identity).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../../core/dtype_rules.hpp"
#include "../../core/validate.hpp"
#include "../../observe/observer.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "../../policy/random.hpp"
#include "engine.hpp"
#include "linear.hpp"
#include "log_normal.hpp"

namespace attnkit {

namespace detail {
/// Shared body: fq/fk are resolved feature maps, decay per query head (or empty).
template <class Arch, class FQ, class FK, class Observer>
void kernelized_entropy_impl(const FQ& fq_map, const FK& fk_map, std::span<const float> decay, const problem_shape& sh,
                             const tensor_view<const float>& q, const tensor_view<const float>& k, const options& opt,
                             Observer& obs, index_t sample_rows, std::uint64_t seed) {
  const index_t M = fq_map.dim();
  // Rows to visit: all, or a reproducible sample (sorted).
  std::vector<index_t> rows(static_cast<std::size_t>(sh.q_len));
  for (index_t i = 0; i < sh.q_len; ++i) rows[static_cast<std::size_t>(i)] = i;
  if (sample_rows > 0 && sample_rows < sh.q_len) {
    for (index_t i = sh.q_len - 1; i > 0; --i) {
      const auto r = random::uniform_below(random::counter_hash(seed, 0x5a3b1e, 0, static_cast<std::uint64_t>(i)),
                                           static_cast<std::uint64_t>(i + 1));
      std::swap(rows[static_cast<std::size_t>(i)], rows[static_cast<std::size_t>(r)]);
    }
    rows.resize(static_cast<std::size_t>(sample_rows));
    std::sort(rows.begin(), rows.end());
  }
  obs.begin(sh, opt);
  parallel_for(sh.batch * sh.q_heads, resolve_num_threads(opt.num_threads), [&](index_t bh) {
    const index_t b = bh / sh.q_heads, h = bh % sh.q_heads, g = h / sh.group();
    const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
    const double lambda = decay.empty() ? 1.0 : decay[static_cast<std::size_t>(h)];
    std::vector<float> fk(static_cast<std::size_t>(std::max<index_t>(bk.lk, 0) * M)), fq(static_cast<std::size_t>(M));
    for (index_t j = 0; j < bk.lk; ++j)
      fk_map.map(k.row(b, g, j), token_ref{b, g, j, false, bk}, fk.data() + j * M);
    for (index_t i : rows) {
      index_t p = bk.lk;
      if (opt.causal == causal::top_left) p = std::min(p, i + 1);
      if (opt.causal == causal::bottom_right) p = std::min(p, i + bk.delta + 1);
      p = std::max<index_t>(p, 0);
      fq_map.map(q.row(b, h, i), token_ref{b, h, i, true, bk}, fq.data());
      double W = 0, t = 0;
      for (index_t j = 0; j < p; ++j) {
        double w = simd::dot<Arch>(fq.data(), fk.data() + j * M, M);
        if (lambda != 1.0) w *= std::pow(lambda, static_cast<double>(p - 1 - j));
        W += w;
        if (w > 0) t += w * std::log(w);
      }
      row_state st;
      st.batch = b;
      st.head = h;
      st.row = i;
      st.normalized = false;
      st.max = 0;
      st.sum = W;
      st.tsum = t;
      st.allowed = p;
      st.first_logit = -std::numeric_limits<double>::infinity();
      obs.on_row(st);
    }
  });
  obs.end();
}

/// Validation shared by the public overloads (an output-shaped scratch view stands
/// in for `out`, which a diagnostic does not have).
inline problem_shape validate_diagnostic(const tensor_view<const float>& q, const tensor_view<const float>& k,
                                         const tensor_view<const float>& v, const options& opt) {
  std::vector<float> scratch(static_cast<std::size_t>(std::max<index_t>(q.batch(), 0) * std::max<index_t>(q.heads(), 0) *
                                                      std::max<index_t>(q.seq(), 0) * std::max<index_t>(v.dim(), 0)));
  const problem_shape sh = validate_call(q, k, v, bhsd(scratch.data(), q.batch(), q.heads(), q.seq(), v.dim()), opt);
  check_kernelized_options(opt, "kernelized_entropy");
  return sh;
}
}  // namespace detail

/// Exact row entropy of a kernelised policy's weights — linear<F> with any feature
/// map, or LLN (its kernelised part: with `.diag` the block-diagonal softmax half is
/// not included) — for all rows, or `sample_rows` per head drawn from `seed`.
template <class Arch = simd::default_arch, policy P, class Observer>
void kernelized_entropy(const P& pol, tensor_view<const float> q, tensor_view<const float> k,
                        tensor_view<const float> v, const options& opt, Observer&& obs, index_t sample_rows = 0,
                        std::uint64_t seed = 0) {
  static_assert(std::remove_cvref_t<Observer>::enabled, "kernelized_entropy needs an enabled observer, e.g. observe(stats)");
  static_assert(detail::check_kernelized_policy<P>());
  using E = detail::kernelized_engine<P>;
  const problem_shape sh = detail::validate_diagnostic(q, k, v, opt);
  E::check(pol, sh, opt);
  workspace_lease lease(opt.workspace);
  E::template with_features<Arch>(pol, sh, q, k, opt, lease.get(),
                                  [&](const auto& fq, const auto& fk, const detail::kernelized_params& prm) {
                                    detail::kernelized_entropy_impl<Arch>(fq, fk, prm.decay, sh, q, k, opt, obs,
                                                                          sample_rows, seed);
                                  });
}

/// Any other element types: a one-line compile error stating the rule (float only).
template <class Arch = simd::default_arch, policy P, class Q, class K, class V, class Observer>
  requires(std::is_same_v<typename P::family, family::kernelized> && !detail::fp32_dtypes<Q, K, V, float>)
void kernelized_entropy(const P&, tensor_view<Q>, tensor_view<K>, tensor_view<V>, const options&, Observer&&,
                        index_t = 0, std::uint64_t = 0) {
  detail::reject_fp32_dtypes<Q, K, V, float>();
}

}  // namespace attnkit
