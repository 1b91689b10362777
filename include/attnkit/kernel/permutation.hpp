#pragma once
/// \file
/// Stochastic permutation attention: SA(Q,K,V) = Pᵀ·SWA_w(PQ, PK, PV). Tokens are
/// gathered into rank order per kv head, the quadratic skeleton runs a window on
/// ranks (its tiles stay banded, so the cost is that of sliding-window attention),
/// and rows are scattered back. Options' masks and positional terms (causal, key
/// lengths, boolean mask, bias, ALiBi) use the original indices: they enter as
/// the key-set adapter's additive term on the tiles they touch.
#include <algorithm>
#include <vector>

#include "../policy/stochastic_permutation.hpp"
#include "quadratic.hpp"

namespace attnkit::detail {

/// Rank-space key set of one call: window on ranks + original-index masks.
struct rank_window_keys {
  static constexpr bool active = true;
  const options& opt;           ///< the caller's options (original indices)
  const std::vector<std::vector<index_t>>& perm;  ///< per kv head: token at rank r
  index_t n = 0, group = 1, window = 0;
  window_kind kind = window_kind::symmetric;
  bool original_terms = false;  ///< any option that depends on original indices

  const std::vector<index_t>& pi(index_t h) const { return perm[perm.size() == 1 ? 0 : static_cast<std::size_t>(h / group)]; }

