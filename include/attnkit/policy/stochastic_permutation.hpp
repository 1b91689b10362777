#pragma once
/// \file
/// Stochastic permutation attention (Jin & Sui 2026): SA(Q,K,V) = Pᵀ·SWA_w(PQ, PK, PV).
/// A permutation π (π[r] = the token placed at rank r) is drawn per (seed, layer,
/// kv head) by a counter-based generator, so it is reproducible anywhere; token i
/// has rank r(i) = π⁻¹(i). Softmax attention then runs inside a window on ranks and
/// the output is written back in the original order.
///
/// Window on ranks, Δr = r(i) − r(j), n = k.seq:
///   symmetric:  |Δr| ≤ w/2                      (2⌊w/2⌋ + 1 keys)
///   one_sided:  0 ≤ Δr ≤ w                      (w + 1 keys: the w predecessors in rank order)
///   circular:   min(|Δr|, n − |Δr|) ≤ w/2       (wraps around; 2⌊w/2⌋ + 1 keys when n > w)
/// For even w all three give a budget of w + 1 keys per query. Self-attention only
/// (Lq == Lk). Masks from the options (causal, key lengths, bool mask, …) and
/// positional terms (ALiBi) use the *original* indices, so with causal masking a
/// query keeps only the window keys j ≤ i: about half the budget on average (query
/// i keeps each window key with probability ≈ i/n).
#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "../core/checked.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "family.hpp"
#include "random.hpp"

namespace attnkit {

enum class window_kind : unsigned char { symmetric, one_sided, circular };

/// Stochastic permutation policy. The permutation is keyed by (seed, layer, head),
/// where head is the kv head (query heads of one GQA group share it) or 0 when
/// `share_across_heads`; the same permutation is used for every batch.
///
/// A permutation drawn elsewhere (NumPy, a learned or sorted order) is given
/// instead of the seed through `permutations` (one span per kv head, or a single
/// span for every head) or `permute` (a callable that fills kv head g's order);
/// π[r] is the token at rank r over the call's k.seq tokens. Kernel and oracle use
/// exactly the given order; it is validated (length, a true permutation) before
/// anything is written.
struct stochastic_permutation {
  using family = attnkit::family::permutation;
  index_t window = 256;
  std::uint64_t seed = 0;
  std::uint64_t layer = 0;
  window_kind kind = window_kind::symmetric;
  bool share_across_heads = false;
  /// Explicit orders, one per kv head or one for all; must outlive the call. Empty:
  /// drawn from (seed, layer, head).
  std::span<const std::span<const index_t>> permutations{};
  /// Or a callable: permute(g, order) fills kv head g's order (order.size() = k.seq);
  /// called for g = 0 only when `share_across_heads`.
  std::function<void(index_t g, std::span<index_t> order)> permute{};

