// Pure-math parts of observe/: the entropy grouping (split/merge) rule and the
// entropy regularisers' gradients, checked by central finite differences.
//
// Tolerances: merge vs direct float64 entropy 1e-12 (both float64). Finite
// differences with step h = 1e-5 in float64: truncation O(h²·|f'''|) plus rounding
// O(ε/h) ≈ 1e-11, so |analytic − FD| ≤ 1e-7 · (1 + |analytic|).
#include <catch2/catch.hpp>

#include <attnkit/observe/entropy.hpp>
#include <attnkit/observe/regularizer.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

using namespace attnkit;

namespace {
constexpr double inf = std::numeric_limits<double>::infinity();

double direct_entropy(const std::vector<double>& s) {
  double m = -inf;
  for (double x : s) m = std::max(m, x);
  double l = 0;
  for (double x : s) l += std::exp(x - m);
  const double lse = m + std::log(l);
  double H = 0;
  for (double x : s) {
    const double p = std::exp(x - lse);
    if (p > 0) H -= p * std::log(p);
  }
  return H;
}

double lse_of(const std::vector<double>& s) {
  double m = -inf;
  for (double x : s) m = std::max(m, x);
  double l = 0;
  for (double x : s) l += std::exp(x - m);
  return m + std::log(l);
}

std::vector<double> randn(std::size_t n, unsigned seed, double sigma) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd(0.0, sigma);
  std::vector<double> x(n);
  for (auto& e : x) e = nd(g);
  return x;
}

constexpr double fd_h = 1e-5;
bool fd_close(double analytic, double fd) { return std::abs(analytic - fd) <= 1e-7 * (1 + std::abs(analytic)); }
}  // namespace

TEST_CASE("entropy_merge: grouping rule over disjoint key sets equals the unsplit entropy", "[observe][merge]") {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    const double sigma = seed % 4 == 0 ? 30.0 : 2.0;  // also very peaked rows
    const auto s = randn(200 + seed * 7, seed, sigma);
    // Split into 1..5 contiguous groups of random sizes and merge left to right.
    std::mt19937 g(seed);
    const int groups = 1 + static_cast<int>(seed % 5);
    std::vector<std::size_t> cuts{0, s.size()};
    for (int c = 1; c < groups; ++c) cuts.push_back(1 + g() % (s.size() - 1));
    std::sort(cuts.begin(), cuts.end());
    entropy_part acc;
    for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
      std::vector<double> part(s.begin() + static_cast<std::ptrdiff_t>(cuts[c]),
                               s.begin() + static_cast<std::ptrdiff_t>(cuts[c + 1]));
      const entropy_part p = part.empty() ? entropy_part{} : entropy_part{lse_of(part), direct_entropy(part)};
      acc = entropy_merge(acc, p);
    }
    INFO("seed " << seed << " groups " << groups);
    CHECK(acc.lse == Approx(lse_of(s)).epsilon(1e-13));
    CHECK(std::abs(acc.entropy - direct_entropy(s)) <= 1e-12 * (1 + direct_entropy(s)));
  }
  // Empty parts are neutral; two empty parts stay empty.
  const entropy_part e{};
  const entropy_part x{1.25, 0.5};
  CHECK(entropy_merge(e, x).entropy == 0.5);
  CHECK(entropy_merge(x, e).lse == 1.25);
  CHECK(std::isnan(entropy_merge(e, e).entropy));
  CHECK(entropy_merge(e, e).lse == -inf);
  // Two one-key parts of equal logit: H = log 2.
  CHECK(entropy_merge({0.0, 0.0}, {0.0, 0.0}).entropy == Approx(std::log(2.0)));
  // Order does not matter.
  const entropy_part y{-3.0, 2.0};
  CHECK(entropy_merge(x, y).entropy == Approx(entropy_merge(y, x).entropy).epsilon(1e-15));
}

