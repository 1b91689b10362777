// The kernelised backward (kernel/kernelized/backward.hpp) against the float64
// backward oracle (reference::attention_backward): linear attention with every
// built-in feature map (elu+1, relu, identity, FAVOR+, cosFormer) and user maps of
// both forms, non-causal and causal (both alignments, Lq ≠ Lk either way), decay,
// normalised or not, key lengths, GQA, BSHD strides, bf16 K/V; LLN with α and β
// given or moment-matched, LLN+Diag. Tolerance, per gradient tensor:
//   max |kernel − oracle| ≤ 1e-4 · max |oracle|
// (all-zero oracle tensors must come out exactly 0). Also: every element written
// (outputs start as NaN), exact zeros for rows without keys and for padded or
// unseen keys, `accumulate`, bitwise identical results for 1, 2 and 3 threads,
// and validation before any gradient byte is written.
#include <catch2/catch.hpp>

#include <attnkit/kernel/kernelized/backward.hpp>
#include <attnkit/reference/reference.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {

constexpr double tol = 1e-4;
constexpr float nanf = std::numeric_limits<float>::quiet_NaN();

/// A user's elementwise map: φ(x) = relu(x)² + softplus(x)/4, with its derivative.
struct relu_sq_softplus {
  template <class V>
  V operator()(V x) const {
    const V r = math::max(V(0), x);
    return r * r + V(0.25) * math::softplus(x);
  }
  template <class V>
  V derivative(V x) const {
    return V(2) * math::max(V(0), x) + V(0.25) * math::sigmoid(x);
  }
};

/// A user's row map mixing coordinates: φ(x) = softplus(P·x), P a fixed M × d matrix
/// (a learned Hedgehog-style projection), vectorised through math::dot / math::axpy.
struct learned_softplus {
  const float* P = nullptr;
  index_t m = 0;
  index_t output_dim(index_t) const { return m; }
  template <class T>
  void operator()(const T* x, index_t d, const feature::context&, T* out) const {
    for (index_t r = 0; r < m; ++r) out[r] = math::softplus(static_cast<T>(math::dot(P + r * d, x, d)));
  }
  template <class T>
  void vjp(const T* x, index_t d, const feature::context&, const T* dphi, T* dx) const {
    for (index_t r = 0; r < m; ++r)
      math::axpy(dphi[r] * math::sigmoid(static_cast<T>(math::dot(P + r * d, x, d))), P + r * d, dx, d);
  }
};

struct grads {
  std::vector<float> dq, dk, dv;
};

/// Strided views of a problem's buffers in BSHD order when `bshd`.
struct views {
  const problem& p;
  bool bshd;
  template <class T>
  tensor_view<T> of(T* x, index_t H, index_t L, index_t D) const {
    return bshd ? attnkit::bshd(x, p.B, L, H, D) : attnkit::bhsd(x, p.B, H, L, D);
  }
};

