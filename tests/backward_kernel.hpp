#pragma once
// Kernel-vs-oracle harness of the backward tests (tests/test_backward_*.cpp): the
// forward kernel gives out and lse, attnkit::attention_backward<Arch> the gradients,
// reference::attention_backward (float64, fed the same out and lse, which it only
// validates) the exact ones.
//
// Tolerance (stated once, never loosened): per tensor (dq, dk, dv, d sinks, d bias)
//   max |kernel − oracle| ≤ 1e-4 · max |oracle|.
// Gradient views are pre-filled with NaN, so an element the kernel does not write
// shows up as a NaN mismatch.
#include <catch2/catch.hpp>

#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support.hpp"

namespace bwdk {

using namespace attnkit;

constexpr double tol = 1e-4;
constexpr float fnan = std::numeric_limits<float>::quiet_NaN();

enum class layout { bhsd, bshd };

/// A backward problem: q, k, v, dout (normal, stored BHSD or BSHD) and sinks.
struct problem {
  index_t B, Hq, Hkv, Lq, Lk, D, Dv;
  layout lay;
  std::vector<float> q, k, v, dout, sinks;
  problem(index_t B_, index_t Hq_, index_t Hkv_, index_t Lq_, index_t Lk_, index_t D_, index_t Dv_, std::uint32_t seed,
          layout l = layout::bhsd, float sigma = 1.0f)
      : B(B_), Hq(Hq_), Hkv(Hkv_), Lq(Lq_), Lk(Lk_), D(D_), Dv(Dv_), lay(l),
        q(attnkit_test::randn(static_cast<std::size_t>(B * Hq * Lq * D), seed, sigma)),
        k(attnkit_test::randn(static_cast<std::size_t>(B * Hkv * Lk * D), seed + 1, sigma)),
        v(attnkit_test::randn(static_cast<std::size_t>(B * Hkv * Lk * Dv), seed + 2)),
        dout(attnkit_test::randn(static_cast<std::size_t>(B * Hq * Lq * Dv), seed + 3)),
        sinks(attnkit_test::randn(static_cast<std::size_t>(Hq), seed + 4)) {}
  template <class T>
  tensor_view<T> view(T* p, index_t h, index_t s, index_t d) const {
    return lay == layout::bhsd ? bhsd(p, B, h, s, d) : bshd(p, B, s, h, d);
  }
  std::size_t out_size() const { return static_cast<std::size_t>(B * Hq * Lq * Dv); }
};

inline std::string describe(const problem& p) {
  return "B=" + std::to_string(p.B) + " Hq=" + std::to_string(p.Hq) + " Hkv=" + std::to_string(p.Hkv) +
         " Lq=" + std::to_string(p.Lq) + " Lk=" + std::to_string(p.Lk) + " D=" + std::to_string(p.D) +
         " Dv=" + std::to_string(p.Dv) + (p.lay == layout::bshd ? " BSHD" : " BHSD");
}

/// Errors of one call (relative to max |oracle| per tensor), and the kernel's gradients.
struct result {
  double dq = 0, dk = 0, dv = 0, dsinks = 0, dbias = 0;
  bool nan_mismatch = false;
  std::vector<float> gq, gk, gv, gsinks, gbias;
  bool ok() const { return dq <= tol && dk <= tol && dv <= tol && dsinks <= tol && dbias <= tol && !nan_mismatch; }
};

/// max |a − r| / max |r| (0 when both are all zero); NaN placement must agree.
template <class R>
double rel_error(const std::vector<float>& a, const std::vector<R>& r, bool& nan_mismatch) {
  double scale = 0, err = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = static_cast<double>(r[i]);
    if (std::isnan(x) != std::isnan(a[i])) nan_mismatch = true;
    if (!std::isnan(x)) scale = std::max(scale, std::abs(x));
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = static_cast<double>(r[i]);
    if (std::isnan(x) || std::isnan(a[i])) continue;
    const double e = std::abs(a[i] - x);
    err = std::max(err, scale > 0 ? e / scale : e);
  }
  return err;
}

/// Where out and lse come from: the forward kernel (the pipeline a user runs), or the
/// forward oracle rounded to float (keeps the tests that cover variants from
/// compiling a forward kernel per variant; the backward kernel sees the same call).
enum class forward { kernel, oracle };