TEST_CASE("softmax_row_entropy: value, ∂H/∂s = −p(s − s̄), masks, float and double", "[observe][regularizer]") {
  auto s = randn(37, 5, 1.7);
  s[4] = -inf;  // a masked logit
  std::vector<bool> mv(s.size(), true);
  mv[9] = mv[10] = false;
  bool mask[37];
  std::copy(mv.begin(), mv.end(), mask);
  std::vector<double> grad(s.size());
  const row_entropy_value v = softmax_row_entropy(s, std::span<const bool>(mask, 37), grad);
  std::vector<double> vis;
  for (std::size_t j = 0; j < s.size(); ++j)
    if (mask[j] && s[j] != -inf) vis.push_back(s[j]);
  CHECK(v.allowed == 34);
  CHECK(v.entropy == Approx(direct_entropy(vis)).epsilon(1e-13));
  CHECK(v.lse == Approx(lse_of(vis)).epsilon(1e-13));
  // Closed form and central differences.
  double sbar = 0;
  for (double x : vis) sbar += std::exp(x - v.lse) * x;
  for (std::size_t j = 0; j < s.size(); ++j) {
    INFO("j " << j);
    if (!mask[j] || s[j] == -inf) {
      CHECK(grad[j] == 0.0);
      continue;
    }
    const double pj = std::exp(s[j] - v.lse);
    CHECK(grad[j] == Approx(-pj * (s[j] - sbar)).margin(1e-14));
    auto sp = s, sm = s;
    sp[j] += fd_h;
    sm[j] -= fd_h;
    const double fd = (softmax_row_entropy(sp, std::span<const bool>(mask, 37)).entropy -
                       softmax_row_entropy(sm, std::span<const bool>(mask, 37)).entropy) / (2 * fd_h);
    CHECK(fd_close(grad[j], fd));
  }
  // float storage: same results to float precision.
  std::vector<float> sf(s.begin(), s.end()), gf(s.size());
  const row_entropy_value vf = softmax_row_entropy(sf, std::span<const bool>(mask, 37), gf);
  CHECK(vf.entropy == Approx(v.entropy).epsilon(1e-6));
  for (std::size_t j = 0; j < s.size(); ++j) CHECK(gf[j] == Approx(grad[j]).margin(1e-6));
  // All masked: NaN, zero gradient.
  std::vector<double> none(5, -inf), g5(5, 7.0);
  const auto e = softmax_row_entropy(none, {}, g5);
  CHECK(std::isnan(e.entropy));
  CHECK(e.allowed == 0);
  CHECK(std::all_of(g5.begin(), g5.end(), [](double x) { return x == 0.0; }));
}

TEST_CASE("mean_entropy_loss (AEM) and negative_entropy_loss (EAR): gradients by finite differences", "[observe][regularizer]") {
  const index_t R = 6, n = 23;
  auto s = randn(static_cast<std::size_t>(R * n), 11, 2.0);
  // Causal-like mask (row i sees keys ≤ 3i), and row 0 fully masked.
  bool mask[R * n];
  for (index_t i = 0; i < R; ++i)
    for (index_t j = 0; j < n; ++j) mask[i * n + j] = i > 0 && j <= 3 * i + 2;
  const double lambda = 0.7;
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<double> grad(s.size());
    auto loss = [&](const std::vector<double>& x, std::vector<double>* g) {
      logit_rows<double> rows{x, n, std::span<const bool>(mask, R * n)};
      if (g) rows.grad = *g;
      return kind == 0 ? mean_entropy_loss(rows, lambda) : negative_entropy_loss(rows, lambda);
    };
    const double L = loss(s, &grad);
    // Value: λ · mean over the 5 non-empty rows.
    double mean = 0;
    for (index_t i = 1; i < R; ++i) {
      std::vector<double> vis;
      for (index_t j = 0; j < n; ++j)
        if (mask[i * n + j]) vis.push_back(s[static_cast<std::size_t>(i * n + j)]);
      mean += direct_entropy(vis) / (R - 1);
    }
    INFO((kind == 0 ? "mean entropy (AEM)" : "negative entropy (EAR)"));
    CHECK(L == Approx((kind == 0 ? 1 : -1) * lambda * mean).epsilon(1e-12));
    for (std::size_t u = 0; u < s.size(); ++u) {
      auto sp = s, sm = s;
      sp[u] += fd_h;
      sm[u] -= fd_h;
      const double fd = (loss(sp, nullptr) - loss(sm, nullptr)) / (2 * fd_h);
      INFO("element " << u);
      CHECK(fd_close(grad[u], fd));
      if (!mask[u]) CHECK(grad[u] == 0.0);
    }
  }
}

