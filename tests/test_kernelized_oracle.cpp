// Linear (every feature map) and log-normal kernels vs the float64 oracle on every
// compiled arch, causal (both alignments) and not, decay, GQA, Lq≠Lk.
// Tolerance: max|out − oracle| ≤ 2e-5·max|oracle|.
#include <catch2/catch.hpp>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::compare_with_oracle;
using attnkit_test::problem;

namespace {
constexpr double tol = 2e-5;
}

TEMPLATE_LIST_TEST_CASE("linear and LLN match the oracle", "[linear][lln][oracle]", attnkit_test::archs) {
  const auto proj = feature::orthogonal_projection(96, 40, 7);
  const float decay[4] = {0.9f, 0.95f, 0.99f, 1.0f};
  struct shape {
    index_t Lq, Lk;
  };
  for (const shape s : {shape{150, 130}, shape{70, 200}, shape{1, 90}}) {
    problem p(2, 4, 2, s.Lq, s.Lk, 40, 24, 5);
    for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
      options o;
      o.causal = c;
      INFO("arch " << simd::arch_name<TestType>() << " causal " << static_cast<int>(c) << " Lq " << s.Lq << " Lk " << s.Lk);
      CHECK(compare_with_oracle<TestType>(linear{feature::elu_plus_one{}}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(linear{feature::relu{}}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(linear<feature::identity>{.normalize = false}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(linear{feature::favor_plus{proj.data(), 96}}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(linear{feature::cosformer{}}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(log_normal{}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(log_normal{.alpha = 0.7, .beta = 1.3}, p, o).out <= tol);
      CHECK(compare_with_oracle<TestType>(log_normal{.diag = true}, p, o).out <= tol);
      if (c != causal::none) CHECK(compare_with_oracle<TestType>(linear<feature::elu_plus_one>{.decay = decay}, p, o).out <= tol);
    }
  }
  const std::int64_t lens[2] = {0, 61};
  options o;
  o.key_lengths = lens;
  o.causal = causal::bottom_right;
  CHECK(compare_with_oracle<TestType>(linear{feature::elu_plus_one{}}, problem(2, 2, 1, 50, 100, 16, 8, 9), o).out <= tol);
  CHECK(compare_with_oracle<TestType>(log_normal{}, problem(2, 2, 1, 50, 100, 16, 8, 9), o).out <= tol);
  // β < 0: the key shift comes from each head's smallest key entry.
  CHECK(compare_with_oracle<TestType>(log_normal{.alpha = 0.9, .beta = -0.6}, problem(2, 2, 1, 50, 100, 16, 8, 9), o).out <= tol);
}

namespace {
/// A user-defined feature map (e.g. a learned Hedgehog-style map): φ(x) = softplus(x).
struct softplus_map {
  index_t output_dim(index_t d) const { return d; }
  template <class T>
  void operator()(const T* x, index_t d, const feature::context&, T* out) const {
    for (index_t i = 0; i < d; ++i) out[i] = std::log1p(std::exp(x[i]));
  }
};
static_assert(feature::feature_map<softplus_map, float> && feature::feature_map<softplus_map, double>);
}  // namespace

TEST_CASE("user feature maps run through the concept", "[linear][oracle]") {
  options o;
  o.causal = causal::top_left;
  CHECK(compare_with_oracle<simd::default_arch>(linear{softplus_map{}}, problem(1, 2, 2, 90, 90, 20, 12, 3), o).out <= tol);
}

TEST_CASE("kernelised variants reject options they do not define", "[linear][validation]") {
  problem p(1, 2, 1, 10, 10, 8, 8, 1);
  std::vector<float> out(p.out_size(), 5.0f);
  options o;
  o.window = {2, 2};
  CHECK_THROWS_AS(attention(linear{feature::relu{}}, p.qv(), p.kv(), p.vv(), p.ov(out), o), invalid_argument_error);
  const float decay[2] = {0.5f, 0.5f};
  CHECK_THROWS_WITH(attention(linear<feature::relu>{.decay = decay}, p.qv(), p.kv(), p.vv(), p.ov(out)),
                    Catch::Contains("policy.decay"));
  for (float x : out) CHECK(x == 5.0f);
}

TEST_CASE("causal linear attention's last row equals the non-causal result", "[linear]") {
  // The chunked causal path (state + masked intra-chunk tile) and the non-causal
  // path (state only) agree where their key sets coincide.
  problem p(1, 1, 1, 300, 300, 16, 8, 4);
  std::vector<float> a(p.out_size()), b(p.out_size());
  options c;
  c.causal = causal::top_left;
  attention(linear{feature::elu_plus_one{}}, p.qv(), p.kv(), p.vv(), p.ov(a), c);
  attention(linear{feature::elu_plus_one{}}, p.qv(), p.kv(), p.vv(), p.ov(b));
  for (index_t d = 0; d < 8; ++d)
    CHECK(a[static_cast<std::size_t>(299 * 8 + d)] == Approx(b[static_cast<std::size_t>(299 * 8 + d)]).epsilon(1e-5));
}

TEST_CASE("LLN's one-pass standard deviation holds on data far from zero", "[lln]") {
  // Mean 1000, σ ≈ 0.01: a naive Σx² − (Σx)²/n in double would keep ~4 digits.
  problem p(2, 3, 3, 37, 37, 40, 40, 5, 0.01f);
  std::vector<float> x = p.q;
  for (auto& e : x) e += 1000.0f;
  const auto view = bhsd(static_cast<const float*>(x.data()), p.B, p.Hq, p.Lq, p.D);
  double mean = 0, m2 = 0;
  for (float e : x) mean += e;
  mean /= static_cast<double>(x.size());
  for (float e : x) m2 += (e - mean) * (e - mean);
  const double ref = std::sqrt(m2 / static_cast<double>(x.size() - 1));
  workspace ws;
  for (int threads : {1, 3}) {
    const double got = detail::sample_std_of(view, threads, ws);
    CHECK(std::abs(got - ref) <= 1e-9 * ref);
  }
  CHECK(detail::sample_std_of(view, 1, ws) == detail::sample_std_of(view, 3, ws));  // thread-count independent
}

TEST_CASE("LLN's key shift is the largest β·k over each head's valid keys", "[lln]") {
  // The shift comes from per-head extremes gathered in the σ pass (fl(β·max k) for
  // β > 0, fl(β·min k) for β < 0): it must equal the brute-force max of fl(β·k_j,d)
  // over valid keys, NaN skipped, ±inf kept, rows past a key length ignored, and 0
  // when no product is a number above −inf. D = 21 exercises the non-multiple-of-8 tail.
  constexpr float inf = std::numeric_limits<float>::infinity();
  problem p(2, 4, 2, 9, 50, 21, 8, 41);
  const index_t D = p.D, L = p.Lk;
  auto at = [&](index_t b, index_t g, index_t j, index_t d) -> float& {
    return p.k[static_cast<std::size_t>(((b * p.Hkv + g) * L + j) * D + d)];
  };
  at(0, 0, 3, 20) = std::numeric_limits<float>::quiet_NaN();
  at(1, 1, 10, 2) = inf;   // valid key: β > 0 gives shift +inf
  at(1, 0, 45, 7) = -inf;  // past batch 1's key length: ignored
  at(0, 1, 29, 20) = 1e6f;  // last valid key of batch 0, in the tail
  const std::int64_t lens[2] = {30, 40};
  options o;
  o.key_lengths = lens;
  workspace ws;
  problem_shape sh{};
  sh.batch = p.B, sh.q_heads = p.Hq, sh.kv_heads = p.Hkv, sh.q_len = p.Lq, sh.k_len = L, sh.head_dim = D, sh.value_dim = p.Dv;
  for (const double beta : {1.3, -0.8, 0.0, 1e-3}) {
    log_normal pol{.alpha = 1.0, .beta = beta};
    detail::lln_feature_pair<simd::default_arch> f;
    detail::lln_features<simd::default_arch>(pol, sh, p.qv(), p.kv(), o, f, ws);
    for (index_t b = 0; b < p.B; ++b)
      for (index_t g = 0; g < p.Hkv; ++g) {
        float m = -inf;
        for (index_t j = 0; j < lens[b]; ++j)
          for (index_t d = 0; d < D; ++d)
            if (const float y = static_cast<float>(beta) * at(b, g, j, d); y > m) m = y;
        INFO("beta " << beta << " batch " << b << " head " << g);
        CHECK(f.shift[static_cast<std::size_t>(b * p.Hkv + g)] == (m == -inf ? 0.0f : m));
      }
  }
  // σ over every entry (key lengths do not apply), D % 8 ≠ 0, against a two-pass sum.
  problem s(2, 3, 3, 17, 17, 21, 8, 43, 2.0f);
  const auto view = s.qv();
  double mean = 0, m2 = 0;
  for (float e : s.q) mean += e;
  mean /= static_cast<double>(s.q.size());
  for (float e : s.q) m2 += (e - mean) * (e - mean);
  CHECK(std::abs(detail::sample_std_of(view, 2, ws) - std::sqrt(m2 / static_cast<double>(s.q.size() - 1))) <= 1e-12 * std::sqrt(m2));
}