/// Runs the kernel backward (after the public entry's validation) and the oracle;
/// returns the three relative errors. `dout` is the same seeded data for both.
template <class Arch, class P, class KV = float>
std::array<double, 3> compare(const P& pol, const problem& p, const options& opt, bool bshd = false,
                              grads* keep = nullptr) {
  const views w{p, bshd};
  const auto dout = attnkit_test::randn(p.out_size(), 991);
  std::vector<float> out(p.out_size(), 0.0f);
  grads gr{std::vector<float>(p.q.size(), nanf), std::vector<float>(p.k.size(), nanf), std::vector<float>(p.v.size(), nanf)};
  std::vector<KV> k16, v16;
  tensor_view<const KV> kv, vv;
  if constexpr (std::is_same_v<KV, float>) {
    kv = w.of(static_cast<const float*>(p.k.data()), p.Hkv, p.Lk, p.D);
    vv = w.of(static_cast<const float*>(p.v.data()), p.Hkv, p.Lk, p.Dv);
  } else {
    for (float x : p.k) k16.push_back(KV::from_float(x));
    for (float x : p.v) v16.push_back(KV::from_float(x));
    kv = w.of(static_cast<const KV*>(k16.data()), p.Hkv, p.Lk, p.D);
    vv = w.of(static_cast<const KV*>(v16.data()), p.Hkv, p.Lk, p.Dv);
  }
  const auto qv = w.of(static_cast<const float*>(p.q.data()), p.Hq, p.Lq, p.D);
  const auto ov = w.of(static_cast<const float*>(out.data()), p.Hq, p.Lq, p.Dv);
  const auto dov = w.of(static_cast<const float*>(dout.data()), p.Hq, p.Lq, p.Dv);
  const auto dqv = w.of(gr.dq.data(), p.Hq, p.Lq, p.D);
  const auto dkv = w.of(gr.dk.data(), p.Hkv, p.Lk, p.D);
  const auto dvv = w.of(gr.dv.data(), p.Hkv, p.Lk, p.Dv);
  const backward_options bo{};
  const problem_shape sh = validate_backward_call(qv, kv, vv, ov, nullptr, dov, dqv, dkv, dvv, opt, bo,
                                                  backward_policy_facts{false, true, "kernelised"}, true);
  workspace ws;
  detail::run_kernelized_backward<Arch>(pol, sh, qv, kv, vv, ov, dov, dqv, dkv, dvv, opt, bo, ws);

  std::vector<double> rq(p.q.size()), rk(p.k.size()), rv(p.v.size());
  reference::attention_backward(pol, qv, kv, vv, ov, nullptr, dov, w.of(rq.data(), p.Hq, p.Lq, p.D),
                                w.of(rk.data(), p.Hkv, p.Lk, p.D), w.of(rv.data(), p.Hkv, p.Lk, p.Dv), opt);
  auto rel = [](const std::vector<float>& got, const std::vector<double>& ref) {
    double scale = 0, err = 0;
    for (double r : ref) scale = std::max(scale, std::abs(r));
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();  // unwritten or NaN
      err = std::max(err, std::abs(got[i] - ref[i]));
    }
    return scale > 0 ? err / scale : (err == 0 ? 0.0 : std::numeric_limits<double>::infinity());
  };
  const std::array<double, 3> e{rel(gr.dq, rq), rel(gr.dk, rk), rel(gr.dv, rv)};
  if (keep) *keep = std::move(gr);
  return e;
}

#define CHECK_GRADS(expr)                                                   \
  do {                                                                      \
    const auto e_ = (expr);                                                 \
    INFO("dq " << e_[0] << "  dk " << e_[1] << "  dv " << e_[2]);           \
    CHECK((e_[0] <= tol && e_[1] <= tol && e_[2] <= tol));                  \
  } while (0)

struct shape {
  index_t Lq, Lk;
};

}  // namespace

TEMPLATE_LIST_TEST_CASE("kernelised backward matches the oracle: elu+1 and LLN on every arch",
                        "[backward][linear][lln]", attnkit_test::archs) {
  const float decay[4] = {0.9f, 0.97f, 0.99f, 1.0f};
  for (const shape s : {shape{150, 130}, shape{70, 200}, shape{200, 70}, shape{1, 90}}) {
    const problem p(2, 4, 2, s.Lq, s.Lk, 40, 24, 5);
    for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
      // A row that sees a single key (Lq = 1, top-left) has dq = dk = O(ε) exactly:
      // in float they are rounding noise of u + c·z, with nothing to compare relatively.
      if (s.Lq == 1 && c == causal::top_left) continue;
      options o;
      o.causal = c;
      INFO("arch " << simd::arch_name<TestType>() << " causal " << static_cast<int>(c) << " Lq " << s.Lq << " Lk " << s.Lk);
      CHECK_GRADS(compare<TestType>(linear{feature::elu_plus_one{}}, p, o));
      CHECK_GRADS(compare<TestType>(log_normal{.alpha = 0.7, .beta = 0.9}, p, o));
      if (c != causal::none) CHECK_GRADS(compare<TestType>(linear<feature::elu_plus_one>{.decay = decay}, p, o));
    }
  }
}

