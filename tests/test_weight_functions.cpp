// The open weight-function interface (policy/weight.hpp): weight functions defined
// HERE, outside the library, run through attention() on every compiled arch and
// match the float64 oracle evaluated from the same definition — prefill and decode
// shapes, masks, both causal alignments, GQA, BSHD strides, a sparse pattern, and
// the entropy observer. Also the call's workspace: nested calls from an observer,
// a caller-owned workspace, and a call from a static destructor.
// Tolerance: max|out − oracle| ≤ 2e-5·max|oracle| (as softmax).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstdio>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::compare_with_oracle;
using attnkit_test::problem;

namespace {

/// ReLU attention (Wortsman et al. 2023): relu(s) / Lk, rows not normalised.
struct relu_attention {
  using family = attnkit::family::quadratic;
  static constexpr auto normalization = attnkit::normalization::none;
  struct params {
    double inv_len;
  };
  params resolve(const weight_context& c) const { return {c.key_length > 0 ? 1.0 / double(c.key_length) : 0.0}; }
  template <class V>
  V weight(V s, const params& p) const {
    return math::max(s, V(0)) * V(p.inv_len);
  }
};

/// ReLU² with no parameters, ℓ1-normalised rows (a weight without `resolve`).
struct relu_squared_sum : weight_base {
  static constexpr auto normalization = attnkit::normalization::sum;
  template <class V>
  V weight(V s) const {
    const V r = math::max(s, V(0));
    return r * r;
  }
};

/// Softplus with a length scale, ℓ1-normalised (the softplus-attention form).
struct length_scaled_softplus {
  using family = attnkit::family::quadratic;
  static constexpr auto normalization = attnkit::normalization::sum;
  struct params {
    double scale;
  };
  params resolve(const weight_context& c) const { return {std::log(double(std::max<index_t>(c.key_length, 2)))}; }
  template <class V>
  V weight(V s, const params& p) const {
    return math::softplus(s * V(p.scale));
  }
};

constexpr double tol = 2e-5;

template <class Arch, class P>
void check(const P& pol, const problem& p, const options& o, const std::string& what) {
  const auto e = compare_with_oracle<Arch>(pol, p, o);
  INFO(what << " arch=" << simd::arch_name<Arch>() << " Lq=" << p.Lq << " Lk=" << p.Lk << " D=" << p.D);
  CHECK(e.out <= tol);
  CHECK_FALSE(e.nan_mismatch);
}

template <class Arch, class P>
void check_all(const P& pol) {
  problem p(2, 4, 2, 67, 131, 40, 24, 11);
  check<Arch>(pol, p, {}, "plain");
  for (causal c : {causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    check<Arch>(pol, p, o, "causal");
    o.window = {13, 2};
    check<Arch>(pol, p, o, "causal + window");
  }
  const std::int64_t lens[2] = {0, 77};
  options kl;
  kl.key_lengths = lens;
  check<Arch>(pol, p, kl, "key lengths, one batch empty");
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(p.Lq * p.Lk), 5);
  options el;
  el.alibi_slopes = slopes;
  el.softcap = 2.5f;
  el.bias = strided(bias.data(), {1, 1, p.Lq, p.Lk}, {0, 0, p.Lk, 1});
  check<Arch>(pol, p, el, "bias + ALiBi + softcap");
  check<Arch>(pol, problem(1, 8, 2, 1, 1100, 64, 64, 12), {}, "decode, GQA");
  check<Arch>(pol, problem(1, 4, 4, 3, 700, 32, 40, 13), options{.causal = causal::bottom_right}, "decode 3 rows");
  check<Arch>(pol, problem(1, 2, 1, 600, 600, 64, 64, 14), {}, "two key spans");
  // A sparse pattern around the user's weight function.
  const auto sp = sparse{pattern::sliding_window{40, 5}, pol};
  check<Arch>(sp, p, {}, "sliding window pattern");
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("user weight functions match the oracle built from the same definition",
                        "[weight][oracle]", attnkit_test::archs) {
  SECTION("relu / Lk, unnormalised") { check_all<TestType>(relu_attention{}); }
  SECTION("relu², l1-normalised") { check_all<TestType>(relu_squared_sum{}); }
#ifndef ATTNKIT_TEST_BEST_ARCH_ONLY  // the sanitizer build: two weight functions (one per normalisation) are enough
  SECTION("length-scaled softplus, l1-normalised") { check_all<TestType>(length_scaled_softplus{}); }
  SECTION("sigmoid through the same interface") { check_all<TestType>(sigmoid{}); }
#endif
}

TEST_CASE("a user weight function: BSHD strides and the masked-row rule of sum", "[weight]") {
  const index_t B = 2, H = 3, L = 45, D = 24;
  const auto q = attnkit_test::randn(static_cast<std::size_t>(B * L * H * D), 31);
  const auto k = attnkit_test::randn(static_cast<std::size_t>(B * L * H * D), 32);
  const auto v = attnkit_test::randn(static_cast<std::size_t>(B * L * H * D), 33);
  std::vector<float> out(q.size());
  std::vector<double> ref(q.size());
  options o;
  o.causal = causal::top_left;
  o.window = {-1, -1};
  const std::int64_t lens[2] = {0, 30};  // batch 0: no visible key → masked_rows
  o.key_lengths = lens;
  for (auto rows : {masked_rows::zero, masked_rows::nan}) {
    o.masked_rows = rows;
    attention(relu_squared_sum{}, bshd(q.data(), B, L, H, D), bshd(k.data(), B, L, H, D), bshd(v.data(), B, L, H, D),
              bshd(out.data(), B, L, H, D), o);
    reference::attention(relu_squared_sum{}, bshd(q.data(), B, L, H, D), bshd(k.data(), B, L, H, D),
                         bshd(v.data(), B, L, H, D), bshd(ref.data(), B, L, H, D), o);
    double scale = 0, err = 0;
    for (double r : ref)
      if (!std::isnan(r)) scale = std::max(scale, std::abs(r));
    for (std::size_t i = 0; i < out.size(); ++i) {
      REQUIRE(std::isnan(out[i]) == std::isnan(ref[i]));
      if (!std::isnan(ref[i])) err = std::max(err, std::abs(out[i] - ref[i]));
    }
    CHECK(err <= tol * scale);
    // Batch 0 rows are all masked: NaN or 0 as asked.
    CHECK((rows == masked_rows::nan ? std::isnan(out[0]) : out[0] == 0.0f));
  }
}

TEST_CASE("a user weight function works with the entropy observer", "[weight][observe]") {
  problem p(1, 4, 2, 90, 130, 32, 32, 21);
  options o;
  o.causal = causal::bottom_right;
  std::vector<float> out(p.out_size());
  std::vector<double> ref(p.out_size());
  entropy_stats stats;
  attention(length_scaled_softplus{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(stats));
  const auto r = reference::attention(length_scaled_softplus{}, p.qv(), p.kv(), p.vv(),
                                      bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  REQUIRE(stats.complete());
  double err = 0;
  for (std::size_t i = 0; i < r.entropy.size(); ++i) {
    err = std::max(err, std::abs(stats.entropy[i] - r.entropy[i]));
    CHECK(stats.allowed[i] == r.allowed[i]);
  }
  CHECK(err <= 1e-4);             // H per row, natural log units
  CHECK_FALSE(stats.normalized);  // reported as unnormalised weights (H of w / Σw)
}

namespace {
/// An observer whose every row runs a small attention() of its own (nested call).
struct nesting_observer {
  static constexpr bool enabled = true;
  static constexpr bool wants_entropy = false;
  [[maybe_unused]] static constexpr bool wants_first_logit = false;  // part of the observer protocol
  const problem* inner = nullptr;
  std::vector<float>* inner_out = nullptr;
  std::atomic<int> rows{0};
  int top_k() const { return 0; }
  void begin(const problem_shape&, const options&) {}
  void on_row(const row_state&) {
    std::vector<float> o(inner->out_size());
    attention(softmax{}, inner->qv(), inner->kv(), inner->vv(), inner->ov(o));
    if (rows.fetch_add(1) == 0) *inner_out = o;
    else if (o != *inner_out) std::abort();  // every nested call must agree bitwise
  }
  void end() {}
};
}  // namespace

TEST_CASE("attention() called from inside an observer (nested call) is correct", "[workspace]") {
  problem outer(1, 4, 2, 130, 300, 64, 64, 41), inner(1, 2, 1, 70, 90, 32, 32, 42);
  std::vector<float> plain(outer.out_size()), nested(outer.out_size()), inner_alone(inner.out_size()), inner_out;
  attention(softmax{}, inner.qv(), inner.kv(), inner.vv(), inner.ov(inner_alone));
  attention(softmax{}, outer.qv(), outer.kv(), outer.vv(), outer.ov(plain));
  for (int threads : {1, 2}) {
    nesting_observer obs{&inner, &inner_out};
    options o;
    o.num_threads = threads;
    attention(softmax{}, outer.qv(), outer.kv(), outer.vv(), outer.ov(nested), o, obs);
    CHECK(obs.rows.load() == outer.B * outer.Hq * outer.Lq);
    CHECK(nested == plain);
    CHECK(inner_out == inner_alone);
  }
}

namespace {
/// An observer whose first row calls attention() with the workspace of the call it
/// observes (in use: refused).
struct reuse_observer {
  static constexpr bool enabled = true;
  static constexpr bool wants_entropy = false;
  [[maybe_unused]] static constexpr bool wants_first_logit = false;  // part of the observer protocol
  const problem* p;
  options o;
  std::atomic<int> refused{0};
  int top_k() const { return 0; }
  void begin(const problem_shape&, const options&) {}
  void on_row(const row_state& st) {
    if (st.row != 0 || st.head != 0) return;
    std::vector<float> x(p->out_size());
    try {
      attention(softmax{}, p->qv(), p->kv(), p->vv(), p->ov(x), o);
    } catch (const invalid_argument_error& e) {
      if (e.argument() == "options.workspace") refused.fetch_add(1);
    }
  }
  void end() {}
};
}  // namespace

TEST_CASE("a caller-owned workspace is reused and serves one call at a time", "[workspace]") {
  problem p(1, 4, 2, 200, 200, 64, 64, 51);
  std::vector<float> a(p.out_size()), b(p.out_size());
  workspace ws;
  options o;
  o.workspace = &ws;
  o.num_threads = 1;  // one slot: which slots a multi-threaded call touches is up to the scheduler
  CHECK(ws.bytes() == 0);
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(a), o);
  const std::size_t held = ws.bytes();
  CHECK(held > 0);
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(b), o);
  CHECK(ws.bytes() == held);  // the same buffers, no growth
  CHECK(a == b);
  ws.release();
  CHECK(ws.bytes() == 0);
  // A second call on a workspace in use (from an observer of the first) is refused.
  reuse_observer obs{&p, o};
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(a), o, obs);
  CHECK(obs.refused.load() == 1);
}

namespace {
/// Calls attention() from its destructor, which runs after main() returned, when
/// thread_local and other static objects of the library may be gone.
struct calls_at_exit {
  ~calls_at_exit() {
    problem p(1, 2, 1, 300, 300, 32, 32, 61);
    std::vector<float> out(p.out_size());
    std::vector<double> ref(p.out_size());
    options o;
    o.num_threads = 2;
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    reference::attention(softmax{}, p.qv(), p.kv(), p.vv(), bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), o);
    for (std::size_t i = 0; i < out.size(); ++i)
      if (std::abs(out[i] - ref[i]) > 1e-4) {
        std::fputs("attention() from a static destructor gave a wrong result\n", stderr);
        std::abort();
      }
  }
};
calls_at_exit at_exit;
}  // namespace

TEST_CASE("attention() works before a static destructor calls it again", "[workspace]") {
  // Warm the library up (pool, workspaces) so the destructor of `at_exit` runs
  // after they were used; a crash or a wrong result there fails this executable.
  problem p(1, 2, 1, 300, 300, 32, 32, 62);
  std::vector<float> out(p.out_size());
  options o;
  o.num_threads = 2;
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  CHECK(std::isfinite(out[0]));
}