/// Forward, backward kernel and oracle on `p` with options `opt`: d sinks when
/// options.sinks is set, d bias when options.bias is set. K/V are stored as KV.
template <class Arch, class P, class KV = float, forward Fwd = forward::kernel>
result compare(const P& pol, const problem& p, options opt, backward_options bo = {}) {
  // KV(x) would aggregate-initialise a 16-bit type's raw bits from x (C++20
  // parenthesised aggregates; GCC accepts it): convert through from_float.
  auto to_kv = [](float x) {
    if constexpr (std::is_same_v<KV, float>)
      return x;
    else
      return KV::from_float(x);
  };
  std::vector<KV> k16(p.k.size()), v16(p.v.size());
  for (std::size_t i = 0; i < p.k.size(); ++i) k16[i] = to_kv(p.k[i]);
  for (std::size_t i = 0; i < p.v.size(); ++i) v16[i] = to_kv(p.v[i]);
  const auto q = p.view(static_cast<const float*>(p.q.data()), p.Hq, p.Lq, p.D);
  const auto k = p.view(static_cast<const KV*>(k16.data()), p.Hkv, p.Lk, p.D);
  const auto v = p.view(static_cast<const KV*>(v16.data()), p.Hkv, p.Lk, p.Dv);
  const auto dout = p.view(static_cast<const float*>(p.dout.data()), p.Hq, p.Lq, p.Dv);
  std::vector<float> out(p.out_size()), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
  const bool normalized = softmax_normalized<P>();
  opt.lse = normalized ? lse.data() : nullptr;
  if constexpr (Fwd == forward::kernel) {
    attention<Arch>(pol, q, k, v, p.view(out.data(), p.Hq, p.Lq, p.Dv), opt);
  } else {
    std::vector<double> o64(out.size());
    options o = opt;
    o.lse = nullptr;
    const auto r = reference::attention(pol, q, k, v, p.view(o64.data(), p.Hq, p.Lq, p.Dv), o);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(o64[i]);
    if (normalized)
      for (std::size_t i = 0; i < lse.size(); ++i) lse[i] = static_cast<float>(r.lse[i]);
  }
  const auto o = p.view(static_cast<const float*>(out.data()), p.Hq, p.Lq, p.Dv);

  result res;
  res.gq.assign(p.q.size(), fnan), res.gk.assign(p.k.size(), fnan), res.gv.assign(p.v.size(), fnan);
  std::size_t nbias = 1;
  for (index_t e : opt.bias.extent) nbias *= static_cast<std::size_t>(e);
  if (!opt.sinks.empty()) res.gsinks.assign(opt.sinks.size(), fnan), bo.dsinks = res.gsinks.data();
  if (opt.bias.data) {
    const auto& e = opt.bias.extent;
    res.gbias.assign(nbias, fnan);
    bo.dbias = bhsd(res.gbias.data(), e[0], e[1], e[2], e[3]);
  }
  attention_backward<Arch>(pol, q, k, v, o, opt.lse, dout, p.view(res.gq.data(), p.Hq, p.Lq, p.D),
                           p.view(res.gk.data(), p.Hkv, p.Lk, p.D), p.view(res.gv.data(), p.Hkv, p.Lk, p.Dv), opt, bo);

  std::vector<double> rq(p.q.size()), rk(p.k.size()), rv(p.v.size());
  backward_options ro;
  ro.reg = bo.reg;
  const auto ref = reference::attention_backward(pol, q, k, v, o, opt.lse, dout, p.view(rq.data(), p.Hq, p.Lq, p.D),
                                                 p.view(rk.data(), p.Hkv, p.Lk, p.D),
                                                 p.view(rv.data(), p.Hkv, p.Lk, p.Dv), opt, ro);
  res.dq = rel_error(res.gq, rq, res.nan_mismatch);
  res.dk = rel_error(res.gk, rk, res.nan_mismatch);
  res.dv = rel_error(res.gv, rv, res.nan_mismatch);
  if (!res.gsinks.empty()) res.dsinks = rel_error(res.gsinks, ref.dsinks, res.nan_mismatch);
  if (!res.gbias.empty()) res.dbias = rel_error(res.gbias, ref.dbias, res.nan_mismatch);
  return res;
}

/// compare() with out and lse from the forward oracle.
template <class Arch, class P>
result compare_o(const P& pol, const problem& p, const options& opt, const backward_options& bo = {}) {
  return compare<Arch, P, float, forward::oracle>(pol, p, opt, bo);
}

/// CHECKs every error of `r` against the tolerance, with context.
inline void check(const result& r, const std::string& what) {
  INFO(what);
  INFO("errors: dq " << r.dq << " dk " << r.dk << " dv " << r.dv << " dsinks " << r.dsinks << " dbias " << r.dbias
                     << (r.nan_mismatch ? " NaN MISMATCH" : ""));
  CHECK(r.ok());
}

}  // namespace bwdk
