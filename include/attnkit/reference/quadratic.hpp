#pragma once
/// \file
/// Float64 references of the quadratic-family variants and the ones built on them:
/// softmax, sigmoid, sparse (pattern + inner softmax/sigmoid), stochastic
/// permutation (seeded or with explicit permutations) and the gated combination
/// g1⊙SA + g2⊙SWA.
#include <numeric>
#include <utility>

#include "../policy/sigmoid.hpp"
#include "../policy/softmax.hpp"
#include "../policy/sparse.hpp"
#include "../policy/stochastic_permutation.hpp"
#include "common.hpp"

namespace attnkit::reference {
namespace detail {

/// The policy's weight function over the finished logits of one head (softmax:
/// exp with the row's LSE; others: weight(s) from the policy's own definition, on
/// double); writes out and the rows' diagnostics.
template <class W, class TV, class TO>
void finish_head(const W& pol, const tensor_view<TV>& v, const tensor_view<TO>& out, const options& opt,
                 const problem_shape& sh, index_t b, index_t h, const std::vector<double>& L, result& res,
                 const extras& ex) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, Dv = sh.value_dim, g = h / sh.group();
  const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
  const auto wp = attnkit::detail::resolve_weight(pol, weight_context{bk.lk, Lq, sh.head_dim});
  std::vector<double> acc(static_cast<std::size_t>(Dv)), vj(static_cast<std::size_t>(Dv)), w;
  const double fill = opt.masked_rows == masked_rows::nan ? qnan : 0.0;
  const dropout_mask drop(opt.dropout);  // factor 1/(1−p) or 0 on the weights applied to V
  for (index_t i = 0; i < Lq; ++i) {
    const index_t r = res.row(b, h, i);
    const auto u = static_cast<std::size_t>(r);
    const double* s = L.data() + i * Lk;
    std::vector<index_t> J;
    bool any_nan = false;
    for (index_t j = 0; j < Lk; ++j)
      if (!(s[j] == ninf)) {
        J.push_back(j);
        any_nan = any_nan || std::isnan(s[j]);
      }
    const auto n = static_cast<index_t>(J.size());
    res.allowed[u] = n;
    std::fill(acc.begin(), acc.end(), 0.0);
    w.assign(J.size(), 0.0);
    bool write_fill = false;
    if constexpr (W::normalization == normalization::softmax) {
      (void)wp;
      const bool has_sink = !opt.sinks.empty();
      const double sink = has_sink ? static_cast<double>(opt.sinks[static_cast<std::size_t>(h)]) : ninf;
      double m = sink;
      for (index_t j : J) m = std::max(m, s[j]);  // NaN ignored here, handled below
      if (n == 0 && !has_sink) {
        write_fill = true;  // lse stays −inf
      } else if (any_nan) {
        res.lse[u] = qnan;
        for (auto& x : acc) x = qnan;
        res.entropy[u] = res.norm_entropy[u] = res.mass[u] = res.first_prob[u] = qnan;
        if (opt.lse) opt.lse[r] = std::numeric_limits<float>::quiet_NaN();
        for (index_t d = 0; d < Dv; ++d) out(b, h, i, d) = static_cast<std::remove_cv_t<TO>>(qnan);
        continue;
      } else {
        double l = has_sink ? std::exp(sink - m) : 0.0;
        for (index_t j : J) l += std::exp(s[j] - m);
        const double lse = m + std::log(l);
        res.lse[u] = lse;
        if (has_sink) res.sink_prob[u] = std::exp(sink - lse);
        if (n == 0) write_fill = true;
        double mass = 0;
        for (std::size_t x = 0; x < J.size(); ++x) {
          w[x] = std::exp(s[J[x]] - lse);
          mass += w[x];
          load(v, b, g, J[x], vj.data());
          const double wd = w[x] * drop.factor(b, h, i, J[x]);
          for (index_t d = 0; d < Dv; ++d) acc[static_cast<std::size_t>(d)] += wd * vj[static_cast<std::size_t>(d)];
          if (J[x] == 0) res.first_prob[u] = w[x];
        }
        res.mass[u] = mass;
        row_entropy(res, r, w, 1.0, ex);
      }
      if (opt.lse) opt.lse[r] = static_cast<float>(res.lse[u]);
    } else {
      // weight(s) as the policy defines it; masked keys weigh 0. none: o = Σ w v
      // (an empty row is 0); sum: o = Σ w v / Σ w (a row without weight follows
      // masked_rows).
      double mass = 0;
      for (std::size_t x = 0; x < J.size(); ++x) {
        w[x] = attnkit::detail::eval_weight(pol, s[J[x]], wp);
        mass += w[x];
      }
      constexpr bool divide = W::normalization == normalization::sum;
      if (divide && mass == 0.0) write_fill = true;
      for (std::size_t x = 0; x < J.size(); ++x) {
        const double wx = (divide && mass != 0.0 ? w[x] / mass : w[x]) * drop.factor(b, h, i, J[x]);
        load(v, b, g, J[x], vj.data());
        for (index_t d = 0; d < Dv; ++d) acc[static_cast<std::size_t>(d)] += wx * vj[static_cast<std::size_t>(d)];
      }
      res.mass[u] = mass;
      if (!J.empty() && J[0] == 0) res.first_prob[u] = mass > 0 ? w[0] / mass : (std::isnan(mass) ? qnan : 0.0);
      row_entropy(res, r, w, mass, ex);
      if (divide && mass != 0.0)
        for (auto& x : w) x /= mass;  // keep_weights: the weights applied to V
    }
    for (index_t d = 0; d < Dv; ++d)
      out(b, h, i, d) = static_cast<std::remove_cv_t<TO>>(write_fill ? fill : acc[static_cast<std::size_t>(d)]);
    if (ex.keep_weights)
      for (std::size_t x = 0; x < J.size(); ++x) res.weights[static_cast<std::size_t>(res.element(b, h, i, J[x]))] = w[x];
  }
}

/// The quadratic driver: logits per head, then `restrict(b, h, L)` may mask more
/// pairs (patterns, permutation windows), then the policy's weights.
template <class W, class TQ, class TK, class TV, class TO, class Restrict>
result run_quadratic(const W& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                     const tensor_view<TO>& out, const options& opt, const problem_shape& sh, const extras& ex,
                     Restrict&& restrict) {
  static_assert(attnkit::detail::check_weight_function<W>());
  attnkit::detail::check_weight_options<W>(opt);
  result res = make_result(sh, W::normalization == normalization::softmax, ex);
  if (ex.keep_weights) res.logits.assign(res.weights.size(), ninf);
  std::vector<double> L;
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      head_logits(q, k, opt, sh, b, h, L);
      restrict(b, h, L);
      finish_head(pol, v, out, opt, sh, b, h, L, res, ex);
      if (ex.keep_weights)
        std::copy(L.begin(), L.end(), res.logits.begin() + static_cast<std::ptrdiff_t>(res.element(b, h, 0, 0)));
    }
  return res;
}

