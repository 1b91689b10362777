#pragma once
/// \file
/// Stochastic permutation attention: SA(Q,K,V) = Pᵀ·SWA_w(PQ, PK, PV). The quadratic
/// skeleton runs a window on ranks (its tiles stay banded, so the cost is that of
/// sliding-window attention) through a key-set adapter that also reorders rows: K/V
/// are packed in rank order straight from the caller's tensors, and each skeleton
/// row reads its query and writes its output at the token's original index, so no
/// permuted copy of Q, K, V or O is made. Options' masks and positional terms
/// (causal, key lengths, boolean mask, bias, ALiBi) use the original indices: they
/// enter as the adapter's additive term on the tiles they touch.
#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "../policy/softmax.hpp"
#include "../policy/stochastic_permutation.hpp"
#include "prefill/schedule.hpp"

namespace attnkit::detail {

/// Rank-space key set of one call: window on ranks + original-index masks.
struct rank_window_keys : key_set_base {
  static constexpr bool reordered = true;
  static constexpr bool adjusts = true;
  const options& opt;           ///< the caller's options (original indices)
  const std::vector<std::vector<index_t>>& perm;  ///< per kv head: token at rank r
  index_t n = 0, group = 1, window = 0;
  window_kind kind = window_kind::symmetric;
  bool original_terms = false;  ///< any option that depends on original indices

  const std::vector<index_t>& pi(index_t h) const { return perm[perm.size() == 1 ? 0 : static_cast<std::size_t>(h / group)]; }
  /// Row reordering (prefill/keys.hpp): rank r of query head h / kv head g.
  index_t token(index_t h, index_t r) const { return pi(h)[static_cast<std::size_t>(r)]; }
  index_t kv_token(index_t g, index_t r) const {
    return perm[perm.size() == 1 ? 0 : static_cast<std::size_t>(g)][static_cast<std::size_t>(r)];
  }

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
  tile_class classify(const block_scratch&, index_t, index_t, index_t r0, index_t r1, index_t, index_t) const {
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

/// Forwards rows to the caller's observer (rows already carry their original index).
template <class Obs>
struct unpermuting_observer {
  static constexpr bool enabled = Obs::enabled;
  static constexpr bool wants_entropy = Obs::wants_entropy;
  static constexpr bool wants_first_logit = Obs::wants_first_logit;
  Obs& inner;
  int top_k() const { return inner.top_k(); }
  void begin(const problem_shape& s, const options& o) { inner.begin(s, o); }
  void end() { inner.end(); }
  void on_row(row_state st) {
    // Key 0 of rank order is not token 0: the first-token logit is not tracked here.
    st.first_logit = -std::numeric_limits<double>::infinity();
    inner.on_row(st);
  }
};

/// Runs windowed attention in the rank order of `perm` (per kv head, or one shared).
template <class Arch, class Obs, class KV>
void run_rank_window(const stochastic_permutation& pol, const std::vector<std::vector<index_t>>& perm,
                     const problem_shape& sh, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                     const tensor_view<const KV>& v, const tensor_view<float>& out, const options& opt, Obs& obs,
                     workspace& ws) {
  check_permutation_arguments(pol, sh);  // also done by attention(), before the draw
  const index_t n = sh.q_len;
  // Original-index options move into the adapter; the skeleton sees rank space
  // (LSE and outputs are still written at original indices, by the adapter's token()).
  options ranked = opt;
  ranked.causal = causal::none;
  ranked.window = {};
  ranked.key_lengths = {};
  ranked.mask = {};
  ranked.bias = {};
  ranked.alibi_slopes = {};
  const bool original_terms = opt.causal != causal::none || opt.window.active() || !opt.key_lengths.empty() ||
                              opt.mask.data || opt.bias.data || !opt.alibi_slopes.empty();
  // Every kind sees all n ranks once window >= 2n, so a larger window (INT64_MAX as
  // "unbounded") is clamped to that: window + 1 and the band below stay in range.
  const index_t window = std::min(pol.window, sat_add(sat_mul(2, n), 2));
  const rank_window_keys keys{{}, opt, perm, n, sh.group(), window, pol.kind, original_terms};
  const index_t band = pol.kind == window_kind::one_sided ? window + 1 : 2 * (window / 2) + 1;
  if constexpr (Obs::enabled) {
    unpermuting_observer<Obs> wrapped{obs};
    run_quadratic<Arch>(softmax{}, sh, q, k, v, out, ranked, wrapped, ws, keys, band);
  } else {
    run_quadratic<Arch>(softmax{}, sh, q, k, v, out, ranked, obs, ws, keys, band);
  }
}

/// The last permutations drawn with a workspace, and what they were drawn for.
struct permutation_cache {
  struct draw_key {
    index_t n = -1, count = 0;
    std::uint64_t seed = 0, layer = 0;
    bool operator==(const draw_key&) const = default;
  };
  draw_key last;
  std::shared_ptr<const std::vector<std::vector<index_t>>> cached;
  std::size_t bytes() const {
    std::size_t b = sizeof(*this);
    if (cached)
      for (const auto& p : *cached) b += p.capacity() * sizeof(index_t);
    return b;
  }
};

/// The permutations a policy uses for n tokens: one per kv head, or one shared
/// (permutations_for). Drawn ones are a pure function of (n, seed, layer, head
/// key), so the workspace keeps the last set and a stream of same-length calls does
/// not redraw them (drawing is ~2% of a call at N = 16384).
inline std::shared_ptr<const std::vector<std::vector<index_t>>> policy_permutations(const stochastic_permutation& pol,
                                                                                    index_t n, index_t kv_heads,
                                                                                    workspace& ws) {
  using draw_key = permutation_cache::draw_key;
  permutation_cache& cache = ws.shared().get<permutation_cache>();
  auto& last = cache.last;
  auto& cached = cache.cached;
  if (pol.explicit_order())  // the caller's orders: validated and copied every call, never cached
    return std::make_shared<const std::vector<std::vector<index_t>>>(permutations_for(pol, n, kv_heads));
  const index_t count = pol.share_across_heads ? 1 : kv_heads;
  const draw_key key{n, count, pol.seed, pol.layer};
  if (cached && key == last) return cached;
  cached = std::make_shared<const std::vector<std::vector<index_t>>>(permutations_for(pol, n, kv_heads));
  last = key;
  return cached;
}

}  // namespace attnkit::detail
