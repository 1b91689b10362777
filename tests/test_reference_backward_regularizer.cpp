// The entropy regulariser in the backward oracle, and the backward's validation.
//
// Regulariser: the gradient of L = Σ dout·out + λR (AEM, EAR, the band penalty in
// both forms) against central finite differences of the forward oracle plus
// reference::regularizer_value (backward_util.hpp: step 2^-17, |analytic − FD| ≤
// 1e-7·(1 + |analytic|) per element), with masks, sinks, padding, dropout, sparse
// and permutation policies. regularizer_value itself is checked against the forward
// oracle's own per-row entropies (a separate computation) to 1e-12 relative.
// Validation: every bad argument is refused, naming it, before a byte is written.
#include "backward_util.hpp"

#include <memory>

using namespace attnkit;
using bwdtest::bias_buffer;
using bwdtest::check_fd;
using bwdtest::layout;
using bwdtest::problem;

namespace {

problem standard(std::uint64_t seed, layout l = layout::bhsd) { return problem(2, 4, 2, 7, 11, 5, 3, seed, l, 1.5); }

/// Per-head mean entropy E_h over the rows (all batches) with a visible key, from
/// the forward oracle's result.entropy.
template <class P>
std::vector<double> head_entropies(const P& pol, const problem& p, const options& o) {
  bwdtest::tensor4 out = p.like_out();
  const auto r = reference::attention(pol, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), o);
  std::vector<double> E(static_cast<std::size_t>(p.Hq), 0.0);
  for (index_t h = 0; h < p.Hq; ++h) {
    double n = 0;
    for (index_t b = 0; b < p.B; ++b)
      for (index_t i = 0; i < p.Lq; ++i) {
        const auto u = static_cast<std::size_t>(r.row(b, h, i));
        if (r.allowed[u] > 0) E[static_cast<std::size_t>(h)] += r.entropy[u], n += 1;
      }
    E[static_cast<std::size_t>(h)] /= n;
  }
  return E;
}

/// θ far from the band's jumps: even heads 2 margins below E_h (penalised), odd
/// heads half a margin above (inside the band, no penalty).
std::vector<double> thresholds(const std::vector<double>& E, double margin) {
  std::vector<double> t(E.size());
  for (std::size_t h = 0; h < E.size(); ++h) t[h] = h % 2 == 0 ? E[h] - 2 * margin : E[h] + 0.5 * margin;
  return t;
}

}  // namespace

TEST_CASE("regularizer_value equals the forward oracle's entropies", "[reference][backward][regularizer]") {
  problem p = standard(900);
  const std::int64_t lens[2] = {0, 9};
  options o;
  o.causal = causal::bottom_right;
  o.key_lengths = lens;
  o.sinks = p.sinks;
  bwdtest::tensor4 out = p.like_out();
  const auto r = reference::attention(softmax{}, p.q.cview(), p.k.cview(), p.v.cview(), out.view(), o);
  double sum = 0, n = 0;
  for (index_t x = 0; x < r.rows(); ++x)
    if (r.allowed[static_cast<std::size_t>(x)] > 0) sum += r.entropy[static_cast<std::size_t>(x)], n += 1;
  const double aem = reference::regularizer_value(softmax{}, p.q.cview(), p.k.cview(), o, regularizer::mean_entropy(0.3));
  const double ear = reference::regularizer_value(softmax{}, p.q.cview(), p.k.cview(), o, regularizer::negative_entropy(0.3));
  CHECK(std::abs(aem - 0.3 * sum / n) <= 1e-12 * std::abs(aem));
  CHECK(std::abs(ear + 0.3 * sum / n) <= 1e-12 * std::abs(ear));
  // Band: λ · mean_h pen_h, pen_h = δ² outside the band γ·log(Lk), 0 inside.
  const auto E = head_entropies(softmax{}, p, o);
  const double margin = 0.2 * std::log(11.0);
  const auto theta = thresholds(E, margin);
  for (auto form : {band_config::shape::squared, band_config::shape::hinge}) {
    const double v = reference::regularizer_value(softmax{}, p.q.cview(), p.k.cview(), o,
                                                  regularizer::entropy_band(theta, {0.5, 0.2, 0.0, form}));
    double expect = 0;
    for (std::size_t h = 0; h < E.size(); h += 2)
      expect += form == band_config::shape::squared ? 4 * margin * margin : margin;  // |δ| = 2·margin
    expect *= 0.5 / static_cast<double>(E.size());
    CHECK(std::abs(v - expect) <= 1e-12 * expect);
  }
}

