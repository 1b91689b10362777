#pragma once
// Numerical edge cases run for every variant (issue #7): fully-masked rows, logits of
// ±1e4, NaN/Inf in q, k or v reaching only the rows that touch them, a zero-length
// key sequence, N = 1 and D = 1, denormal inputs. The test files instantiate
// `edge_suite` per policy; what each case promises is in README "Guarantees".
#include <catch2/catch.hpp>

#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"

namespace attnkit_test {

/// How a variant's rows depend on each other.
enum class coupling {
  rows,       ///< each output row depends only on its own query and the keys it sees
  call_stats  ///< LLN: α, β and the key max come from statistics of the whole call
};

template <class Arch, class Pol>
std::vector<float> run_kernel(const Pol& pol, const problem& p, const attnkit::options& opt) {
  std::vector<float> out(p.out_size(), -7.0f);
  attnkit::attention<Arch>(pol, p.qv(), p.kv(), p.vv(), p.ov(out), opt);
  return out;
}

template <class Pol>
std::vector<double> run_oracle(const Pol& pol, const problem& p, const attnkit::options& opt) {
  std::vector<double> ref(p.out_size());
  attnkit::reference::attention(pol, p.qv(), p.kv(), p.vv(), attnkit::bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), opt);
  return ref;
}

/// Whether output row r (over Dv values) holds any NaN.
inline bool row_has_nan(const std::vector<float>& o, std::size_t r, attnkit::index_t Dv) {
  for (attnkit::index_t d = 0; d < Dv; ++d)
    if (std::isnan(o[r * static_cast<std::size_t>(Dv) + static_cast<std::size_t>(d)])) return true;
  return false;
}
inline bool row_has_nan(const std::vector<double>& o, std::size_t r, attnkit::index_t Dv) {
  for (attnkit::index_t d = 0; d < Dv; ++d)
    if (std::isnan(o[r * static_cast<std::size_t>(Dv) + static_cast<std::size_t>(d)])) return true;
  return false;
}

/// Poisons one element of q, k or v with `bad` and checks, against the float64 oracle
/// on the same poisoned input: the kernel's NaN rows are exactly the oracle's; every
/// other value matches the oracle (2e-5 · max|oracle|, ±Inf exactly); and rows that
/// cannot see the element (the rows a NaN there would reach, per the oracle) are
/// unchanged from the clean run.
template <class Arch, class Pol>
void check_poison(const Pol& pol, const problem& clean, const attnkit::options& opt, char tensor, float bad,
                  coupling cp) {
  constexpr double tol = 2e-5;
  // Element: batch 0, kv head 0 / query head 1, position 9, dim 3 (inside the first key tile).
  const attnkit::index_t pos = 9;
  auto poison = [&](problem& p, float x) {
    if (tensor == 'q') p.q[static_cast<std::size_t>(((0 * p.Hq + 1) * p.Lq + pos) * p.D + 3)] = x;
    if (tensor == 'k') p.k[static_cast<std::size_t>((0 * p.Lk + pos) * p.D + 3)] = x;
    if (tensor == 'v') p.v[static_cast<std::size_t>((0 * p.Lk + pos) * p.Dv + 3)] = x;
  };
  problem p = clean;
  poison(p, bad);
  INFO("poisoned " << tensor << " with " << bad);
  const auto out = run_kernel<Arch>(pol, p, opt);
  const attnkit::index_t Dv = p.Dv;
  const std::size_t rows = out.size() / static_cast<std::size_t>(Dv);
  std::size_t nan_rows = 0;
  for (std::size_t r = 0; r < rows; ++r) nan_rows += row_has_nan(out, r, Dv);
  if (cp == coupling::call_stats && tensor != 'v') {
    // LLN: a non-finite q or k enters the call's moment statistics (and k the key max),
    // which every row uses: all rows are NaN. A NaN is never silently dropped.
    if (std::isnan(bad)) CHECK(nan_rows == rows);
    return;
  }
  const auto ref = run_oracle(pol, p, opt);
  problem pn = clean;  // which rows can see the element: those a NaN there reaches
  poison(pn, std::numeric_limits<float>::quiet_NaN());
  const auto reach = run_oracle(pol, pn, opt);
  const auto base = run_kernel<Arch>(pol, clean, opt);

  std::size_t nan_mismatch = 0, inf_mismatch = 0, reached = 0, changed = 0;
  double err = 0, scale = 1e-30;
  for (double x : ref)
    if (std::isfinite(x)) scale = std::max(scale, std::abs(x));
  for (std::size_t r = 0; r < rows; ++r) {
    nan_mismatch += row_has_nan(out, r, Dv) != row_has_nan(ref, r, Dv);
    const bool sees = row_has_nan(reach, r, Dv);
    reached += sees;
    for (attnkit::index_t d = 0; d < Dv; ++d) {
      const std::size_t x = r * static_cast<std::size_t>(Dv) + static_cast<std::size_t>(d);
      if (std::isinf(ref[x]))
        inf_mismatch += static_cast<double>(out[x]) != ref[x];
      else if (!std::isnan(ref[x]))
        err = std::max(err, std::abs(out[x] - ref[x]) / scale);
      if (!sees) changed += std::memcmp(&out[x], &base[x], sizeof(float)) != 0 &&
                            std::abs(out[x] - base[x]) > tol * scale;
    }
  }
  CHECK(nan_mismatch == 0);
  CHECK(inf_mismatch == 0);
  CHECK(err <= tol);
  CHECK(changed == 0);
  CHECK(reached > 0);
  CHECK(reached < rows);  // the element is not visible to every row
  if (std::isnan(bad)) CHECK(nan_rows == reached);
}