TEST_CASE("entropy_band_penalty (Jha & Reagen): value, logit and threshold gradients", "[observe][regularizer]") {
  const index_t R = 5, n = 40;
  // Three heads: sharp, medium, flat logits.
  std::vector<std::vector<double>> s = {randn(R * n, 1, 6.0), randn(R * n, 2, 1.0), randn(R * n, 3, 0.05)};
  std::vector<double> E(3);
  for (int h = 0; h < 3; ++h) {
    double m = 0;
    for (index_t i = 0; i < R; ++i)
      m += direct_entropy(std::vector<double>(s[h].begin() + i * n, s[h].begin() + (i + 1) * n)) / R;
    E[h] = m;
  }
  const double emax = std::log(static_cast<double>(n)), gamma = 0.2, margin = gamma * emax;
  // θ: head 0 far below its entropy, head 1 inside the band, head 2 far above.
  const std::vector<double> theta = {E[0] - 2.0 * margin, E[1] + 0.5 * margin, E[2] + 1.7 * margin};
  for (auto form : {band_config::shape::squared, band_config::shape::hinge}) {
    band_config cfg;
    cfg.lambda = 0.3;
    cfg.gamma = gamma;
    cfg.form = form;
    auto penalty = [&](const std::vector<std::vector<double>>& x, std::vector<std::vector<double>>* g,
                       std::span<const double> th, std::span<double> tg) {
      std::vector<logit_rows<double>> heads;
      for (int h = 0; h < 3; ++h) {
        logit_rows<double> r{x[static_cast<std::size_t>(h)], n};
        if (g) r.grad = (*g)[static_cast<std::size_t>(h)];
        heads.push_back(r);
      }
      return entropy_band_penalty(heads, th, cfg, tg);
    };
    std::vector<std::vector<double>> grad(3, std::vector<double>(R * n));
    std::vector<double> tgrad(3);
    const double P = penalty(s, &grad, theta, tgrad);
    // Expected value.
    double expect = 0;
    for (int h = 0; h < 3; ++h) {
      const double d = E[h] - theta[h];
      if (std::abs(d) > margin) expect += form == band_config::shape::squared ? d * d : std::abs(d) - margin;
    }
    expect *= cfg.lambda / 3;
    INFO((form == band_config::shape::squared ? "squared" : "hinge"));
    CHECK(P == Approx(expect).epsilon(1e-12));
    // Head 1 is inside the band: no penalty, zero gradient.
    CHECK(std::all_of(grad[1].begin(), grad[1].end(), [](double x) { return x == 0.0; }));
    CHECK(tgrad[1] == 0.0);
    for (int h = 0; h < 3; ++h)
      for (std::size_t u = 0; u < grad[static_cast<std::size_t>(h)].size(); u += 3) {
        auto sp = s, sm = s;
        sp[static_cast<std::size_t>(h)][u] += fd_h;
        sm[static_cast<std::size_t>(h)][u] -= fd_h;
        const double fd = (penalty(sp, nullptr, theta, {}) - penalty(sm, nullptr, theta, {})) / (2 * fd_h);
        INFO("head " << h << " element " << u);
        CHECK(fd_close(grad[static_cast<std::size_t>(h)][u], fd));
      }
    for (int h = 0; h < 3; ++h) {
      auto tp = theta, tm = theta;
      tp[static_cast<std::size_t>(h)] += fd_h;
      tm[static_cast<std::size_t>(h)] -= fd_h;
      const double fd = (penalty(s, nullptr, tp, {}) - penalty(s, nullptr, tm, {})) / (2 * fd_h);
      INFO("theta " << h);
      CHECK(fd_close(tgrad[static_cast<std::size_t>(h)], fd));
    }
  }
}