TEST_CASE("kernelised backward matches the oracle: every feature map, decay, normalisation", "[backward][linear]") {
  using A = simd::default_arch;
  const auto proj = feature::orthogonal_projection(48, 40, 7);
  const auto learned = attnkit_test::randn(36 * 40, 17, 0.2f);
  const float decay[4] = {0.8f, 0.95f, 1.0f, 0.6f};
  for (const shape s : {shape{300, 300}, shape{90, 260}, shape{260, 90}}) {
    const problem p(1, 4, 2, s.Lq, s.Lk, 40, 24, 9);
    for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
      options o;
      o.causal = c;
      INFO("causal " << static_cast<int>(c) << " Lq " << s.Lq << " Lk " << s.Lk);
      CHECK_GRADS(compare<A>(linear{feature::relu{}}, p, o));
      CHECK_GRADS(compare<A>(linear<feature::relu>{.normalize = false}, p, o));
      CHECK_GRADS(compare<A>(linear<feature::identity>{.normalize = false}, p, o));
      CHECK_GRADS(compare<A>(linear<feature::elu_plus_one>{.normalize = false}, p, o));
      CHECK_GRADS(compare<A>(linear{feature::favor_plus{proj.data(), 48}}, p, o));
      CHECK_GRADS(compare<A>(linear{feature::cosformer{}}, p, o));
      CHECK_GRADS(compare<A>(linear<feature::cosformer>{.phi = {400}, .normalize = false}, p, o));
      CHECK_GRADS(compare<A>(linear{relu_sq_softplus{}}, p, o));
      CHECK_GRADS(compare<A>(linear{learned_softplus{learned.data(), 36}}, p, o));
      CHECK_GRADS(compare<A>(log_normal{}, p, o));
      CHECK_GRADS(compare<A>(log_normal{.diag = true}, p, o));
      if (c == causal::none) continue;
      CHECK_GRADS(compare<A>(linear<feature::elu_plus_one>{.normalize = false, .decay = decay}, p, o));
      CHECK_GRADS(compare<A>(linear<feature::favor_plus>{.phi = {proj.data(), 48}, .decay = decay}, p, o));
      CHECK_GRADS(compare<A>(linear<feature::cosformer>{.decay = decay}, p, o));
      CHECK_GRADS(compare<A>(linear<relu_sq_softplus>{.decay = decay}, p, o));
    }
  }
}

TEST_CASE("kernelised backward: key lengths, strides, bf16 K/V, D not a multiple of the width",
          "[backward][linear][lln]") {
  using A = simd::default_arch;
  const std::int64_t lens[2] = {0, 61};
  options o;
  o.key_lengths = lens;
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    o.causal = c;
    const problem p(2, 6, 2, 50, 100, 19, 13, 21);
    INFO("causal " << static_cast<int>(c));
    CHECK_GRADS(compare<A>(linear{feature::elu_plus_one{}}, p, o));
    CHECK_GRADS(compare<A>(log_normal{}, p, o));
    CHECK_GRADS(compare<A>(log_normal{.alpha = 0.9, .beta = -0.6, .diag = true}, p, o));
    CHECK_GRADS(compare<A>(linear{feature::cosformer{}}, p, o, true));  // BSHD
    CHECK_GRADS(compare<A>(log_normal{.diag = true}, p, o, true));
    CHECK_GRADS((compare<A, linear<feature::elu_plus_one>, bfloat16>(linear{feature::elu_plus_one{}}, p, o)));
    CHECK_GRADS((compare<A, log_normal, float16>(log_normal{}, p, o)));
  }
}