/// Keeps the k largest logits of every row (ties: smaller key index).
inline void keep_top_k(std::vector<double>& L, index_t Lq, index_t Lk, index_t k) {
  for (index_t i = 0; i < Lq; ++i) {
    double* s = L.data() + i * Lk;
    std::vector<index_t> J;
    bool any_nan = false;
    for (index_t j = 0; j < Lk; ++j)
      if (!(s[j] == ninf)) {
        J.push_back(j);
        any_nan = any_nan || std::isnan(s[j]);
      }
    if (any_nan || static_cast<index_t>(J.size()) <= k) continue;  // a NaN row stays NaN
    std::stable_sort(J.begin(), J.end(), [&](index_t a, index_t c) { return s[a] > s[c]; });
    for (std::size_t x = static_cast<std::size_t>(k); x < J.size(); ++x) s[J[x]] = ninf;
  }
}

/// FlexPrefill-style block selection (see pattern::flex_prefill) on head (b, h).
template <class TQ, class TK>
void flex_select(const pattern::flex_prefill& p, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                 const options& opt, const problem_shape& sh, index_t b, index_t h, std::vector<double>& L) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, g = h / sh.group(), B = p.block;
  const index_t lk = keys_of_batch(opt, b, Lq, Lk).lk;
  const double tau = resolved_scale(opt, D);
  const index_t nkb = attnkit::detail::ceil_div(Lk, B);  // B may be up to INT64_MAX
  std::vector<double> x(static_cast<std::size_t>(D)), qbar(static_cast<std::size_t>(D)), kbar(static_cast<std::size_t>(D));
  for (index_t i0 = 0; i0 < Lq; i0 = attnkit::detail::sat_add(i0, B)) {
    const index_t i1 = std::min(Lq, attnkit::detail::sat_add(i0, B));
    std::fill(qbar.begin(), qbar.end(), 0.0);
    for (index_t i = i0; i < i1; ++i) {
      load(q, b, h, i, x.data());
      for (index_t d = 0; d < D; ++d) qbar[static_cast<std::size_t>(d)] += x[static_cast<std::size_t>(d)] / static_cast<double>(i1 - i0);
    }
    std::vector<index_t> cand;
    std::vector<double> est;
    for (index_t kb = 0; kb < nkb; ++kb) {
      const index_t j0 = kb * B, j1 = std::min(Lk, attnkit::detail::sat_add(j0, B));
      bool any = false;
      for (index_t i = i0; i < i1 && !any; ++i)
        for (index_t j = j0; j < j1 && !any; ++j) any = !(L[static_cast<std::size_t>(i * Lk + j)] == ninf);
      if (!any) continue;
      const index_t jv = std::min(j1, lk);  // valid keys of the block (non-empty: some key is allowed)
      std::fill(kbar.begin(), kbar.end(), 0.0);
      for (index_t j = j0; j < jv; ++j) {
        load(k, b, g, j, x.data());
        for (index_t d = 0; d < D; ++d) kbar[static_cast<std::size_t>(d)] += x[static_cast<std::size_t>(d)] / static_cast<double>(jv - j0);
      }
      double s = 0;
      for (index_t d = 0; d < D; ++d) s += qbar[static_cast<std::size_t>(d)] * kbar[static_cast<std::size_t>(d)];
      cand.push_back(kb);
      est.push_back(tau * s);
    }
    if (cand.empty()) continue;
    const double m = *std::max_element(est.begin(), est.end());
    double z = 0;
    for (auto& e : est) z += (e = std::exp(e - m));
    for (auto& e : est) e /= z;
    std::vector<std::size_t> order(cand.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t c) { return est[a] > est[c]; });
    std::vector<bool> keep(static_cast<std::size_t>(nkb), false);
    double cum = 0;
    index_t taken = 0;
    for (std::size_t o : order) {
      if (cum >= p.gamma && taken >= p.min_budget) break;
      keep[static_cast<std::size_t>(cand[o])] = true;
      cum += est[o];
      ++taken;
    }
    for (index_t i = i0; i < i1; ++i)
      for (index_t j = 0; j < Lk; ++j)
        if (!keep[static_cast<std::size_t>(j / B)]) L[static_cast<std::size_t>(i * Lk + j)] = ninf;
  }
}

