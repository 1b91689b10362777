// The float64 backward oracle of the kernelised family: linear attention with every
// built-in feature map (elu+1, relu, identity, FAVOR+, cosFormer) through their
// `vjp`, non-causal and causal (both alignments) with and without decay, normalised
// or not; log-normal attention (LLN, LLN+Diag) with α and β given. Against central
// finite differences of the forward oracle (backward_util.hpp: step 2^-17,
// |analytic − FD| ≤ 1e-7·(1 + |analytic|) per element). Also: each feature map's
// vjp against finite differences of the map itself, and the documented constants
// (moment-matched α, β are held fixed; dropout is refused), and a user's feature
// map with its own vjp.
#include "backward_util.hpp"

using namespace attnkit;
using bwdtest::check_fd;
using bwdtest::layout;
using bwdtest::problem;

namespace {

problem standard(std::uint64_t seed, layout l = layout::bhsd) { return problem(2, 4, 2, 7, 11, 5, 3, seed, l); }

/// A user's feature map, defined here: φ(x) = [softplus(x), softplus(−x)] (2d
/// features), with the vjp the backward needs.
struct softplus_pair {
  index_t output_dim(index_t d) const { return 2 * d; }
  template <class T>
  void operator()(const T* x, index_t d, const feature::context&, T* out) const {
    for (index_t i = 0; i < d; ++i) out[i] = math::softplus(x[i]), out[d + i] = math::softplus(-x[i]);
  }
  template <class T>
  void vjp(const T* x, index_t d, const feature::context&, const T* dphi, T* dx) const {
    for (index_t i = 0; i < d; ++i) dx[i] += dphi[i] * math::sigmoid(x[i]) - dphi[d + i] * math::sigmoid(-x[i]);
  }
};

/// The same map without vjp: usable forward, not differentiable.
struct softplus_pair_forward_only {
  index_t output_dim(index_t d) const { return 2 * d; }
  template <class T>
  void operator()(const T* x, index_t d, const feature::context& c, T* out) const {
    softplus_pair{}(x, d, c, out);
  }
};
static_assert(feature::differentiable<softplus_pair> && feature::feature_map<softplus_pair_forward_only> &&
              !feature::differentiable<softplus_pair_forward_only>);

template <class F>
void linear_cases(const F& phi, bool normalize, std::uint64_t seed) {
  linear<F> pol{phi};
  pol.normalize = normalize;
  const float decay[4] = {0.9f, 0.75f, 1.0f, 0.5f};
  for (bool mirror : {false, true}) {
    problem p = mirror ? problem(2, 4, 2, 11, 7, 5, 3, seed + 1, layout::bshd) : standard(seed);
    check_fd(bwdtest::run(pol), p, {}, "non-causal");
    for (causal c : {causal::top_left, causal::bottom_right}) {
      options o;
      o.causal = c;
      check_fd(bwdtest::run(pol), p, o, "causal");
      auto with_decay = pol;
      with_decay.decay = decay;
      check_fd(bwdtest::run(with_decay), p, o, "causal + decay");
    }
    const std::int64_t lens[2] = {0, 5};
    options kl;
    kl.key_lengths = lens;
    check_fd(bwdtest::run(pol), p, kl, "key lengths {0, 5}");
  }
}

/// Finite differences of φ itself: J^T·g from vjp vs (φ(x + h e_i) − φ(x − h e_i))·g / 2h
/// (either form of map: feature::vjp and feature::evaluate).
template <class F>
void vjp_matches_map(const F& phi, index_t d, const feature::context& c, std::uint64_t seed) {
  const index_t M = feature::output_dim(phi, d);
  auto x = reftest::data(static_cast<std::size_t>(d), seed, 1.5);
  const auto g = reftest::data(static_cast<std::size_t>(M), seed + 1, 1.0);
  std::vector<double> dx(static_cast<std::size_t>(d), 0.25), up(static_cast<std::size_t>(M)), down(up);
  feature::vjp(phi, x.data(), d, c, g.data(), dx.data());  // adds to 0.25
  for (index_t i = 0; i < d; ++i) {
    const double x0 = x[static_cast<std::size_t>(i)];
    x[static_cast<std::size_t>(i)] = x0 + bwdtest::fd_step;
    feature::evaluate(phi, x.data(), d, c, up.data());
    x[static_cast<std::size_t>(i)] = x0 - bwdtest::fd_step;
    feature::evaluate(phi, x.data(), d, c, down.data());
    x[static_cast<std::size_t>(i)] = x0;
    double fd = 0;
    for (index_t m = 0; m < M; ++m)
      fd += g[static_cast<std::size_t>(m)] * (up[static_cast<std::size_t>(m)] - down[static_cast<std::size_t>(m)]) /
            (2 * bwdtest::fd_step);
    const double an = dx[static_cast<std::size_t>(i)] - 0.25;
    CHECK(std::abs(an - fd) <= bwdtest::fd_tol * (1 + std::abs(an)));
  }
}

}  // namespace