TEST_CASE("kernelised backward: exact zeros for empty rows, padded and unseen keys; accumulate",
          "[backward][linear][lln]") {
  using A = simd::default_arch;
  const problem p(2, 4, 2, 30, 80, 16, 8, 31);  // top-left, Lq < Lk: keys ≥ 30 are never seen
  const std::int64_t lens[2] = {0, 70};
  options o;
  o.causal = causal::top_left;
  o.key_lengths = lens;
  auto check_zeros = [&](const grads& g) {
    for (index_t h = 0; h < p.Hq; ++h)  // batch 0: no key, every row empty
      for (index_t x = 0; x < p.Lq * p.D; ++x) CHECK(g.dq[static_cast<std::size_t>(h * p.Lq * p.D + x)] == 0.0f);
    for (index_t b = 0; b < 2; ++b)
      for (index_t gg = 0; gg < p.Hkv; ++gg)
        for (index_t j = b == 0 ? 0 : 30; j < p.Lk; ++j) {
          for (index_t d = 0; d < p.D; ++d) CHECK(g.dk[static_cast<std::size_t>(((b * p.Hkv + gg) * p.Lk + j) * p.D + d)] == 0.0f);
          for (index_t d = 0; d < p.Dv; ++d) CHECK(g.dv[static_cast<std::size_t>(((b * p.Hkv + gg) * p.Lk + j) * p.Dv + d)] == 0.0f);
        }
  };
  for (int which = 0; which < 3; ++which) {
    grads g;
    if (which == 0) CHECK_GRADS(compare<A>(linear{feature::elu_plus_one{}}, p, o, false, &g));
    if (which == 1) CHECK_GRADS(compare<A>(linear<feature::elu_plus_one>{.eps = 0.0}, p, o, false, &g));  // den = 0 in empty rows
    if (which == 2) CHECK_GRADS(compare<A>(log_normal{.diag = true}, p, o, false, &g));
    check_zeros(g);
  }
  // accumulate: the gradient is added to what the outputs hold.
  const auto dout = attnkit_test::randn(p.out_size(), 5);
  std::vector<float> out(p.out_size()), dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
  std::vector<float> aq = attnkit_test::randn(p.q.size(), 6), ak = attnkit_test::randn(p.k.size(), 7),
                     av = attnkit_test::randn(p.v.size(), 8);
  const auto bq = aq, bk = ak, bv = av;
  workspace ws;
  const auto run = [&](std::vector<float>& x, std::vector<float>& y, std::vector<float>& z, bool acc) {
    backward_options bo;
    bo.accumulate = acc;
    const problem_shape sh = validate_call(p.qv(), p.kv(), p.vv(), p.ov(out), o);
    detail::run_kernelized_backward<A>(log_normal{}, sh, p.qv(), p.kv(), p.vv(), tensor_view<const float>(p.ov(out)),
                                       bhsd(static_cast<const float*>(dout.data()), p.B, p.Hq, p.Lq, p.Dv),
                                       bhsd(x.data(), p.B, p.Hq, p.Lq, p.D), bhsd(y.data(), p.B, p.Hkv, p.Lk, p.D),
                                       bhsd(z.data(), p.B, p.Hkv, p.Lk, p.Dv), o, bo, ws);
  };
  run(dq, dk, dv, false);
  run(aq, ak, av, true);
  for (std::size_t i = 0; i < aq.size(); ++i) CHECK(aq[i] == bq[i] + dq[i]);
  for (std::size_t i = 0; i < ak.size(); ++i) CHECK(ak[i] == bk[i] + dk[i]);
  for (std::size_t i = 0; i < av.size(); ++i) CHECK(av[i] == bv[i] + dv[i]);
}

TEST_CASE("kernelised backward is bitwise identical for any thread count", "[backward][linear][lln]") {
  using A = simd::default_arch;
  const problem p(2, 6, 3, 150, 150, 32, 32, 41);  // GQA 2:1: the phase-2 reduction runs
  const problem p1(1, 3, 3, 150, 150, 32, 32, 43);  // no GQA: keys finished in the head's task
  const float decay[6] = {0.9f, 0.8f, 0.99f, 0.9f, 0.8f, 0.99f};
  options o;
  o.causal = causal::bottom_right;
  for (const problem* pp : {&p, &p1}) {
    for (int threads : {1, 2, 3}) {
      o.num_threads = threads;
      for (int which = 0; which < 3; ++which) {
        grads g;
        if (which == 0) compare<A>(linear<feature::elu_plus_one>{.decay = std::span(decay, pp->Hq)}, *pp, o, false, &g);
        if (which == 1) compare<A>(log_normal{.diag = true}, *pp, o, false, &g);
        if (which == 2) compare<A>(linear{feature::cosformer{}}, *pp, o, false, &g);
        static grads first[3];
        if (threads == 1) {
          first[which] = g;
          continue;
        }
        CHECK(g.dq == first[which].dq);
        CHECK(g.dk == first[which].dk);
        CHECK(g.dv == first[which].dv);
      }
    }
  }
}