/// Masks the logits L of head (b, h) outside the pattern's key set: static patterns
/// through `allowed`, top_k and flex_prefill by their data-dependent selection.
template <class P, class TQ, class TK>
void restrict_to_pattern(const P& pat, const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt,
                         const problem_shape& sh, index_t b, index_t h, std::vector<double>& L) {
  const index_t Lq = sh.q_len, Lk = sh.k_len;
  if constexpr (std::is_same_v<P, pattern::top_k>) {
    (void)b, (void)h, (void)q, (void)k;
    keep_top_k(L, Lq, Lk, pat.k);
  } else if constexpr (std::is_same_v<P, pattern::flex_prefill>) {
    flex_select(pat, q, k, opt, sh, b, h, L);
  } else {
    (void)q, (void)k;
    static_assert(pattern::static_pattern<P>, "attnkit::reference: unknown data-dependent pattern");
    const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
    for (index_t i = 0; i < Lq; ++i) {
      const pattern::row_query row{b, h, i, Lq, bk.lk, bk.delta};
      for (index_t j = 0; j < Lk; ++j)
        if (!attnkit::detail::pattern_hooks<P>::allowed(pat, row, j)) L[static_cast<std::size_t>(i * Lk + j)] = ninf;
    }
  }
}

/// Masks L outside the rank window of the permutation `perm` (self-attention).
inline void rank_window(const std::vector<index_t>& perm, window_kind kind, index_t window, index_t Lk,
                        std::vector<double>& L) {
  const auto rank = inverse_permutation(perm);
  for (index_t i = 0; i < Lk; ++i)
    for (index_t j = 0; j < Lk; ++j)
      if (!rank_window_allows(kind, window, rank[static_cast<std::size_t>(i)], rank[static_cast<std::size_t>(j)], Lk))
        L[static_cast<std::size_t>(i * Lk + j)] = ninf;
}