  key_range hull(index_t, index_t, index_t r) const {
    const index_t half = window / 2;
    switch (kind) {
      case window_kind::one_sided: return {std::max<index_t>(r - window, 0), std::min(n, r + 1)};
      case window_kind::circular:
        if (r - half < 0 || r + half >= n) return {0, n};
        return {r - half, r + half + 1};
      default: return {std::max<index_t>(r - half, 0), std::min(n, r + half + 1)};
    }
  }
  tile_class classify(index_t, index_t, index_t r0, index_t r1, index_t, index_t) const {
    if (original_terms) return tile_class::partial;
    if (kind == window_kind::circular && (r0 - window / 2 < 0 || r1 - 1 + window / 2 >= n)) return tile_class::partial;
    return tile_class::full;  // the hull is the exact window
  }
  float adjust(index_t b, index_t h, index_t ri, index_t rj) const {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    if (!rank_window_allows(kind, window, ri, rj, n)) return ninf;
    const auto& p = pi(h);
    const index_t i = p[static_cast<std::size_t>(ri)], j = p[static_cast<std::size_t>(rj)];
    const batch_keys bk = keys_of_batch(opt, b, n, n);
    if (!analytic_range(opt, bk, i).contains(j)) return ninf;
    if (opt.mask.data && !broadcast_row(opt.mask, b, h, i)[j]) return ninf;
    float x = 0.0f;
    if (opt.bias.data) x += broadcast_row(opt.bias, b, h, i)[j];
    if (!opt.alibi_slopes.empty())
      x -= opt.alibi_slopes[static_cast<std::size_t>(h)] * static_cast<float>(std::abs(i + bk.delta - j));
    return x;
  }
};

/// Forwards rows to the caller's observer with their original index.
template <class Obs>
struct unpermuting_observer {
  static constexpr bool enabled = Obs::enabled;
  static constexpr bool wants_entropy = Obs::wants_entropy;
  static constexpr bool wants_first_logit = Obs::wants_first_logit;
  Obs& inner;
  const rank_window_keys& keys;
  int top_k() const { return inner.top_k(); }
  void begin(const problem_shape& s, const options& o) { inner.begin(s, o); }
  void end() { inner.end(); }
  void on_row(row_state st) {
    st.row = keys.pi(st.head)[static_cast<std::size_t>(st.row)];
    // Key 0 of rank order is not token 0: the first-token logit is not tracked here.
    st.first_logit = -std::numeric_limits<double>::infinity();
    inner.on_row(st);
  }
};

/// Runs windowed attention in the rank order of `perm` (per kv head, or one shared).
template <class Arch, class Obs, class KV>
void run_rank_window(const stochastic_permutation& pol, const std::vector<std::vector<index_t>>& perm,
                     const problem_shape& sh, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                     const tensor_view<const KV>& v, const tensor_view<float>& out, const options& opt, Obs& obs) {
  if (sh.q_len != sh.k_len)
    fail("k", "extent 'seq'", std::to_string(sh.q_len) + " (stochastic permutation is self-attention: Lk = Lq)",
         sh.k_len);
  if (pol.window < 0) fail("policy.window", "", ">= 0", pol.window);
  const index_t n = sh.q_len, B = sh.batch, H = sh.q_heads, G = sh.kv_heads, D = sh.head_dim, Dv = sh.value_dim;
  const int threads = resolve_num_threads(opt.num_threads);
  const auto& pi = [&](index_t g) -> const std::vector<index_t>& {
    return perm[perm.size() == 1 ? 0 : static_cast<std::size_t>(g)];
  };
  // Gather into rank order (K, V widened to float).
  // Rank-order copies live in per-thread buffers reused across calls (no page faults
  // or zero-fill per call; every element is written by the gather before it is read).
  thread_local aligned_vector<float> pq, pk, pv, po;
  auto grow = [](aligned_vector<float>& x, index_t size) {
    if (x.size() < static_cast<std::size_t>(size)) x.resize(static_cast<std::size_t>(size));
  };
  grow(pq, B * H * n * D);
  grow(pk, B * G * n * D);
  grow(pv, B * G * n * Dv);
  grow(po, B * H * n * Dv);
  const auto PQ = bhsd(pq.data(), B, H, n, D);
  const auto PK = bhsd(pk.data(), B, G, n, D);
  const auto PV = bhsd(pv.data(), B, G, n, Dv);
  const auto PO = bhsd(po.data(), B, H, n, Dv);
  parallel_for(B * H, threads, [&](index_t bh) {
    const index_t b = bh / H, h = bh % H;
    const auto& p = pi(h / sh.group());
    for (index_t r = 0; r < n; ++r) std::copy_n(q.row(b, h, p[static_cast<std::size_t>(r)]), D, PQ.row(b, h, r));
  });
  parallel_for(B * G, threads, [&](index_t bg) {
    const index_t b = bg / G, g = bg % G;
    const auto& p = pi(g);
    for (index_t r = 0; r < n; ++r) {
      widen(k.row(b, g, p[static_cast<std::size_t>(r)]), PK.row(b, g, r), D);
      widen(v.row(b, g, p[static_cast<std::size_t>(r)]), PV.row(b, g, r), Dv);
    }
  });
  // Original-index options move into the adapter; the skeleton sees rank space.
  options ranked = opt;
  ranked.causal = causal::none;
  ranked.window = {};
  ranked.key_lengths = {};
  ranked.mask = {};
  ranked.bias = {};
  ranked.alibi_slopes = {};
  std::vector<float> lse_ranked;
  if (opt.lse) {
    lse_ranked.resize(static_cast<std::size_t>(B * H * n));
    ranked.lse = lse_ranked.data();
  }
  const bool original_terms = opt.causal != causal::none || opt.window.active() || !opt.key_lengths.empty() ||
                              opt.mask.data || opt.bias.data || !opt.alibi_slopes.empty();
  const rank_window_keys keys{opt, perm, n, sh.group(), pol.window, pol.kind, original_terms};
  const problem_shape rsh = validate_call(PQ, PK, PV, PO, ranked);
  const index_t band = pol.kind == window_kind::one_sided ? pol.window + 1 : 2 * (pol.window / 2) + 1;
  if constexpr (Obs::enabled) {
    unpermuting_observer<Obs> wrapped{obs, keys};
    run_quadratic<Arch>(softmax{}, rsh, tensor_view<const float>(PQ), tensor_view<const float>(PK),
                        tensor_view<const float>(PV), PO, ranked, wrapped, keys, band);
  } else {
    run_quadratic<Arch>(softmax{}, rsh, tensor_view<const float>(PQ), tensor_view<const float>(PK),
                        tensor_view<const float>(PV), PO, ranked, obs, keys, band);
  }
  // Scatter rows (and LSE) back to original order.
  parallel_for(B * H, threads, [&](index_t bh) {
    const index_t b = bh / H, h = bh % H;
    const auto& p = pi(h / sh.group());
    for (index_t r = 0; r < n; ++r) {
      const index_t i = p[static_cast<std::size_t>(r)];
      std::copy_n(PO.row(b, h, r), Dv, out.row(b, h, i));
      if (opt.lse) opt.lse[(b * H + h) * n + i] = lse_ranked[static_cast<std::size_t>((b * H + h) * n + r)];
    }
  });
}

/// The permutations a policy uses for n tokens: one per kv head, or one shared.
inline std::vector<std::vector<index_t>> policy_permutations(const stochastic_permutation& pol, index_t n,
                                                             index_t kv_heads) {
  std::vector<std::vector<index_t>> perms;
  const index_t count = pol.share_across_heads ? 1 : kv_heads;
  for (index_t g = 0; g < count; ++g) perms.push_back(make_permutation(n, pol.seed, pol.layer, pol.head_key(g)));
  return perms;
}

}  // namespace attnkit::detail