TEST_CASE("backward oracle: AEM / EAR gradients of loss + lambda R", "[reference][backward][regularizer]") {
  problem p = standard(910);
  const std::int64_t lens[2] = {0, 9};
  bias_buffer bias({1, p.Hq, p.Lq, p.Lk}, 911, 1.0);
  for (auto reg : {regularizer::mean_entropy(0.3), regularizer::negative_entropy(0.7)}) {
    const auto r = bwdtest::run(softmax{}, reg);
    check_fd(r, p, {}, "plain");
    options o;
    o.causal = causal::bottom_right;
    o.key_lengths = lens;
    o.sinks = p.sinks;
    check_fd(r, p, o, "causal + padded batch + sinks", &bias);
    options d;
    d.causal = causal::top_left;
    d.dropout = {0.3f, 8, 2};
    d.softcap = 2.0f;
    check_fd(r, p, d, "dropout + softcap (R is on the logits, not the dropped weights)");
    check_fd(bwdtest::run(sparse{pattern::top_k{4}}, reg), p, {}, "top_k");
    check_fd(bwdtest::run(sparse{pattern::sliding_window{2, 2}}, reg), p, o, "sliding window + options");
    problem sq(2, 4, 2, 9, 9, 5, 3, 912);
    check_fd(bwdtest::run(stochastic_permutation{.window = 4, .seed = 5}, reg), sq, {}, "permutation");
  }
}

TEST_CASE("backward oracle: band penalty gradients (squared and hinge)", "[reference][backward][regularizer]") {
  problem p = standard(920, layout::bshd);
  for (auto form : {band_config::shape::squared, band_config::shape::hinge}) {
    for (causal c : {causal::none, causal::bottom_right}) {
      options o;
      o.causal = c;
      o.sinks = p.sinks;
      const auto theta = thresholds(head_entropies(softmax{}, p, o), 0.2 * std::log(11.0));
      const auto r = bwdtest::run(softmax{}, regularizer::entropy_band(theta, {0.5, 0.2, 0.0, form}));
      check_fd(r, p, o, "band");
      // d(λR)/dθ_h against finite differences of regularizer_value.
      bwdtest::tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
      const auto res = r.backward(p, o, {}, dq, dk, dv);
      REQUIRE(res.dtheta.size() == theta.size());
      auto th = theta;
      for (std::size_t h = 0; h < th.size(); ++h) {
        const double fd = bwdtest::central(th[h], [&] {
          return reference::regularizer_value(softmax{}, p.q.cview(), p.k.cview(), o,
                                              regularizer::entropy_band(th, {0.5, 0.2, 0.0, form}));
        });
        CHECK(std::abs(res.dtheta[h] - fd) <= bwdtest::fd_tol * (1 + std::abs(res.dtheta[h])));
        if (h % 2 == 1) CHECK(res.dtheta[h] == 0.0);  // inside the band
        else CHECK(res.dtheta[h] != 0.0);
      }
    }
    options o;
    const auto theta = thresholds(head_entropies(softmax{}, p, o), 0.1 * 1.7);
    check_fd(bwdtest::run(softmax{}, regularizer::entropy_band(theta, {0.5, 0.1, 1.7, form})), p, o, "band, E_max 1.7");
  }
}

