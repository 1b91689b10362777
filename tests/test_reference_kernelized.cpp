// The float64 reference oracle: sigmoid, linear (feature maps, causal, decay,
// recurrent form) and log-normal attention. Tolerances: 1e-12 absolute unless stated.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "reference_util.hpp"

using namespace attnkit;
using reftest::tensor;

namespace {
constexpr double tol = 1e-12;

tensor slice_keys(const tensor& t, index_t j0, index_t n) {
  tensor r(t.B, t.H, n, t.D);
  for (index_t b = 0; b < t.B; ++b)
    for (index_t h = 0; h < t.H; ++h)
      for (index_t j = 0; j < n; ++j)
        for (index_t d = 0; d < t.D; ++d) r(b, h, j, d) = t.at(b, h, j0 + j, d);
  return r;
}
}  // namespace

TEST_CASE("reference sigmoid: by hand, and key halves add", "[reference][sigmoid]") {
  tensor q(1, 1, 1, 1), k(1, 1, 2, 1), v(1, 1, 2, 1), o(1, 1, 1, 1);
  q.x = {1.0};
  k.x = {0.0, 2.0};
  v.x = {1.0, 3.0};
  options opt;
  opt.scale = 1.0;
  auto sg = [](double x) { return 1 / (1 + std::exp(-x)); };
  const auto r = reference::attention(sigmoid{.bias = -0.5f}, q.cv(), k.cv(), v.cv(), o.v(), opt);
  CHECK(o.x[0] == Approx(sg(-0.5) + 3 * sg(1.5)).margin(tol));
  CHECK(r.mass[0] == Approx(sg(-0.5) + sg(1.5)).margin(tol));
  CHECK(r.first_prob[0] == Approx(sg(-0.5) / (sg(-0.5) + sg(1.5))).margin(tol));
  CHECK(r.lse.empty());
  // Default bias −ln(Lk).
  reference::attention(sigmoid{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
  CHECK(o.x[0] == Approx(sg(-std::log(2.0)) + 3 * sg(2 - std::log(2.0))).margin(tol));

  tensor Q(2, 2, 3, 4, 1), K(2, 2, 10, 4, 2), V(2, 2, 10, 3, 3), O(2, 2, 3, 3), O1(2, 2, 3, 3), O2(2, 2, 3, 3);
  const sigmoid pol{.bias = -2.0f};
  reference::attention(pol, Q.cv(), K.cv(), V.cv(), O.v());
  const tensor K1 = slice_keys(K, 0, 4), V1 = slice_keys(V, 0, 4), K2 = slice_keys(K, 4, 6), V2 = slice_keys(V, 4, 6);
  reference::attention(pol, Q.cv(), K1.cv(), V1.cv(), O1.v());
  reference::attention(pol, Q.cv(), K2.cv(), V2.cv(), O2.v());
  for (std::size_t x = 0; x < O.x.size(); ++x) CHECK(O1.x[x] + O2.x[x] == Approx(O.x[x]).margin(tol));
}

TEST_CASE("reference linear: elu+1 by hand", "[reference][linear]") {
  tensor q(1, 1, 1, 2), k(1, 1, 2, 2), v(1, 1, 2, 1), o(1, 1, 1, 1);
  q.x = {0.5, -1.0};
  k.x = {1.0, 0.0, -2.0, 2.0};
  v.x = {2.0, -4.0};
  const auto pol = linear{feature::elu_plus_one{}};
  static_assert(std::is_same_v<decltype(pol), const linear<feature::elu_plus_one>>);
  const auto r = reference::attention(pol, q.cv(), k.cv(), v.cv(), o.v());
  const double fq[2] = {1.5, std::exp(-1.0)}, f0[2] = {2.0, 1.0}, f1[2] = {std::exp(-2.0), 3.0};
  const double w0 = fq[0] * f0[0] + fq[1] * f0[1], w1 = fq[0] * f1[0] + fq[1] * f1[1];
  CHECK(o.x[0] == Approx((2 * w0 - 4 * w1) / (w0 + w1 + 1e-6)).margin(tol));
  CHECK(r.mass[0] == Approx(w0 + w1).margin(tol));
  CHECK(r.allowed[0] == 2);
}

TEST_CASE("reference linear: causal invariants and the recurrent form", "[reference][linear]") {
  const index_t L = 7;
  tensor q(2, 2, L, 3, 11), k(2, 2, L, 3, 12), v(2, 2, L, 2, 13), oc(2, 2, L, 2), on(2, 2, L, 2), orr(2, 2, L, 2);
  options causal_opt;
  causal_opt.causal = causal::top_left;
  SECTION("non-causal output = causal output of the last row") {
    const auto pol = linear{feature::elu_plus_one{}};
    reference::attention(pol, q.cv(), k.cv(), v.cv(), oc.v(), causal_opt);
    reference::attention(pol, q.cv(), k.cv(), v.cv(), on.v());
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 2; ++h)
        for (index_t d = 0; d < 2; ++d) CHECK(on.at(b, h, L - 1, d) == Approx(oc.at(b, h, L - 1, d)).margin(tol));
  }
  SECTION("recurrent formula equals the materialised causal form (with decay, unnormalised too)") {
    const float decay[2] = {0.9f, 0.5f};
    const auto pol = linear{feature::relu{}, 1e-6, true, std::span<const float>(decay)};
    reference::attention(pol, q.cv(), k.cv(), v.cv(), oc.v(), causal_opt);
    reference::linear_recurrent(pol, q.cv(), k.cv(), v.cv(), orr.v(), causal_opt);
    CHECK(reftest::max_diff(oc.x, orr.x) < tol);
    const auto un = linear{feature::elu_plus_one{}, 1e-6, false};
    options br;
    br.causal = causal::bottom_right;
    tensor q2(2, 2, 3, 3, 14), o2(2, 2, 3, 2), o3(2, 2, 3, 2);
    reference::attention(un, q2.cv(), k.cv(), v.cv(), o2.v(), br);
    reference::linear_recurrent(un, q2.cv(), k.cv(), v.cv(), o3.v(), br);
    CHECK(reftest::max_diff(o2.x, o3.x) < tol);
  }
  SECTION("decay by hand: S_i = λ S_{i−1} + φ(k_i) v_iᵀ") {
    tensor q1(1, 1, 2, 1), k1(1, 1, 2, 1), v1(1, 1, 2, 1), o1(1, 1, 2, 1);
    q1.x = {1, 1};
    k1.x = {1, 2};
    v1.x = {3, 5};
    const float lam[1] = {0.5f};
    reference::attention(linear{feature::identity{}, 0.0, false, std::span<const float>(lam)}, q1.cv(), k1.cv(),
                         v1.cv(), o1.v(), causal_opt);
    CHECK(o1.x[0] == Approx(3.0).margin(tol));
    CHECK(o1.x[1] == Approx(0.5 * 3 + 2 * 5).margin(tol));
  }
  SECTION("decay without causal masking is rejected") {
    const float decay[2] = {0.9f, 0.5f};
    CHECK_THROWS_AS(reference::attention(linear{feature::relu{}, 1e-6, true, std::span<const float>(decay)}, q.cv(),
                                         k.cv(), v.cv(), on.v()),
                    invalid_argument_error);
  }
  SECTION("element-wise options are rejected") {
    options w;
    w.window = {1, 1};
    CHECK_THROWS_AS(reference::attention(linear{feature::relu{}}, q.cv(), k.cv(), v.cv(), on.v(), w),
                    invalid_argument_error);
  }
}

namespace {
/// A user feature map that only works in float (e.g. a learned Hedgehog map).
struct float_only_square {
  index_t output_dim(index_t d) const { return d; }
  void operator()(const float* x, index_t d, const feature::context&, float* out) const {
    for (index_t i = 0; i < d; ++i) out[i] = x[i] * x[i];
  }
};
static_assert(feature::feature_map<float_only_square, float>);
static_assert(!feature::feature_map<float_only_square, double>);
static_assert(feature::feature_map<feature::favor_plus, float> && feature::feature_map<feature::favor_plus, double>);
}  // namespace

TEST_CASE("reference linear: user functor, cosFormer and FAVOR+", "[reference][linear]") {
  SECTION("float-only user map is called through float") {
    tensor q(1, 1, 1, 1), k(1, 1, 2, 1), v(1, 1, 2, 1), o(1, 1, 1, 1);
    q.x = {2};
    k.x = {1, 3};
    v.x = {1, 0};
    reference::attention(linear{float_only_square{}, 0.0}, q.cv(), k.cv(), v.cv(), o.v());
    CHECK(o.x[0] == Approx(4.0 / (4.0 + 36.0)).margin(1e-7));
  }
  SECTION("cosFormer weight = relu(q)·relu(k)·cos(π(p_i − j)/(2M))") {
    tensor q(1, 1, 3, 2, 21, 1.0), k(1, 1, 3, 2, 22), v(1, 1, 3, 1, 23), o(1, 1, 3, 1);
    q.x = {1, 0.5, 0.2, 1, 1, 1};
    k.x = {1, 1, 0.3, 0.1, 2, 0};
    reference::extras ex;
    ex.keep_weights = true;
    const auto r = reference::attention(linear{feature::cosformer{}, 0.0, false}, q.cv(), k.cv(), v.cv(), o.v(), {}, ex);
    for (index_t i = 0; i < 3; ++i)
      for (index_t j = 0; j < 3; ++j) {
        const double dot = q.at(0, 0, i, 0) * k.at(0, 0, j, 0) + q.at(0, 0, i, 1) * k.at(0, 0, j, 1);
        const double want = dot * std::cos(std::numbers::pi * static_cast<double>(i - j) / 6.0);
        CHECK(r.weights[static_cast<std::size_t>(i * 3 + j)] == Approx(want).margin(tol));
      }
  }
  SECTION("FAVOR+ estimates exp(τ q·k): softmax attention within 0.05 for 4096 features") {
    const index_t D = 4, M = 4096;
    const auto W = feature::orthogonal_projection(M, D, 123);
    tensor q(1, 1, 3, D, 31, 0.8), k(1, 1, 6, D, 32, 0.8), v(1, 1, 6, 2, 33), of(1, 1, 3, 2), os(1, 1, 3, 2);
    reference::attention(linear{feature::favor_plus{W.data(), M}, 0.0}, q.cv(), k.cv(), v.cv(), of.v());
    reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), os.v());
    CHECK(reftest::max_diff(of.x, os.x) < 0.05);
  }
}

