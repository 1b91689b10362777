#pragma once
/// \file
/// The gated combination of stochastic permutation attention (Jin & Sui 2026):
/// out = g1 ⊙ SA + g2 ⊙ SWA, SA the permuted branch and SWA the same window on the
/// original order (identity permutation). Both branches run on the same skeleton.
#include <numeric>
#include <string>
#include <vector>

#include "dispatch.hpp"

namespace attnkit {

/// g1, g2: gate views [B|1, Hq|1, Lq|1, Dv|1] (extent 1 broadcasts), caller-supplied.
template <class Arch = simd::default_arch>
void attention_gated(const stochastic_permutation& pol, tensor_view<const float> g1, tensor_view<const float> g2,
                     tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
                     tensor_view<float> out, const options& opt = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt);
  auto check_gate = [&](const char* name, const tensor_view<const float>& g) {
    detail::check_view_basics(name, g);
    const index_t want[4] = {sh.batch, sh.q_heads, sh.q_len, sh.value_dim};
    for (int a = 0; a < 4; ++a)
      if (g.extent[a] != want[a] && g.extent[a] != 1)
        detail::fail(name, std::string("extent '") + detail::axis_name(a) + "'", std::to_string(want[a]) + " or 1",
                     g.extent[a]);
    if (detail::overlaps(detail::byte_range(out), detail::byte_range(g)))
      detail::fail("out", "memory", std::string("no overlap with ") + name, "overlap");
  };
  check_gate("g1", g1);
  check_gate("g2", g2);
  if (opt.lse) detail::fail("options.lse", "", "nullptr (two branches have no single LSE)", "a pointer");
  const std::size_t n = static_cast<std::size_t>(sh.batch * sh.q_heads * sh.q_len * sh.value_dim);
  std::vector<float> sa(n), swa(n);
  const auto SA = bhsd(sa.data(), sh.batch, sh.q_heads, sh.q_len, sh.value_dim);
  const auto SWA = bhsd(swa.data(), sh.batch, sh.q_heads, sh.q_len, sh.value_dim);
  attention<Arch>(pol, q, k, v, SA, opt);
  std::vector<std::vector<index_t>> identity(1, std::vector<index_t>(static_cast<std::size_t>(sh.k_len)));
  std::iota(identity[0].begin(), identity[0].end(), index_t{0});
  null_observer none;
  workspace_lease lease(opt.workspace);
  detail::run_rank_window<Arch>(pol, identity, sh, q, k, v, SWA, opt, none, lease.get());
  auto at = [](const tensor_view<const float>& g, index_t b, index_t h, index_t i, index_t d) {
    return g(g.extent[0] == 1 ? 0 : b, g.extent[1] == 1 ? 0 : h, g.extent[2] == 1 ? 0 : i, g.extent[3] == 1 ? 0 : d);
  };
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h)
      for (index_t i = 0; i < sh.q_len; ++i)
        for (index_t d = 0; d < sh.value_dim; ++d)
          out(b, h, i, d) = at(g1, b, h, i, d) * SA(b, h, i, d) + at(g2, b, h, i, d) * SWA(b, h, i, d);
}

/// Any other element types: a one-line compile error stating the rule (float only;
/// the gates count as q here).
template <class Arch = simd::default_arch, class G1, class G2, class Q, class K, class V, class O>
  requires(!(detail::fp32_dtypes<Q, K, V, O> && detail::is_float_input_v<G1> && detail::is_float_input_v<G2>))
void attention_gated(const stochastic_permutation&, tensor_view<G1>, tensor_view<G2>, tensor_view<Q>, tensor_view<K>,
                     tensor_view<V>, tensor_view<O>, const options& = {}) {
  if constexpr (!detail::is_float_input_v<G1> || !detail::is_float_input_v<G2>)
    static_assert(detail::dependent_false_v<G1>, "attnkit: attention_gated's gates g1 and g2 must be views of float");
  else
    detail::reject_fp32_dtypes<Q, K, V, O>();
}

}  // namespace attnkit