  /// The head key of kv head g.
  std::uint64_t head_key(index_t g) const noexcept { return share_across_heads ? 0 : static_cast<std::uint64_t>(g); }
  /// True when the orders come from the caller rather than the seeded draw.
  bool explicit_order() const noexcept { return !permutations.empty() || static_cast<bool>(permute); }
};

namespace detail {
/// The policy's own checks against the call's shape; the kernel and the oracle
/// both call it (before anything is drawn or written), so they accept the same calls.
/// Any window >= 0 is valid, INT64_MAX included ("unbounded").
inline void check_permutation_arguments(const stochastic_permutation& pol, const problem_shape& sh) {
  if (sh.q_len != sh.k_len)
    fail("k", "extent 'seq'", std::to_string(sh.q_len) + " (= q.seq: stochastic permutation is self-attention)",
         sh.k_len);
  if (pol.window < 0) fail("policy.window", "", ">= 0", pol.window);
  if (pol.kind != window_kind::symmetric && pol.kind != window_kind::one_sided && pol.kind != window_kind::circular)
    fail("policy.kind", "", "window_kind::symmetric, one_sided or circular", static_cast<int>(pol.kind));
}
}  // namespace detail

/// True iff ranks ri (query) and rj (key) are within `window` under `kind` (n tokens).
constexpr bool rank_window_allows(window_kind kind, index_t window, index_t ri, index_t rj, index_t n) noexcept {
  const index_t d = ri - rj, ad = d < 0 ? -d : d;
  switch (kind) {
    case window_kind::symmetric: return ad <= window / 2;
    case window_kind::one_sided: return d >= 0 && d <= window;
    case window_kind::circular: return std::min(ad, n - ad) <= window / 2;
  }
  return false;
}

/// The permutation of n tokens for (seed, layer, head): π[r] = token at rank r.
/// Fisher–Yates from the back, the swap index of step i drawn from
/// counter_hash(seed, layer, head, i). Reproducible across platforms.
inline std::vector<index_t> make_permutation(index_t n, std::uint64_t seed, std::uint64_t layer, std::uint64_t head) {
  std::vector<index_t> p(static_cast<std::size_t>(std::max<index_t>(n, 0)));
  for (index_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = i;
  for (index_t i = n - 1; i > 0; --i) {
    const auto bits = random::counter_hash(seed, layer, head, static_cast<std::uint64_t>(i));
    const auto j = static_cast<index_t>(random::uniform_below(bits, static_cast<std::uint64_t>(i + 1)));
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
  }
  return p;
}

namespace detail {
/// Throws unless `p` is a permutation of 0 … n − 1 (named `what` in the message).
inline void check_is_permutation(std::span<const index_t> p, index_t n, const std::string& what) {
  if (static_cast<index_t>(p.size()) != n)
    fail(what, "length", std::to_string(n) + " (= k.seq)", p.size());
  std::vector<bool> seen(static_cast<std::size_t>(n), false);
  for (index_t x : p) {
    if (x < 0 || x >= n || seen[static_cast<std::size_t>(x)])
      fail(what, "entries", "a permutation of 0 … k.seq − 1 (each token once)", x);
    seen[static_cast<std::size_t>(x)] = true;
  }
}
}  // namespace detail

/// The orders (π per kv head, or one shared) a call of `pol` uses for n tokens and
/// `kv_heads` kv heads: the caller's (validated) or the seeded draw. The kernels and
/// the oracle both take them from here.
inline std::vector<std::vector<index_t>> permutations_for(const stochastic_permutation& pol, index_t n,
                                                          index_t kv_heads) {
  std::vector<std::vector<index_t>> perms;
  const index_t count = pol.share_across_heads ? 1 : kv_heads;
  if (!pol.permutations.empty()) {
    const auto given = static_cast<index_t>(pol.permutations.size());
    if (given != 1 && given != kv_heads)
      detail::fail("policy.permutations", "size", "1 or k.heads = " + std::to_string(kv_heads), given);
    for (index_t g = 0; g < given; ++g) {
      const auto p = pol.permutations[static_cast<std::size_t>(g)];
      detail::check_is_permutation(p, n, "policy.permutations[" + std::to_string(g) + "]");
      perms.emplace_back(p.begin(), p.end());
    }
  } else if (pol.permute) {
    for (index_t g = 0; g < count; ++g) {
      std::vector<index_t> p(static_cast<std::size_t>(n), -1);
      pol.permute(g, p);
      detail::check_is_permutation(p, n, "policy.permute(" + std::to_string(g) + ")");
      perms.push_back(std::move(p));
    }
  } else {
    for (index_t g = 0; g < count; ++g) perms.push_back(make_permutation(n, pol.seed, pol.layer, pol.head_key(g)));
  }
  return perms;
}

/// Ranks r(i) = π⁻¹(i) of a permutation.
inline std::vector<index_t> inverse_permutation(const std::vector<index_t>& perm) {
  std::vector<index_t> r(perm.size());
  for (std::size_t k = 0; k < perm.size(); ++k) r[static_cast<std::size_t>(perm[k])] = static_cast<index_t>(k);
  return r;
}

/// Result of permutation_coverage.
struct coverage_report {
  /// fraction[l] = share of (query, key) pairs (j ≤ i only when causal) through which
  /// information can flow after layers 0..l, i.e. the fraction of nonzero entries
  /// of A_l·…·A_0 (boolean), each A the attention pattern of one layer.
  std::vector<double> fraction;
  /// Number of layers after which every pair is reachable; −1 if not within `layers`.
  index_t depth_to_full = -1;
};

/// Composes `layers` layers of stochastic permutation attention on n tokens (layer l
/// uses make_permutation(n, seed, first_layer + l, head)) and measures reachability:
/// the paper's O(log_w n) depth claim, measurable. Cost O(layers · n · w · n/64).
inline coverage_report permutation_coverage(index_t n, index_t window, index_t layers, std::uint64_t seed,
                                            window_kind kind = window_kind::symmetric, bool causal = false,
                                            std::uint64_t head = 0, std::uint64_t first_layer = 0) {
  coverage_report rep;
  if (n <= 0) return rep;
  const index_t words = (n + 63) / 64;
  // reach[i] = bitset of keys whose information has reached token i.
  std::vector<std::uint64_t> reach(static_cast<std::size_t>(n * words), 0), next(reach.size());
  for (index_t i = 0; i < n; ++i) reach[static_cast<std::size_t>(i * words + i / 64)] |= std::uint64_t{1} << (i % 64);
  const double pairs = causal ? 0.5 * static_cast<double>(n) * static_cast<double>(n + 1)
                              : static_cast<double>(n) * static_cast<double>(n);
  for (index_t l = 0; l < layers; ++l) {
    const auto perm = make_permutation(n, seed, first_layer + static_cast<std::uint64_t>(l), head);
    const auto rank = inverse_permutation(perm);
    std::fill(next.begin(), next.end(), 0);
    // Every kind sees all ranks once window >= 2n: a larger one (INT64_MAX) is
    // clamped so that the candidate loop below stays O(n) per token.
    const index_t w = std::min(window, detail::sat_add(detail::sat_mul(2, n), 2)), half = w / 2;
    for (index_t i = 0; i < n; ++i) {
      const index_t ri = rank[static_cast<std::size_t>(i)];
      std::uint64_t* dst = next.data() + i * words;
      // Candidate ranks: a superset of the window, filtered by rank_window_allows.
      const index_t lo = kind == window_kind::one_sided ? ri - w : ri - half;
      const index_t hi = kind == window_kind::one_sided ? ri : ri + half;
      for (index_t rr = lo; rr <= hi; ++rr) {
        index_t rj = rr;
        if (kind == window_kind::circular) rj = ((rr % n) + n) % n;
        if (rj < 0 || rj >= n) continue;
        if (kind == window_kind::circular && hi - lo + 1 > n && rr != rj) continue;  // visit each rank once
        if (!rank_window_allows(kind, w, ri, rj, n)) continue;
        const index_t j = perm[static_cast<std::size_t>(rj)];
        if (causal && j > i) continue;
        const std::uint64_t* src = reach.data() + j * words;
        for (index_t w = 0; w < words; ++w) dst[w] |= src[w];
      }
    }
    reach.swap(next);
    double count = 0;
    for (auto w : reach) count += static_cast<double>(__builtin_popcountll(w));
    rep.fraction.push_back(count / pairs);
    if (rep.depth_to_full < 0 && count == pairs) rep.depth_to_full = l + 1;
  }
  return rep;
}

}  // namespace attnkit
