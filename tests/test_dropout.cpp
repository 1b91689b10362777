// Philox-4x32 (core/philox.hpp) and the dropout mask (core/dropout.hpp):
// - known answers: the Random123 test vectors (tests/kat_vectors of
//   github.com/DEShawResearch/random123) for philox4x32 with 7 and 10 rounds;
// - mask statistics: keep rate 1 − p and pairwise independence of neighbouring
//   elements / offsets within 5 binomial standard deviations;
// - a pure function: the same bits in any order, from any thread;
// - the forward oracle's semantics (weights after normalisation, kept ones scaled
//   by 1/(1 − p); unbiased over seeds) and validation (the kernels refuse it).
#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "reference_util.hpp"

using namespace attnkit;
using random::philox_counter;
using random::philox_key;

namespace {

struct kat {
  int rounds;
  philox_counter ctr;
  philox_key key;
  philox_counter expect;
};

// Random123 tests/kat_vectors, the "philox4x32 7" and "philox4x32 10" lines:
// counter (4 words), key (2 words), expected output (4 words).
constexpr kat kats[] = {
    {7, {0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000}, {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
    {7, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
    {7, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
    {10, {0x00000000, 0x00000000, 0x00000000, 0x00000000}, {0x00000000, 0x00000000}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {10, {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {10, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

// Also at compile time: the generator is constexpr.
static_assert(random::philox4x32_10(kats[5].ctr, kats[5].key) == kats[5].expect);

/// Within 5 standard deviations of a binomial(n, q) count.
bool binomial_ok(double count, double n, double q) { return std::abs(count - n * q) <= 5 * std::sqrt(n * q * (1 - q)); }

}  // namespace

TEST_CASE("philox4x32: Random123 known-answer vectors", "[dropout][philox]") {
  for (const kat& k : kats) {
    INFO("rounds " << k.rounds << " ctr[0] " << k.ctr[0]);
    const auto got = k.rounds == 7 ? random::philox4x32<7>(k.ctr, k.key) : random::philox4x32_10(k.ctr, k.key);
    CHECK(got == k.expect);
  }
}

TEST_CASE("dropout mask: keep rate 1 - p and independent neighbours", "[dropout]") {
  const index_t B = 2, H = 3, Lq = 150, Lk = 203;  // Lk odd: partial Philox blocks at row ends
  for (float p : {0.1f, 0.5f, 0.9f}) {
    INFO("p = " << p);
    const dropout_mask m(dropout{p, 42, 7});
    REQUIRE(m.active());
    CHECK(m.scale() == 1.0 / (1.0 - static_cast<double>(p)));
    double n = 0, kept = 0, pairs_j = 0, both_j = 0, pairs_i = 0, both_i = 0, pairs_h = 0, both_h = 0;
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < Lq; ++i)
          for (index_t j = 0; j < Lk; ++j) {
            const bool x = m.keep(b, h, i, j);
            n += 1, kept += x;
            if (j + 1 < Lk) pairs_j += 1, both_j += x && m.keep(b, h, i, j + 1);
            if (i + 1 < Lq) pairs_i += 1, both_i += x && m.keep(b, h, i + 1, j);
            if (h + 1 < H) pairs_h += 1, both_h += x && m.keep(b, h + 1, i, j);
          }
    const double q = 1.0 - p;
    CHECK(binomial_ok(kept, n, q));
    CHECK(binomial_ok(both_j, pairs_j, q * q));
    CHECK(binomial_ok(both_i, pairs_i, q * q));
    CHECK(binomial_ok(both_h, pairs_h, q * q));
    // Another offset (the next call) and another seed draw unrelated masks.
    for (const dropout other : {dropout{p, 42, 8}, dropout{p, 43, 7}}) {
      const dropout_mask m2(other);
      double agree = 0, total = 0;
      for (index_t i = 0; i < Lq; ++i)
        for (index_t j = 0; j < Lk; ++j) agree += m.keep(1, 2, i, j) == m2.keep(1, 2, i, j), total += 1;
      CHECK(binomial_ok(agree, total, q * q + (1 - q) * (1 - q)));
    }
  }
  // The rule in the header, spelled out: word j mod 4 of the block (j/4, i, h, b) under the call key.
  const dropout d{0.3f, 0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  const dropout_mask m(d);
  const auto key = random::philox4x32_10({0x76543210u, 0xfedcba98u, 0u, 0u}, {0x89abcdefu, 0x01234567u});
  CHECK(m.key() == philox_key{key[0], key[1]});
  const auto blk = random::philox4x32_10({2u, 5u, 1u, 3u}, m.key());
  const auto t = static_cast<std::uint32_t>(std::floor(0.3f * 4294967296.0));
  CHECK(m.threshold() == t);
  for (index_t j = 8; j < 12; ++j) CHECK(m.keep(3, 1, 5, j) == (blk[static_cast<std::size_t>(j - 8)] >= t));
  CHECK_FALSE(dropout_mask(dropout{}).active());
  CHECK(dropout_mask(dropout{}).factor(0, 0, 0, 0) == 1.0);
}

TEST_CASE("dropout mask: a pure function, the same from any thread in any order", "[dropout]") {
  const dropout_mask m(dropout{0.4f, 9, 1});
  const index_t H = 4, L = 97;
  std::vector<char> serial(static_cast<std::size_t>(H * L * L)), threaded(serial.size());
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < L; ++i)
      for (index_t j = 0; j < L; ++j) serial[static_cast<std::size_t>((h * L + i) * L + j)] = m.keep(0, h, i, j);
  auto worker = [&](index_t first, index_t step) {  // interleaved rows, keys in reverse
    for (index_t r = first; r < H * L; r += step)
      for (index_t j = L - 1; j >= 0; --j) threaded[static_cast<std::size_t>(r * L + j)] = m.keep(0, r / L, r % L, j);
  };
  std::thread a(worker, 0, 3), b(worker, 1, 3), c(worker, 2, 3);
  a.join(), b.join(), c.join();
  CHECK(serial == threaded);
}

TEST_CASE("dropout in the forward oracle: dropped weights after normalisation, kept ones scaled", "[dropout][reference]") {
  const index_t B = 2, Hq = 2, Hkv = 1, Lq = 5, Lk = 9, D = 4, Dv = 3;
  reftest::tensor q(B, Hq, Lq, D, 1), k(B, Hkv, Lk, D, 2), v(B, Hkv, Lk, Dv, 3), o(B, Hq, Lq, Dv), o0(B, Hq, Lq, Dv);
  options opt;
  opt.causal = causal::bottom_right;
  opt.dropout = {0.35f, 11, 4};
  reference::extras ex;
  ex.keep_weights = true;
  auto check_policy = [&](const auto& pol) {
    const auto r = reference::attention(pol, q.cv(), k.cv(), v.cv(), o.v(), opt, ex);
    const dropout_mask m(opt.dropout);
    double worst = 0;
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t i = 0; i < Lq; ++i)
          for (index_t d = 0; d < Dv; ++d) {
            double expect = 0;  // Σ_j w_ij · keep/(1−p) · v_j from the undropped weights
            for (index_t j = 0; j < Lk; ++j)
              expect += r.weights[static_cast<std::size_t>(r.element(b, h, i, j))] * m.factor(b, h, i, j) * v.at(b, 0, j, d);
            worst = std::max(worst, std::abs(o.at(b, h, i, d) - expect));
          }
    CHECK(worst <= 1e-12);
  };
  check_policy(softmax{});
  check_policy(sigmoid{});
  // Unbiased: the mean over many seeds approaches the output without dropout.
  reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o0.v(), options{.causal = causal::bottom_right});
  const int seeds = 3000;
  std::vector<double> sum(o.x.size(), 0.0), sq(o.x.size(), 0.0);
  for (int s = 0; s < seeds; ++s) {
    opt.dropout.seed = static_cast<std::uint64_t>(s);
    reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    for (std::size_t x = 0; x < o.x.size(); ++x) sum[x] += o.x[x], sq[x] += o.x[x] * o.x[x];
  }
  for (std::size_t x = 0; x < o.x.size(); ++x) {
    const double mean = sum[x] / seeds, var = sq[x] / seeds - mean * mean;
    CHECK(std::abs(mean - o0.x[x]) <= 5 * std::sqrt(std::max(var, 1e-30) / seeds) + 1e-12);
  }
}

TEST_CASE("dropout validation: p in [0, 1); entry points without dropout refuse it", "[dropout][validation]") {
  reftest::tensor q(1, 1, 3, 4, 1), k(1, 1, 5, 4, 2), v(1, 1, 5, 4, 3), o(1, 1, 3, 4);
  for (float p : {-0.1f, 1.0f, 1.5f, std::nanf("")}) {
    options opt;
    opt.dropout.p = p;
    try {
      reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
      FAIL("p = " << p << " accepted");
    } catch (const invalid_argument_error& e) {
      CHECK(e.argument() == "options.dropout");
    }
  }
  std::vector<float> qf(12, 0.5f), kf(20, 0.25f), vf(20, 1.0f), out(12, -3.0f);
  options opt;
  opt.dropout = {0.1f, 1, 2};
  // attention() and attention_backward() implement dropout; the packed-batch entry
  // point does not and refuses it before writing anything.
  const std::int64_t cu_q[2] = {0, 3}, cu_k[2] = {0, 5};
  try {
    attention_varlen<simd::scalar>(softmax{}, bhsd(static_cast<const float*>(qf.data()), 1, 1, 3, 4),
                                   bhsd(static_cast<const float*>(kf.data()), 1, 1, 5, 4),
                                   bhsd(static_cast<const float*>(vf.data()), 1, 1, 5, 4), bhsd(out.data(), 1, 1, 3, 4),
                                   cu_q, cu_k, opt);
    FAIL("attention_varlen accepted dropout");
  } catch (const invalid_argument_error& e) {
    CHECK(e.argument() == "options.dropout");
    CHECK(std::string(e.what()).find("does not implement dropout") != std::string::npos);
  }
  for (float x : out) CHECK(x == -3.0f);  // nothing written
  try {
    attention<simd::scalar>(linear{feature::elu_plus_one{}}, bhsd(static_cast<const float*>(qf.data()), 1, 1, 3, 4),
                            bhsd(static_cast<const float*>(kf.data()), 1, 1, 5, 4),
                            bhsd(static_cast<const float*>(vf.data()), 1, 1, 5, 4), bhsd(out.data(), 1, 1, 3, 4), opt);
    FAIL("a kernelised policy accepted dropout");
  } catch (const invalid_argument_error& e) {
    CHECK(e.argument() == "options.dropout");
  }
  for (float x : out) CHECK(x == -3.0f);
  opt.dropout.p = 0.0f;  // off: the kernel runs
  attention<simd::scalar>(softmax{}, bhsd(static_cast<const float*>(qf.data()), 1, 1, 3, 4),
                          bhsd(static_cast<const float*>(kf.data()), 1, 1, 5, 4),
                          bhsd(static_cast<const float*>(vf.data()), 1, 1, 5, 4), bhsd(out.data(), 1, 1, 3, 4), opt);
  CHECK(out[0] == Approx(1.0f));
  // The counter's fields bound the extents with dropout on (and only then).
  const dropout on{0.5f, 0, 0};
  const index_t big = (index_t{1} << 32) + 1;
  CHECK_THROWS_AS(detail::check_dropout(on, big, 1, 1, 1), invalid_argument_error);
  CHECK_THROWS_AS(detail::check_dropout(on, 1, big, 1, 1), invalid_argument_error);
  CHECK_THROWS_AS(detail::check_dropout(on, 1, 1, big, 1), invalid_argument_error);
  CHECK_THROWS_AS(detail::check_dropout(on, 1, 1, 1, (index_t{1} << 34) + 1), invalid_argument_error);
  CHECK_NOTHROW(detail::check_dropout(on, index_t{1} << 32, 1, index_t{1} << 32, index_t{1} << 34));
  CHECK_NOTHROW(detail::check_dropout(dropout{}, big, big, big, big));
}