TEST_CASE("backward oracle: validation refuses bad arguments before writing", "[reference][backward][validation]") {
  problem p = standard(930);
  bwdtest::tensor4 out = p.like_out(), dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  std::vector<float> lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
  auto refused = [&](auto pol, const char* argument, auto&& mutate) {
    options o;
    backward_options bo;
    const float* l = softmax_normalized<decltype(pol)>() ? lse.data() : nullptr;
    auto q = p.q.cview();
    auto dqv = dq.view(), dkv = dk.view(), dvv = dv.view();
    mutate(o, bo, l, q, dqv, dkv, dvv);
    for (auto* t : {&dq, &dk, &dv}) std::fill(t->x.begin(), t->x.end(), 5.0);
    INFO("expected refusal naming " << argument);
    try {
      reference::attention_backward(pol, q, p.k.cview(), p.v.cview(), static_cast<tensor_view<const double>>(out.view()),
                                    l, p.dout.cview(), dqv, dkv, dvv, o, bo);
      FAIL("accepted");
    } catch (const invalid_argument_error& e) {
      CHECK(e.argument() == argument);
    }
    for (const auto* t : {&dq, &dk, &dv})
      for (double x : t->x) REQUIRE(x == 5.0);
  };
  using O = options;
  using BO = backward_options;
  using CV = tensor_view<const double>;
  using V = tensor_view<double>;
  const std::int64_t bad_lens[2] = {3, 12};
  std::vector<float> sinks(4, 0.0f), dsinks(4), dbias(77);
  bias_buffer bias({1, 1, p.Lq, p.Lk}, 931, 1.0);
  std::vector<double> theta(3, 1.0);
  refused(softmax{}, "lse", [](O&, BO&, const float*& l, CV&, V&, V&, V&) { l = nullptr; });
  refused(sigmoid{}, "lse", [&](O&, BO&, const float*& l, CV&, V&, V&, V&) { l = lse.data(); });
  refused(softmax{}, "dq", [&](O&, BO&, const float*&, CV&, V& q, V&, V&) { q = bhsd(dq.x.data(), p.B, p.Hq, p.Lq, 4); });
  refused(softmax{}, "dk", [&](O&, BO&, const float*&, CV&, V&, V& k, V&) { k.stride[1] = 0; });
  refused(softmax{}, "dv", [&](O&, BO&, const float*&, CV&, V&, V&, V& v) { v.extent[2] = 10; });
  refused(softmax{}, "dq", [&](O&, BO&, const float*&, CV& q, V& g, V&, V&) { g.data = const_cast<double*>(q.data); });
  refused(softmax{}, "dv", [&](O&, BO&, const float*&, CV&, V&, V& k, V& v) { v.data = k.data; });
  refused(softmax{}, "options.key_lengths", [&](O& o, BO&, const float*&, CV&, V&, V&, V&) { o.key_lengths = bad_lens; });
  refused(softmax{}, "options.dropout", [](O& o, BO&, const float*&, CV&, V&, V&, V&) { o.dropout.p = 1.0f; });
  refused(softmax{}, "backward_options.dsinks", [&](O&, BO& b, const float*&, CV&, V&, V&, V&) { b.dsinks = dsinks.data(); });
  refused(softmax{}, "backward_options.dbias", [&](O&, BO& b, const float*&, CV&, V&, V&, V&) {
    b.dbias = bhsd(dbias.data(), 1, 1, 7, 11);
  });
  refused(softmax{}, "backward_options.dbias", [&](O& o, BO& b, const float*&, CV&, V&, V&, V&) {
    o.bias = bias.view();
    b.dbias = bhsd(dbias.data(), 1, 1, 1, 11);  // bias is [1, 1, Lq, Lk]
  });
  refused(softmax{}, "backward_options.dsinks", [&](O& o, BO& b, const float*&, CV&, V&, V&, V&) {
    o.sinks = sinks;
    b.dsinks = const_cast<float*>(sinks.data());  // aliases an input
  });
  refused(softmax{}, "backward_options.reg", [](O&, BO& b, const float*&, CV&, V&, V&, V&) {
    b.reg = regularizer::mean_entropy(-1.0);
  });
  refused(softmax{}, "backward_options.reg", [&](O&, BO& b, const float*&, CV&, V&, V&, V&) {
    b.reg = regularizer::entropy_band(theta, {});  // 3 thresholds for 4 heads
  });
  refused(sigmoid{}, "backward_options.reg", [](O&, BO& b, const float*&, CV&, V&, V&, V&) {
    b.reg = regularizer::negative_entropy(0.1);  // not a softmax-normalised policy
  });
  refused(sigmoid{}, "options.sinks", [&](O& o, BO&, const float*&, CV&, V&, V&, V&) { o.sinks = sinks; });
  refused(sparse{pattern::block_sparse{nullptr, 4, 4, 2, 3}}, "pattern.layout",
          [](O&, BO&, const float*&, CV&, V&, V&, V&) {});
  refused(stochastic_permutation{}, "k", [](O&, BO&, const float*&, CV&, V&, V&, V&) {});  // Lq != Lk
}