/// The whole suite for one policy. `self_only`: the variant needs Lq = Lk.
/// `selects_by_logit` (top_k): subnormal q and k are skipped, since their logits
/// underflow to exact ties in float32 while float64 still orders them, so the two
/// legitimately keep different keys.
template <class Arch, class Pol>
void edge_suite(const Pol& pol, coupling cp, bool self_only = false, bool selects_by_logit = false) {
  using attnkit::index_t;
  constexpr double tol = 2e-5;
  const index_t L = 70;  // crosses a 64-key tile
  const problem base(2, 2, 1, L, L, 16, 12, 7);

  SECTION("fully-masked rows are 0 (masked_rows::zero)") {
    attnkit::options opt;
    const std::vector<std::int64_t> lens{L, 0};  // batch 1 has no keys at all
    opt.key_lengths = lens;
    const auto out = run_kernel<Arch>(pol, base, opt);
    const auto ref = run_oracle(pol, base, opt);
    const std::size_t half = out.size() / 2;
    std::size_t nonzero = 0;
    for (std::size_t x = half; x < out.size(); ++x) nonzero += out[x] != 0.0f;
    CHECK(nonzero == 0);
    double e = 0;
    for (std::size_t x = 0; x < half; ++x) e = std::max(e, std::abs(out[x] - ref[x]));
    CHECK(e <= tol * std::max(1e-30, max_abs(out)));
  }
  SECTION("logits of ±1e4 stay finite") {
    problem huge = base;
    for (auto& x : huge.q) x *= 100.0f;  // |τ q·k| up to ~1e4 (τ = 1/4, D = 16)
    for (auto& x : huge.k) x *= 100.0f;
    for (attnkit::causal c : {attnkit::causal::none, attnkit::causal::top_left}) {
      attnkit::options opt;
      opt.causal = c;
      const auto out = run_kernel<Arch>(pol, huge, opt);
      std::size_t bad = 0;
      for (float x : out) bad += !std::isfinite(x);
      CHECK(bad == 0);
    }
  }
  SECTION("NaN and Inf reach only the rows that touch them") {
    attnkit::options opt;
    opt.causal = attnkit::causal::top_left;  // rows before position 9 never see key 9
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    for (char t : {'q', 'k', 'v'}) {
      check_poison<Arch>(pol, base, opt, t, nan, cp);
      check_poison<Arch>(pol, base, opt, t, inf, cp);
      check_poison<Arch>(pol, base, opt, t, -inf, cp);
    }
    // A NaN with a payload (not the default quiet NaN) behaves the same.
    float payload_nan;
    const std::uint32_t bits = 0x7fc01234u;
    std::memcpy(&payload_nan, &bits, sizeof bits);
    check_poison<Arch>(pol, base, opt, 'q', payload_nan, cp);
    check_poison<Arch>(pol, base, opt, 'k', payload_nan, cp);
  }
  SECTION("zero-length key sequence") {
    const problem p(1, 2, 1, self_only ? 0 : 5, 0, 16, 12, 3);
    std::vector<float> out(p.out_size(), -7.0f);
    attnkit::attention<Arch>(pol, p.qv(), p.kv(), p.vv(), p.ov(out));
    std::size_t nonzero = 0;
    for (float x : out) nonzero += x != 0.0f;
    CHECK(nonzero == 0);
  }
  SECTION("N = 1 and D = 1") {
    for (index_t D : {index_t{1}, index_t{5}}) {
      const problem p(1, 2, 1, 1, 1, D, D, 11);
      const auto out = run_kernel<Arch>(pol, p, {});
      const auto ref = run_oracle(pol, p, {});
      double e = 0;
      for (std::size_t x = 0; x < out.size(); ++x) e = std::max(e, std::abs(out[x] - ref[x]));
      CHECK(e <= tol * std::max(1e-30, max_abs(out)));
    }
    const problem d1(1, 2, 2, 37, 37, 1, 1, 12);  // D = 1 over several rows
    const auto out = run_kernel<Arch>(pol, d1, {});
    const auto ref = run_oracle(pol, d1, {});
    double e = 0, m = 1e-30;
    for (std::size_t x = 0; x < out.size(); ++x) {
      e = std::max(e, std::abs(out[x] - ref[x]));
      m = std::max(m, std::abs(ref[x]));
    }
    CHECK(e <= tol * m);
  }
  SECTION("denormal inputs") {
    problem p = base;
    for (auto& x : p.q) x *= 1e-39f;  // subnormal floats (min normal is 1.18e-38)
    for (auto& x : p.k) x *= 1e-39f;
    problem pv = base;
    for (auto& x : pv.v) x *= 1e-39f;
    for (const problem* pp : {&p, &pv}) {
      if (selects_by_logit && pp == &p) continue;
      const auto out = run_kernel<Arch>(pol, *pp, {});
      const auto ref = run_oracle(pol, *pp, {});
      double e = 0, m = 1e-300;
      std::size_t bad = 0;
      for (std::size_t x = 0; x < out.size(); ++x) {
        bad += !std::isfinite(out[x]);
        e = std::max(e, std::abs(out[x] - ref[x]));
        m = std::max(m, std::abs(ref[x]));
      }
      CHECK(bad == 0);
      // Subnormal V: products keep fewer significant bits, so the error is measured
      // against the smallest normal float as well as the output's scale.
      CHECK(e <= tol * std::max(m, 1.2e-38));
    }
  }
}

}  // namespace attnkit_test
