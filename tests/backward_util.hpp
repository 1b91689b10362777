#pragma once
// The finite-difference harness of the backward-oracle tests
// (tests/test_reference_backward*.cpp): every gradient of
// reference::attention_backward against central differences of the float64
// FORWARD oracle, for the scalar loss L = Σ dout·out (+ λR with a regulariser).
//
// Tolerance (stated once, never loosened): step h = 2^-17 ≈ 7.6e-6 (exact in float
// for the quantised bias / sink values), float64 throughout. Truncation error
// h²/6·|L'''| ≈ 1e-11·|L'''| and rounding ε·|L|/h ≈ 3e-11·|L| are far below
//   |analytic − FD| ≤ 1e-7 · (1 + |analytic|)   per element.
#include <catch2/catch.hpp>

#include <attnkit/reference/reference.hpp>

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "reference_util.hpp"

namespace bwdtest {

using namespace attnkit;

constexpr double fd_step = 0x1p-17;
constexpr double fd_tol = 1e-7;
constexpr double nan = std::numeric_limits<double>::quiet_NaN();

enum class layout { bhsd, bshd };

/// A 4-D double tensor in logical [b, h, s, d] order, stored BHSD or BSHD.
struct tensor4 {
  std::array<index_t, 4> e{};
  layout lay = layout::bhsd;
  std::vector<double> x;
  tensor4() = default;
  tensor4(std::array<index_t, 4> ext, layout l, std::uint64_t seed, double scale)
      : e(ext), lay(l), x(seed ? reftest::data(static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3]), seed, scale)
                               : std::vector<double>(static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3]), 0.0)) {}
  template <class T>
  tensor_view<T> view_of(T* p) const {
    return lay == layout::bhsd ? bhsd(p, e[0], e[1], e[2], e[3]) : bshd(p, e[0], e[2], e[1], e[3]);
  }
  tensor_view<double> view() { return view_of(x.data()); }
  tensor_view<const double> cview() const { return view_of(x.data()); }
  /// Offset of logical element (b, h, s, d) in x.
  std::size_t at(index_t b, index_t h, index_t s, index_t d) const {
    const auto v = view_of(x.data());
    return static_cast<std::size_t>(&v(b, h, s, d) - x.data());
  }
};

/// Values quantised to multiples of 2^-10 (so that x ± fd_step is exact in float).
inline std::vector<float> quantised(std::size_t n, std::uint64_t seed, double scale) {
  std::vector<float> f(n);
  const auto d = reftest::data(n, seed, scale);
  for (std::size_t i = 0; i < n; ++i) f[i] = static_cast<float>(std::round(d[i] * 1024.0) / 1024.0);
  return f;
}

/// One backward problem: q, k, v, dout and the float parameters options may point to.
struct problem {
  index_t B, Hq, Hkv, Lq, Lk, D, Dv;
  layout lay;
  tensor4 q, k, v, dout;
  std::vector<float> sinks, alibi;
  problem(index_t B_, index_t Hq_, index_t Hkv_, index_t Lq_, index_t Lk_, index_t D_, index_t Dv_,
          std::uint64_t seed, layout l = layout::bhsd, double qk_scale = 1.0)
      : B(B_), Hq(Hq_), Hkv(Hkv_), Lq(Lq_), Lk(Lk_), D(D_), Dv(Dv_), lay(l),
        q({B_, Hq_, Lq_, D_}, l, seed, qk_scale), k({B_, Hkv_, Lk_, D_}, l, seed + 1, qk_scale),
        v({B_, Hkv_, Lk_, Dv_}, l, seed + 2, 1.0), dout({B_, Hq_, Lq_, Dv_}, l, seed + 3, 1.0),
        sinks(quantised(static_cast<std::size_t>(Hq_), seed + 4, 1.0)), alibi(static_cast<std::size_t>(Hq_)) {
    for (index_t h = 0; h < Hq; ++h) alibi[static_cast<std::size_t>(h)] = std::ldexp(1.0f, -static_cast<int>(h + 1));
  }
  tensor4 like_out() const { return tensor4({B, Hq, Lq, Dv}, lay, 0, 0); }
};