TEST_CASE("kernelised backward validates before writing", "[backward][linear][validation]") {
  using A = simd::default_arch;
  const problem p(1, 2, 1, 10, 10, 8, 8, 1);
  std::vector<float> out(p.out_size()), dout(p.out_size(), 1.0f), dq(p.q.size(), 5.0f), dk(p.k.size(), 5.0f),
      dv(p.v.size(), 5.0f);
  workspace ws;
  const problem_shape sh = validate_call(p.qv(), p.kv(), p.vv(), p.ov(out), {});
  auto call = [&](const auto& pol, const options& o, const backward_options& bo) {
    detail::run_kernelized_backward<A>(pol, sh, p.qv(), p.kv(), p.vv(), tensor_view<const float>(p.ov(out)),
                                       bhsd(static_cast<const float*>(dout.data()), 1, 2, 10, 8),
                                       bhsd(dq.data(), 1, 2, 10, 8), bhsd(dk.data(), 1, 1, 10, 8),
                                       bhsd(dv.data(), 1, 1, 10, 8), o, bo, ws);
  };
  const float decay[2] = {0.5f, 0.5f};
  CHECK_THROWS_WITH(call(linear<feature::relu>{.decay = decay}, {}, {}), Catch::Contains("policy.decay"));
  CHECK_THROWS_WITH(call(linear{feature::favor_plus{}}, {}, {}), Catch::Contains("policy.phi"));
  CHECK_THROWS_WITH(call(log_normal{.eps = -1.0}, {}, {}), Catch::Contains("policy.eps"));
  options w;
  w.window = {2, 2};
  CHECK_THROWS_WITH(call(linear{feature::relu{}}, w, {}), Catch::Contains("options.window"));
  backward_options reg;
  reg.reg = regularizer::mean_entropy(0.1);
  CHECK_THROWS_WITH(call(linear{feature::relu{}}, {}, reg), Catch::Contains("backward_options.reg"));
  for (const auto* x : {&dq, &dk, &dv})
    for (float e : *x) CHECK(e == 5.0f);
}

// The public entry: attention_backward() sends kernelised policies to the same
// backward (after validation; `out` from the forward kernel, no LSE needed).
TEST_CASE("attention_backward() runs the kernelised backward", "[backward][linear][lln]") {
  const problem p(2, 4, 2, 37, 37, 24, 16, 77);
  for (causal c : {causal::none, causal::bottom_right}) {
    options opt;
    opt.causal = c;
    const auto run = [&](const auto& pol) {
      std::vector<float> out(p.out_size());
      attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), opt);
      const auto dout = attnkit_test::randn(p.out_size(), 992);
      const float unset = std::numeric_limits<float>::quiet_NaN();
      std::vector<float> dq(p.q.size(), unset), dk(p.k.size(), unset), dv(p.v.size(), unset);
      const auto ov = bhsd<const float>(out.data(), p.B, p.Hq, p.Lq, p.Dv);
      const auto dov = bhsd<const float>(dout.data(), p.B, p.Hq, p.Lq, p.Dv);
      attention_backward(pol, p.qv(), p.kv(), p.vv(), ov, nullptr, dov, bhsd(dq.data(), p.B, p.Hq, p.Lq, p.D),
                         bhsd(dk.data(), p.B, p.Hkv, p.Lk, p.D), bhsd(dv.data(), p.B, p.Hkv, p.Lk, p.Dv), opt);
      std::vector<double> rq(dq.size()), rk(dk.size()), rv(dv.size());
      reference::attention_backward(pol, p.qv(), p.kv(), p.vv(), ov, nullptr, dov, bhsd(rq.data(), p.B, p.Hq, p.Lq, p.D),
                                    bhsd(rk.data(), p.B, p.Hkv, p.Lk, p.D), bhsd(rv.data(), p.B, p.Hkv, p.Lk, p.Dv),
                                    opt);
      for (const auto& [got, ref] : {std::pair{&dq, &rq}, std::pair{&dk, &rk}, std::pair{&dv, &rv}}) {
        double scale = 0, err = 0;
        for (double r : *ref) scale = std::max(scale, std::abs(r));
        for (std::size_t i = 0; i < got->size(); ++i) {
          REQUIRE(std::isfinite((*got)[i]));
          err = std::max(err, std::abs((*got)[i] - (*ref)[i]));
        }
        CHECK(err <= 1e-4 * scale);
      }
    };
    run(linear{feature::elu_plus_one{}});
    run(log_normal{});
  }
}
