// The exact entropy diagnostic of kernelised variants vs the float64 oracle's
// per-row entropy and mass, for all rows and for a seeded sample.
// Tolerance: |ΔH| ≤ 1e-4·max(1, log n), relative mass error ≤ 1e-4.
#include <catch2/catch.hpp>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::problem;

TEST_CASE("kernelized_entropy matches the oracle's row entropy", "[entropy][linear]") {
  const float decay[4] = {0.97f, 0.98f, 0.99f, 1.0f};
  problem p(2, 4, 2, 90, 120, 16, 8, 71);
  for (causal c : {causal::none, causal::bottom_right})
    for (bool with_decay : {false, true}) {
      if (with_decay && c == causal::none) continue;
      linear<feature::elu_plus_one> pol;
      if (with_decay) pol.decay = decay;
      options o;
      o.causal = c;
      std::vector<double> ref_out(p.out_size());
      const auto ref = reference::attention(pol, p.qv(), p.kv(), p.vv(), bhsd(ref_out.data(), 2, 4, 90, 8), o);
      entropy_stats all, sampled;
      kernelized_entropy(pol, p.qv(), p.kv(), p.vv(), o, observe(all));
      kernelized_entropy(pol, p.qv(), p.kv(), p.vv(), o, observe(sampled), 10, 42);
      CHECK(all.complete());
      index_t seen = 0;
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < 4; ++h)
          for (index_t i = 0; i < 90; ++i) {
            const auto r = static_cast<std::size_t>(ref.row(b, h, i));
            const auto x = static_cast<std::size_t>(all.index(b, h, i));
            if (ref.allowed[r] == 0) continue;
            const double tolH = 1e-4 * std::max(1.0, std::log(static_cast<double>(ref.allowed[r])));
            CHECK(std::abs(all.entropy[x] - ref.entropy[r]) <= tolH);
            CHECK(std::abs(all.mass[x] - ref.mass[r]) <= 1e-4 * std::abs(ref.mass[r]));
            if (!std::isnan(sampled.entropy[x])) {
              ++seen;
              CHECK(std::abs(sampled.entropy[x] - ref.entropy[r]) <= tolH);
            }
          }
      CHECK(seen == 2 * 4 * 10);  // 10 sampled rows per head, the same rows for every head
    }
}

TEST_CASE("kernelized_entropy of LLN matches the oracle", "[entropy][lln]") {
  problem p(1, 2, 1, 60, 60, 16, 8, 72);
  options o;
  o.causal = causal::top_left;
  std::vector<double> ref_out(p.out_size());
  const auto ref = reference::attention(log_normal{}, p.qv(), p.kv(), p.vv(), bhsd(ref_out.data(), 1, 2, 60, 8), o);
  entropy_stats st;
  kernelized_entropy(log_normal{}, p.qv(), p.kv(), p.vv(), o, observe(st));
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 60; ++i) {
      const auto r = static_cast<std::size_t>(ref.row(0, h, i));
      CHECK(std::abs(st.entropy[static_cast<std::size_t>(st.index(0, h, i))] - ref.entropy[r]) <=
            1e-4 * std::max(1.0, std::log(static_cast<double>(ref.allowed[r]))));
    }
}

TEST_CASE("observers on sparse and permutation calls count the allowed set", "[entropy][sparse]") {
  problem p(1, 2, 1, 120, 120, 16, 8, 73);
  std::vector<float> out(p.out_size());
  std::vector<double> ref_out(p.out_size());
  auto compare = [&](const auto& pol) {
    entropy_stats st;
    attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), {}, observe(st));
    const auto ref = reference::attention(pol, p.qv(), p.kv(), p.vv(), bhsd(ref_out.data(), 1, 2, 120, 8));
    CHECK(st.complete());
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 120; ++i) {
        const auto r = static_cast<std::size_t>(ref.row(0, h, i));
        const auto x = static_cast<std::size_t>(st.index(0, h, i));
        CHECK(st.allowed[x] == ref.allowed[r]);
        CHECK(std::abs(st.entropy[x] - ref.entropy[r]) <= 1e-4 * std::max(1.0, std::log(static_cast<double>(ref.allowed[r]))));
      }
  };
  compare(sparse{pattern::sink_window{4, 20}});
  compare(sparse{pattern::dilated_window{5, 3}});
  compare(stochastic_permutation{.window = 16, .seed = 5});
}