/// A bias [eb, eh, eq, Lk] (each 1 or the full extent) of quantised floats.
struct bias_buffer {
  std::array<index_t, 4> e{};
  std::vector<float> x;
  bias_buffer(std::array<index_t, 4> ext, std::uint64_t seed, double scale)
      : e(ext), x(quantised(static_cast<std::size_t>(ext[0] * ext[1] * ext[2] * ext[3]), seed, scale)) {}
  bias_view view() const { return bhsd(static_cast<const float*>(x.data()), e[0], e[1], e[2], e[3]); }
};

/// Σ dout·out over the finite outputs (a NaN output is a masked row's constant).
inline double dot_loss(const tensor4& dout, const tensor4& out) {
  double L = 0;
  for (std::size_t x = 0; x < out.x.size(); ++x)
    if (std::isfinite(out.x[x])) L += dout.x[x] * out.x[x];
  return L;
}

/// The forward loss and the backward of one policy on a problem.
template <class P>
struct runner {
  P pol;
  regularizer reg{};
  /// L = Σ dout·out (+ λR).
  double loss(const problem& p, const options& opt) const {
    tensor4 out = p.like_out();
    options o = opt;
    o.lse = nullptr;
    reference::attention(pol, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), o);
    double L = dot_loss(p.dout, out);
    if constexpr (softmax_normalized<P>())
      if (reg.active()) L += reference::regularizer_value(pol, p.q.cview(), p.k.cview(), o, reg);
    return L;
  }
  /// Runs the forward (for out and lse) and the backward into dq, dk, dv.
  reference::backward_result backward(const problem& p, const options& opt, backward_options bo, tensor4& dq,
                                      tensor4& dk, tensor4& dv, std::vector<float>* lse_out = nullptr) const {
    tensor4 out = p.like_out();
    std::vector<float> lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq), 0.0f);
    options o = opt;
    o.lse = softmax_normalized<P>() ? lse.data() : nullptr;
    reference::attention(pol, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), o);
    bo.reg = reg;
    auto r = reference::attention_backward(pol, p.q.cview(), p.k.cview(), p.v.cview(),
                                           static_cast<tensor_view<const double>>(out.view()), o.lse,
                                           p.dout.cview(), dq.view(), dk.view(), dv.view(), o, bo);
    if (lse_out) *lse_out = lse;
    return r;
  }
};
template <class P>
runner<P> run(P pol, regularizer reg = {}) {
  return runner<P>{pol, reg};
}

/// Worst |analytic − FD| / (1 + |analytic|) of one tensor; the first offender is logged.
struct fd_stat {
  double worst = 0;
  std::string where;
  void add(double analytic, double fd, const std::string& name, std::size_t x) {
    const double e = std::abs(analytic - fd) / (1 + std::abs(analytic));
    if (!(e <= worst)) {  // NaN counts as worst
      worst = std::isnan(e) ? std::numeric_limits<double>::infinity() : e;
      where = name + "[" + std::to_string(x) + "]: analytic " + std::to_string(analytic) + " FD " + std::to_string(fd);
    }
  }
};

/// Central difference of loss() in the double/float `x`.
template <class T, class F>
double central(T& x, F&& loss) {
  const T x0 = x;
  x = static_cast<T>(x0 + fd_step);
  const double up = loss();
  x = static_cast<T>(x0 - fd_step);
  const double down = loss();
  x = x0;
  return (up - down) / (2 * fd_step);
}