TEST_CASE("feature maps: vjp is the transposed Jacobian of operator()", "[reference][backward][linear]") {
  const auto proj = feature::orthogonal_projection(7, 5, 3);
  const feature::context q_ctx{4, 7, 11, true, 0.4}, k_ctx{9, 7, 11, false, 0.4};
  for (const auto& c : {q_ctx, k_ctx}) {
    vjp_matches_map(feature::elu_plus_one{}, 5, c, 1);
    vjp_matches_map(feature::relu{}, 5, c, 2);
    vjp_matches_map(feature::identity{}, 5, c, 3);
    vjp_matches_map(feature::favor_plus{proj.data(), 7}, 5, c, 4);
    vjp_matches_map(feature::cosformer{}, 5, c, 5);
    vjp_matches_map(feature::cosformer{20}, 5, c, 6);
    vjp_matches_map(softplus_pair{}, 5, c, 7);
  }
  static_assert(feature::differentiable<feature::elu_plus_one> && feature::differentiable<feature::favor_plus> &&
                feature::differentiable<feature::cosformer, float>);
}

TEST_CASE("backward oracle, linear attention: every built-in feature map", "[reference][backward][linear]") {
  const auto proj = feature::orthogonal_projection(6, 5, 17);
  SECTION("elu+1, normalised") { linear_cases(feature::elu_plus_one{}, true, 500); }
  SECTION("elu+1, unnormalised") { linear_cases(feature::elu_plus_one{}, false, 510); }
  SECTION("relu, normalised") { linear_cases(feature::relu{}, true, 520); }
  SECTION("identity, unnormalised") { linear_cases(feature::identity{}, false, 530); }
  SECTION("FAVOR+, normalised") { linear_cases(feature::favor_plus{proj.data(), 6}, true, 540); }
  SECTION("cosFormer, normalised") { linear_cases(feature::cosformer{}, true, 550); }
  SECTION("cosFormer max_len 16, unnormalised") { linear_cases(feature::cosformer{16}, false, 560); }
  SECTION("a user's feature map with vjp") { linear_cases(softplus_pair{}, true, 570); }
}

TEST_CASE("backward oracle, log-normal attention with alpha and beta given", "[reference][backward][lln]") {
  for (bool diag : {false, true}) {
    log_normal pol;
    pol.alpha = 0.8;
    pol.beta = 1.1;
    pol.diag = diag;
    const char* name = diag ? "LLN+Diag" : "LLN";
    problem p = standard(600);
    check_fd(bwdtest::run(pol), p, {}, name);
    for (causal c : {causal::top_left, causal::bottom_right}) {
      options o;
      o.causal = c;
      check_fd(bwdtest::run(pol), p, o, name);
    }
    problem bs(2, 4, 2, 11, 7, 3, 2, 610, layout::bshd);  // D = 3: several diagonal blocks
    const std::int64_t lens[2] = {4, 7};
    options kl;
    kl.key_lengths = lens;
    kl.causal = causal::bottom_right;
    check_fd(bwdtest::run(pol), bs, kl, name);
  }
}