inline void check_permutations(const std::vector<std::vector<index_t>>& perms, const problem_shape& sh) {
  if (perms.size() != 1 && static_cast<index_t>(perms.size()) != sh.kv_heads)
    fail("permutations", "size", "1 or k.heads = " + std::to_string(sh.kv_heads), perms.size());
  for (const auto& p : perms) {
    if (static_cast<index_t>(p.size()) != sh.k_len) fail("permutations", "length", sh.k_len, p.size());
    std::vector<bool> seen(p.size(), false);
    for (index_t x : p) {
      if (x < 0 || x >= sh.k_len || seen[static_cast<std::size_t>(x)])
        fail("permutations", "entries", "a permutation of 0..k.seq-1", x);
      seen[static_cast<std::size_t>(x)] = true;
    }
  }
}

}  // namespace detail

/// Attention of a quadratic-family policy — softmax, sigmoid, or a user's weight
/// function — with every option. Softmax: exact, `policy.exp` is irrelevant here.
/// Others: w = policy.weight(s) evaluated in double from the policy's own
/// definition; rows are divided by Σ w for normalization::sum. Sigmoid: b =
/// policy.resolved_bias(lk) per batch; rows with no visible key are 0
/// (options.masked_rows does not apply without normalisation); options.lse and
/// options.sinks are rejected for every policy but softmax.
template <quadratic_weight W, detail::element TQ, detail::element TK, detail::element TV, class TO>
result attention(const W& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                 const tensor_view<TO>& out, const options& opt = {}, const extras& ex = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, /*require_contiguous_dim=*/false);
  return detail::run_quadratic(pol, q, k, v, out, opt, sh, ex, [](index_t, index_t, std::vector<double>&) {});
}

/// Sparse attention: the pattern's key set ∩ the options' masks, then the inner
/// policy (softmax renormalises over the surviving keys).
template <class P, class Inner, detail::element TQ, detail::element TK, detail::element TV, class TO>
result attention(const sparse<P, Inner>& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                 const tensor_view<TV>& v, const tensor_view<TO>& out, const options& opt = {},
                 const extras& ex = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, false);
  pattern::check_arguments(pol.pattern, sh, opt);
  attnkit::detail::reject_positions(opt, "sparse patterns");
  return detail::run_quadratic(pol.inner, q, k, v, out, opt, sh, ex, [&](index_t b, index_t h, std::vector<double>& L) {
    detail::restrict_to_pattern(pol.pattern, q, k, opt, sh, b, h, L);
  });
}

/// Stochastic permutation attention with explicit permutations: perms[g] (π[r] =
/// token at rank r) for kv head g, or one permutation shared by all heads. The
/// policy's window and kind apply; its seed/layer are ignored.
template <detail::element TQ, detail::element TK, detail::element TV, class TO>
result attention(const stochastic_permutation& pol, const std::vector<std::vector<index_t>>& perms,
                 const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                 const tensor_view<TO>& out, const options& opt = {}, const extras& ex = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, false);
  attnkit::detail::check_permutation_arguments(pol, sh);
  detail::check_permutations(perms, sh);
  attnkit::detail::reject_positions(opt, "stochastic permutation attention");
  return detail::run_quadratic(softmax{}, q, k, v, out, opt, sh, ex, [&](index_t, index_t h, std::vector<double>& L) {
    const auto& p = perms.size() == 1 ? perms[0] : perms[static_cast<std::size_t>(h / sh.group())];
    detail::rank_window(p, pol.kind, pol.window, sh.k_len, L);
  });
}