/// Checks every gradient of the backward of `r` on `p` against finite differences:
/// dq, dk, dv, d sinks (with options.sinks, which must view p.sinks) and d bias
/// (with `bias`, which becomes options.bias). Also: every
/// element written (the NaN pre-fill is gone), float outputs = rounded doubles.
template <class P>
void check_fd(const runner<P>& r, problem& p, options opt, const std::string& what, bias_buffer* bias = nullptr) {
  INFO(what);
  if (bias) opt.bias = bias->view();
  tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  for (auto* t : {&dq, &dk, &dv}) std::fill(t->x.begin(), t->x.end(), nan);
  backward_options bo;
  std::vector<float> dsinks(p.sinks.size(), -1.0f), dbias(bias ? bias->x.size() : 0, -1.0f);
  if (!opt.sinks.empty()) bo.dsinks = dsinks.data();
  if (bias) bo.dbias = bhsd(dbias.data(), bias->e[0], bias->e[1], bias->e[2], bias->e[3]);
  const auto res = r.backward(p, opt, bo, dq, dk, dv);
  for (const auto* t : {&dq, &dk, &dv})
    for (double g : t->x) REQUIRE(std::isfinite(g));

  auto loss = [&] { return r.loss(p, opt); };
  fd_stat sq, sk, sv, ss, sb;
  for (std::size_t x = 0; x < p.q.x.size(); ++x) sq.add(dq.x[x], central(p.q.x[x], loss), "dq", x);
  for (std::size_t x = 0; x < p.k.x.size(); ++x) sk.add(dk.x[x], central(p.k.x[x], loss), "dk", x);
  for (std::size_t x = 0; x < p.v.x.size(); ++x) sv.add(dv.x[x], central(p.v.x[x], loss), "dv", x);
  INFO("worst dq " << sq.worst << " " << sq.where);
  INFO("worst dk " << sk.worst << " " << sk.where);
  INFO("worst dv " << sv.worst << " " << sv.where);
  CHECK(sq.worst <= fd_tol);
  CHECK(sk.worst <= fd_tol);
  CHECK(sv.worst <= fd_tol);
  if (!opt.sinks.empty()) {
    REQUIRE(res.dsinks.size() == p.sinks.size());
    for (std::size_t h = 0; h < p.sinks.size(); ++h) {
      ss.add(res.dsinks[h], central(p.sinks[h], loss), "dsinks", h);
      CHECK(dsinks[h] == static_cast<float>(res.dsinks[h]));
    }
    INFO("worst dsinks " << ss.worst << " " << ss.where);
    CHECK(ss.worst <= fd_tol);
  } else {
    CHECK(res.dsinks.empty());
  }
  if (bias) {
    REQUIRE(res.dbias.size() == bias->x.size());
    for (std::size_t x = 0; x < bias->x.size(); ++x) {
      sb.add(res.dbias[x], central(bias->x[x], loss), "dbias", x);
      CHECK(dbias[x] == static_cast<float>(res.dbias[x]));
    }
    INFO("worst dbias " << sb.worst << " " << sb.where);
    CHECK(sb.worst <= fd_tol);
  }
}

/// Gradient rows the options hide must be exactly 0: dq of a row with no visible
/// key, dk and dv of a key that no query of its group sees (visibility from the
/// forward oracle's materialised logits). Returns how many zero rows were checked.
template <class P>
index_t check_hidden_zero(const runner<P>& r, const problem& p, options opt, bias_buffer* bias = nullptr) {
  if (bias) opt.bias = bias->view();
  tensor4 out = p.like_out(), dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  reference::extras ex;
  ex.keep_weights = true;
  const auto fwd = reference::attention(r.pol, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), opt, ex);
  for (auto* t : {&dq, &dk, &dv}) std::fill(t->x.begin(), t->x.end(), nan);
  r.backward(p, opt, {}, dq, dk, dv);
  index_t checked = 0;
  const index_t G = p.Hq / p.Hkv;
  for (index_t b = 0; b < p.B; ++b) {
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < p.Lq; ++i)
        if (fwd.allowed[static_cast<std::size_t>(fwd.row(b, h, i))] == 0) {
          ++checked;
          for (index_t d = 0; d < p.D; ++d) CHECK(dq.x[dq.at(b, h, i, d)] == 0.0);
        }
    for (index_t g = 0; g < p.Hkv; ++g)
      for (index_t j = 0; j < p.Lk; ++j) {
        bool seen = false;
        for (index_t h = g * G; h < (g + 1) * G && !seen; ++h)
          for (index_t i = 0; i < p.Lq && !seen; ++i)
            seen = std::isfinite(fwd.logits[static_cast<std::size_t>(fwd.element(b, h, i, j))]);
        if (seen) continue;
        ++checked;
        for (index_t d = 0; d < p.D; ++d) CHECK(dk.x[dk.at(b, g, j, d)] == 0.0);
        for (index_t d = 0; d < p.Dv; ++d) CHECK(dv.x[dv.at(b, g, j, d)] == 0.0);
      }
  }
  return checked;
}

}  // namespace bwdtest