TEST_CASE("orthogonal_projection: deterministic, orthogonal blocks", "[reference][linear]") {
  const index_t M = 10, D = 4;
  const auto a = feature::orthogonal_projection(M, D, 7), b = feature::orthogonal_projection(M, D, 7),
             c = feature::orthogonal_projection(M, D, 8);
  CHECK(a == b);
  CHECK(a != c);
  for (index_t blk = 0; blk < M; blk += D)
    for (index_t r = blk; r < std::min(M, blk + D); ++r)
      for (index_t s = blk; s < r; ++s) {
        double dot = 0;
        for (index_t d = 0; d < D; ++d) dot += double(a[r * D + d]) * a[s * D + d];
        CHECK(dot == Approx(0.0).margin(1e-5));  // float storage
      }
}

TEST_CASE("reference log-normal: moment matching numbers", "[reference][lln]") {
  const auto c1 = log_normal::moment_match(1.0, 1.0);
  CHECK(c1.alpha == Approx(2.135477234978229).epsilon(1e-14));
  CHECK(c1.beta == Approx(2.135477234978229).epsilon(1e-14));
  const auto c2 = log_normal::moment_match(2.0, 0.5);
  CHECK(c2.alpha == Approx(1.0677386174891146).epsilon(1e-14));
  CHECK(c2.beta == Approx(4.270954469956458).epsilon(1e-14));
  // Sample std (n − 1) of all entries: q = {1,2,3,4} → 1.2909944487358056, k = {0,0,1,5} → 2.3804761428476167.
  tensor q(1, 1, 2, 2), k(1, 1, 2, 2), v(1, 1, 2, 1), o(1, 1, 2, 1);
  q.x = {1, 2, 3, 4};
  k.x = {0, 0, 1, 5};
  const auto c = reference::lln_coefficients_of(log_normal{}, q.cv(), k.cv());
  const auto want = log_normal::moment_match(1.2909944487358056, 2.3804761428476167);
  CHECK(c.alpha == Approx(want.alpha).epsilon(1e-13));
  CHECK(c.beta == Approx(want.beta).epsilon(1e-13));
  const auto given = reference::lln_coefficients_of(log_normal{.alpha = 0.5}, q.cv(), k.cv());
  CHECK(given.alpha == 0.5);
  CHECK(given.beta == Approx(want.beta).epsilon(1e-13));
}