TEST_CASE("backward oracle, LLN: moment-matched alpha and beta are constants of the call", "[reference][backward][lln]") {
  problem p = standard(700);
  log_normal fitted;  // α, β from the sample standard deviations of q and k
  const auto c = reference::lln_coefficients_of(fitted, p.q.cview(), p.k.cview());
  log_normal fixed;
  fixed.alpha = c.alpha;
  fixed.beta = c.beta;
  bwdtest::tensor4 a[3] = {{p.q.e, p.lay, 0, 0}, {p.k.e, p.lay, 0, 0}, {p.v.e, p.lay, 0, 0}};
  bwdtest::tensor4 b[3] = {{p.q.e, p.lay, 0, 0}, {p.k.e, p.lay, 0, 0}, {p.v.e, p.lay, 0, 0}};
  bwdtest::run(fitted).backward(p, {}, {}, a[0], a[1], a[2]);
  bwdtest::run(fixed).backward(p, {}, {}, b[0], b[1], b[2]);
  for (int t = 0; t < 3; ++t) CHECK(reftest::max_diff(a[t].x, b[t].x) == 0.0);
}

TEST_CASE("backward oracle, kernelised: exact zeros for empty rows, padded and unseen keys", "[reference][backward][linear]") {
  problem p = standard(750);  // Lq = 7 < Lk = 11: top-left causal rows see keys 0..i only
  const std::int64_t lens[2] = {0, 9};
  options o;
  o.causal = causal::top_left;
  o.key_lengths = lens;
  log_normal lln;
  lln.alpha = 0.5;
  lln.beta = 0.5;
  auto check = [&](const auto& r) {
    bwdtest::tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
    for (auto* t : {&dq, &dk, &dv}) std::fill(t->x.begin(), t->x.end(), bwdtest::nan);
    r.backward(p, o, {}, dq, dk, dv);
    for (index_t g = 0; g < p.Hkv; ++g)
      for (index_t j = 0; j < p.Lk; ++j) {
        const bool hidden_b0 = true, hidden_b1 = j >= 7;  // batch 0: no key; batch 1: keys ≥ Lq unseen
        for (index_t b = 0; b < 2; ++b) {
          if (!(b == 0 ? hidden_b0 : hidden_b1)) continue;
          for (index_t d = 0; d < p.D; ++d) CHECK(dk.x[dk.at(b, g, j, d)] == 0.0);
          for (index_t d = 0; d < p.Dv; ++d) CHECK(dv.x[dv.at(b, g, j, d)] == 0.0);
        }
      }
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < p.Lq; ++i)
        for (index_t d = 0; d < p.D; ++d) CHECK(dq.x[dq.at(0, h, i, d)] == 0.0);
    for (const auto* t : {&dq, &dk, &dv})
      for (double x : t->x) CHECK(std::isfinite(x));
  };
  check(bwdtest::run(linear{feature::elu_plus_one{}}));
  check(bwdtest::run(linear{feature::cosformer{}}));
  check(bwdtest::run(lln));
}

TEST_CASE("backward oracle, kernelised: dropout, lse and the regulariser are refused", "[reference][backward][linear]") {
  problem p = standard(800);
  bwdtest::tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  auto expect_refused = [&](const auto& pol, const options& o, const backward_options& bo, const float* lse,
                            const char* argument) {
    std::fill(dq.x.begin(), dq.x.end(), 3.0);
    bwdtest::tensor4 out = p.like_out();
    try {
      reference::attention_backward(pol, p.q.cview(), p.k.cview(), p.v.cview(),
                                    static_cast<tensor_view<const double>>(out.view()), lse, p.dout.cview(), dq.view(),
                                    dk.view(), dv.view(), o, bo);
      FAIL("accepted");
    } catch (const invalid_argument_error& e) {
      CHECK(e.argument() == argument);
    }
    for (double x : dq.x) CHECK(x == 3.0);  // nothing written
  };
  options d;
  d.dropout = {0.1f, 1, 0};
  options causal_opt;
  causal_opt.causal = causal::top_left;
  const float lse[1] = {0};
  backward_options reg;
  reg.reg = regularizer::mean_entropy(0.1);
  expect_refused(linear{feature::elu_plus_one{}}, d, {}, nullptr, "options.dropout");
  expect_refused(log_normal{}, d, {}, nullptr, "options.dropout");
  expect_refused(linear{feature::elu_plus_one{}}, causal_opt, {}, lse, "lse");
  expect_refused(linear{feature::elu_plus_one{}}, {}, reg, nullptr, "backward_options.reg");
  bwdtest::tensor4 out = p.like_out();
  CHECK_THROWS_AS(reference::attention(linear{feature::relu{}}, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), d),
                  invalid_argument_error);
}