/// The permutations a stochastic_permutation call uses, one per kv head or one shared:
/// the policy's explicit orders (validated) or its seeded draw.
inline std::vector<std::vector<index_t>> permutations_of(const stochastic_permutation& pol, index_t n,
                                                         index_t kv_heads) {
  return permutations_for(pol, n, kv_heads);
}

/// Stochastic permutation attention with the policy's permutations (seeded or explicit).
template <detail::element TQ, detail::element TK, detail::element TV, class TO>
result attention(const stochastic_permutation& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                 const tensor_view<TV>& v, const tensor_view<TO>& out, const options& opt = {},
                 const extras& ex = {}) {
  return attention(pol, permutations_of(pol, k.seq(), k.heads()), q, k, v, out, opt, ex);
}

/// Results of the two branches of gated().
struct gated_result {
  result sa;   ///< stochastic permutation branch
  result swa;  ///< sliding-window branch (identity permutation, same window kind)
};

/// out = g1 ⊙ SA + g2 ⊙ SWA: SA the stochastic permutation attention of `pol`, SWA the
/// same window on original positions (identity permutation). Gates are views of
/// extents [B|1, Hq|1, Lq|1, Dv|1] (1 = broadcast), multiplied element-wise.
template <detail::element TG1, detail::element TG2, detail::element TQ, detail::element TK, detail::element TV,
          class TO>
gated_result gated(const stochastic_permutation& pol, const tensor_view<TG1>& g1, const tensor_view<TG2>& g2,
                   const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                   const tensor_view<TO>& out, const options& opt = {}, const extras& ex = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, false);
  auto check_gate = [&](const char* name, const auto& gv) {
    attnkit::detail::check_view_basics(name, gv);
    const index_t want[4] = {sh.batch, sh.q_heads, sh.q_len, sh.value_dim};
    for (int a = 0; a < 4; ++a)
      if (gv.extent[a] != want[a] && gv.extent[a] != 1)
        fail(name, std::string("extent '") + attnkit::detail::axis_name(a) + "'", std::to_string(want[a]) + " or 1", gv.extent[a]);
  };
  check_gate("g1", g1);
  check_gate("g2", g2);
  const auto n = static_cast<std::size_t>(sh.batch * sh.q_heads * sh.q_len * sh.value_dim);
  std::vector<double> a(n), c(n);
  auto av = bhsd(a.data(), sh.batch, sh.q_heads, sh.q_len, sh.value_dim);
  auto cv = bhsd(c.data(), sh.batch, sh.q_heads, sh.q_len, sh.value_dim);
  options o2 = opt;
  o2.lse = nullptr;
  gated_result r;
  r.sa = attention(pol, q, k, v, av, o2, ex);
  std::vector<index_t> id(static_cast<std::size_t>(sh.k_len));
  std::iota(id.begin(), id.end(), index_t{0});
  r.swa = attention(pol, std::vector<std::vector<index_t>>{id}, q, k, v, cv, o2, ex);
  auto at = [](const auto& gv, index_t b, index_t h, index_t i, index_t d) {
    return detail::to_double(gv(gv.extent[0] == 1 ? 0 : b, gv.extent[1] == 1 ? 0 : h, gv.extent[2] == 1 ? 0 : i,
                                gv.extent[3] == 1 ? 0 : d));
  };
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h)
      for (index_t i = 0; i < sh.q_len; ++i)
        for (index_t d = 0; d < sh.value_dim; ++d)
          out(b, h, i, d) = static_cast<std::remove_cv_t<TO>>(at(g1, b, h, i, d) * av(b, h, i, d) +
                                                              at(g2, b, h, i, d) * cv(b, h, i, d));
  return r;
}

}  // namespace attnkit::reference