TEST_CASE("reference log-normal: by hand, shifts and diag", "[reference][lln]") {
  tensor q(1, 1, 1, 1), k(1, 1, 2, 1), v(1, 1, 2, 1), o(1, 1, 1, 1);
  q.x = {1.0};
  k.x = {0.0, 1.0};
  v.x = {1.0, 3.0};
  // α = β = 1, D = 1: φq = exp(q − q) = 1, φk = exp(k − 1) → weights e^{-1}, 1.
  const auto r = reference::attention(log_normal{.alpha = 1.0, .beta = 1.0}, q.cv(), k.cv(), v.cv(), o.v());
  const double w0 = std::exp(-1.0), w1 = 1.0;
  CHECK(o.x[0] == Approx((w0 + 3 * w1) / (w0 + w1 + 1e-8)).margin(tol));
  CHECK(r.mass[0] == Approx(w0 + w1).margin(tol));
  SECTION("LLN+Diag averages with block-diagonal softmax (block = D = 1: only key p = i + Δ = 1)") {
    reference::attention(log_normal{.alpha = 1.0, .beta = 1.0, .diag = true}, q.cv(), k.cv(), v.cv(), o.v());
    CHECK(o.x[0] == Approx(0.5 * (w0 + 3 * w1) / (w0 + w1 + 1e-8) + 0.5 * 3.0).margin(tol));
  }
  SECTION("causal LLN equals linear attention with the shifted exp features up to ε") {
    tensor Q(1, 2, 5, 3, 41), K(1, 2, 5, 3, 42), V(1, 2, 5, 2, 43), O(1, 2, 5, 2);
    options opt;
    opt.causal = causal::top_left;
    const auto rr = reference::attention(log_normal{}, Q.cv(), K.cv(), V.cv(), O.v(), opt);
    CHECK(rr.allowed == std::vector<index_t>{1, 2, 3, 4, 5, 1, 2, 3, 4, 5});
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 2; ++d) CHECK(O.at(0, h, 0, d) == Approx(V.at(0, h, 0, d)).margin(1e-6));
  }
}
