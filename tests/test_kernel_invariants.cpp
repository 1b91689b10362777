// Kernel properties that need no oracle: determinism across thread counts,
// exact partial merges, 16-bit K/V storage, packed variable-length batches.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <cstdlib>
#include <thread>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::max_abs;
using attnkit_test::max_abs_diff;
using attnkit_test::problem;

namespace {
template <class T>
tensor_view<T> keys_slice(tensor_view<T> t, index_t from, index_t len) {
  t.data += from * t.stride[seq_axis];
  t.extent[seq_axis] = len;
  return t;
}
}  // namespace

TEST_CASE("kernels are bitwise identical for 1, 2, 3 and 16 threads", "[determinism]") {
  struct shape {
    index_t B, Hq, Hkv, Lq, Lk, D;
  };
  for (const shape s : {shape{2, 4, 2, 301, 517, 64}, shape{1, 8, 2, 1, 2100, 128}, shape{3, 2, 1, 2, 1000, 40}}) {
    problem p(s.B, s.Hq, s.Hkv, s.Lq, s.Lk, s.D, s.D, 11);
    for (int variant = 0; variant < 2; ++variant) {
      std::vector<float> ref(p.out_size()), out(p.out_size());
      options o;
      o.causal = causal::bottom_right;
      o.num_threads = 1;
      if (variant == 0)
        attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(ref), o);
      else
        attention(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(ref), o);
      for (int threads : {2, 3, 16, 1}) {
        o.num_threads = threads;
        std::fill(out.begin(), out.end(), -1.0f);
        if (variant == 0)
          attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
        else
          attention(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
        INFO("threads " << threads << " Lq " << s.Lq << " variant " << variant);
        CHECK(std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("banded calls (lazily packed K/V tiles) are exact for any thread count", "[determinism][sparse]") {
  // Local windows pack each key tile when the first query block needs it, from
  // whichever thread gets there first; the result must not depend on that.
  problem p(2, 6, 2, 700, 700, 40, 24, 17);
  const index_t key0 = 3;  // one kv head's V row: NaN (only the rows that see it may be NaN)
  const auto run = [&](auto pol, const options& base, std::vector<float>& out, int threads) {
    options o = base;
    o.num_threads = threads;
    std::fill(out.begin(), out.end(), -1.0f);
    attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  };
  options win;
  win.window = {64, 0};
  win.causal = causal::bottom_right;
  for (bool nan_v : {false, true}) {
    if (nan_v) p.v[static_cast<std::size_t>(key0 * 24)] = std::numeric_limits<float>::quiet_NaN();  // b 0, kv head 0
    std::vector<float> ref(p.out_size()), out(p.out_size()), clean(p.out_size());
    for (int variant = 0; variant < 2; ++variant) {
      if (variant == 0)
        run(softmax{}, win, ref, 1);
      else
        run(sparse{pattern::sliding_window{64, 0}}, options{}, ref, 1);
      for (int threads : {2, 3, 16}) {
        if (variant == 0)
          run(softmax{}, win, out, threads);
        else
          run(sparse{pattern::sliding_window{64, 0}}, options{}, out, threads);
        INFO("threads " << threads << " variant " << variant << " NaN in V " << nan_v);
        CHECK(std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0);
      }
      if (!nan_v || variant == 1) continue;  // the pattern sees the same keys: one comparison is enough
      // Query heads 0..2 (kv head 0, batch 0): rows past the window of key0 never see it.
      std::vector<float> v0 = p.v;
      v0[static_cast<std::size_t>(key0 * 24)] = 0.5f;
      std::swap(p.v, v0);
      run(softmax{}, win, clean, 2);
      std::swap(p.v, v0);
      for (index_t h = 0; h < 3; ++h)
        for (index_t i = 0; i < 700; ++i) {
          const std::size_t at = static_cast<std::size_t>((h * 700 + i) * 24);
          const bool sees = i >= key0 && i <= key0 + 64;
          INFO("head " << h << " row " << i);
          if (sees)
            CHECK(std::isnan(ref[at]));
          else
            CHECK(std::memcmp(ref.data() + at, clean.data() + at, 24 * sizeof(float)) == 0);
        }
    }
  }
}

TEST_CASE("stochastic permutation: rank-order packing is exact for any thread count and 16-bit K/V",
          "[determinism][permutation][dtype]") {
  // The skeleton reads Q/K/V rows and writes O rows through the permutation (no
  // permuted copies): the scheduling of those scattered rows must not matter.
  problem p(2, 4, 2, 301, 301, 40, 24, 41);
  const stochastic_permutation pol{.window = 48, .seed = 9};
  options o;
  o.num_threads = 1;
  std::vector<float> lse_ref(2 * 4 * 301), lse(lse_ref.size());
  o.lse = lse_ref.data();
  std::vector<float> ref(p.out_size()), out(p.out_size());
  attention(pol, p.qv(), p.kv(), p.vv(), p.ov(ref), o);
  for (int threads : {2, 3, 16}) {
    o.num_threads = threads;
    o.lse = lse.data();
    std::fill(out.begin(), out.end(), -1.0f);
    attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    INFO("threads " << threads);
    CHECK(std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(lse.data(), lse_ref.data(), lse.size() * sizeof(float)) == 0);
  }
  // The calling thread caches the last drawn permutations: a different seed or
  // layer must redraw them, and coming back must give the first result again.
  {
    options plain;
    std::vector<float> first(p.out_size()), other(p.out_size()), again(p.out_size());
    attention(pol, p.qv(), p.kv(), p.vv(), p.ov(first), plain);
    attention(stochastic_permutation{.window = 48, .seed = 10}, p.qv(), p.kv(), p.vv(), p.ov(other), plain);
    CHECK(std::memcmp(first.data(), other.data(), first.size() * sizeof(float)) != 0);
    attention(stochastic_permutation{.window = 48, .seed = 9, .layer = 1}, p.qv(), p.kv(), p.vv(), p.ov(other), plain);
    CHECK(std::memcmp(first.data(), other.data(), first.size() * sizeof(float)) != 0);
    attention(pol, p.qv(), p.kv(), p.vv(), p.ov(again), plain);
    CHECK(std::memcmp(first.data(), again.data(), first.size() * sizeof(float)) == 0);
  }
  // bf16 K/V storage equals float K/V holding the same values.
  std::vector<bfloat16> kh(p.k.size()), vh(p.v.size());
  for (std::size_t i = 0; i < p.k.size(); ++i) p.k[i] = (kh[i] = bfloat16::from_float(p.k[i])).to_float();
  for (std::size_t i = 0; i < p.v.size(); ++i) p.v[i] = (vh[i] = bfloat16::from_float(p.v[i])).to_float();
  options plain;
  attention(pol, p.qv(), p.kv(), p.vv(), p.ov(ref), plain);
  attention(pol, p.qv(), bhsd(static_cast<const bfloat16*>(kh.data()), 2, 2, 301, 40),
            bhsd(static_cast<const bfloat16*>(vh.data()), 2, 2, 301, 24), p.ov(out), plain);
  CHECK(std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0);
}

TEST_CASE("merge_partials of two key halves equals the whole (prefill and decode)", "[merge]") {
  // Tolerance: 2e-6 × max|out| (two fp32 results combined with fp32 weights).
  for (index_t Lq : {index_t{1}, index_t{77}}) {
    problem p(2, 4, 2, Lq, 300, 32, 24, 21);
    std::vector<float> whole(p.out_size()), o1(p.out_size()), o2(p.out_size()), merged(p.out_size());
    const std::size_t rows = static_cast<std::size_t>(p.B * p.Hq * Lq);
    std::vector<float> lse(rows), lse1(rows), lse2(rows), lsem(rows);
    options o;
    o.lse = lse.data();
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(whole), o);
    const index_t split = 123;
    o.lse = lse1.data();
    attention(softmax{}, p.qv(), keys_slice(p.kv(), 0, split), keys_slice(p.vv(), 0, split), p.ov(o1), o);
    o.lse = lse2.data();
    attention(softmax{}, p.qv(), keys_slice(p.kv(), split, 300 - split), keys_slice(p.vv(), split, 300 - split),
              p.ov(o2), o);
    merge_partials(p.ov(o1), lse1.data(), p.ov(o2), lse2.data(), p.ov(merged), lsem.data());
    CHECK(max_abs_diff(merged, whole) <= 2e-6 * max_abs(whole));
    for (std::size_t r = 0; r < rows; ++r) CHECK(lsem[r] == Approx(lse[r]).epsilon(1e-6));
  }
  SECTION("a fully-masked side contributes nothing") {
    problem p(1, 1, 1, 2, 4, 8, 8, 5);
    std::vector<float> o1(p.out_size(), 1.0f), o2(p.out_size(), std::numeric_limits<float>::quiet_NaN()),
        m(p.out_size());
    const float ninf = -std::numeric_limits<float>::infinity();
    float l1[2] = {0.5f, ninf}, l2[2] = {ninf, ninf}, lm[2];
    merge_partials(p.ov(o1), l1, p.ov(o2), l2, p.ov(m), lm);
    for (int d = 0; d < 8; ++d) CHECK(m[static_cast<std::size_t>(d)] == 1.0f);
    for (int d = 8; d < 16; ++d) CHECK(m[static_cast<std::size_t>(d)] == 0.0f);
    CHECK(lm[0] == 0.5f);
    CHECK(lm[1] == ninf);
  }
  SECTION("a NaN side makes the row NaN, also next to a fully-masked side") {
    problem p(1, 1, 1, 3, 4, 8, 8, 5);
    std::vector<float> o1(p.out_size(), 1.0f), o2(p.out_size(), std::numeric_limits<float>::quiet_NaN()),
        m(p.out_size());
    const float ninf = -std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    float l1[3] = {ninf, 0.5f, nan}, l2[3] = {nan, nan, ninf}, lm[3];
    merge_partials(p.ov(o1), l1, p.ov(o2), l2, p.ov(m), lm);
    for (float x : m) CHECK(std::isnan(x));
    for (float x : lm) CHECK(std::isnan(x));
  }
}

TEMPLATE_TEST_CASE("16-bit K/V storage equals float K/V holding the same values", "[dtype]", bfloat16, float16) {
  for (index_t Lq : {index_t{1}, index_t{90}}) {
    problem p(1, 4, 2, Lq, 700, 40, 24, 31);
    std::vector<TestType> kh(p.k.size()), vh(p.v.size());
    for (std::size_t i = 0; i < p.k.size(); ++i) {
      kh[i] = TestType::from_float(p.k[i]);
      p.k[i] = kh[i].to_float();
    }
    for (std::size_t i = 0; i < p.v.size(); ++i) {
      vh[i] = TestType::from_float(p.v[i]);
      p.v[i] = vh[i].to_float();
    }
    std::vector<float> a(p.out_size()), b(p.out_size());
    attention(softmax{}, p.qv(), bhsd(static_cast<const TestType*>(kh.data()), 1, 2, 700, 40),
              bhsd(static_cast<const TestType*>(vh.data()), 1, 2, 700, 24), p.ov(a));
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(b));
    // Bitwise equal, except the decode path's bf16 logits on AVX512-BF16, which
    // split q into two bf16 halves (simd/decode_kernels.hpp): there the stated
    // tolerance is 1e-5 × max|out| (the split leaves 2^-18 of q per term).
    if (std::is_same_v<TestType, bfloat16> && Lq == 1 && simd::has_native_bf16_dot<simd::default_arch>) {
      float worst = 0.0f, scale = 0.0f;
      for (std::size_t i = 0; i < a.size(); ++i) {
        worst = std::max(worst, std::fabs(a[i] - b[i]));
        scale = std::max(scale, std::fabs(b[i]));
      }
      CHECK(worst <= 1e-5f * scale);
      CHECK(worst > 0.0f);  // the native path really ran
    } else {
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("16-bit conversions round to nearest even and keep specials", "[dtype]") {
  CHECK(bfloat16::from_float(1.0f).bits == 0x3f80);
  CHECK(bfloat16::from_float(1.00390625f).bits == 0x3f80);  // halfway: ties to even
  CHECK(bfloat16::from_float(1.01171875f).bits == 0x3f82);  // halfway: ties to even (up)
  CHECK(std::isnan(bfloat16::from_float(std::numeric_limits<float>::quiet_NaN()).to_float()));
  CHECK(float16::from_float(1.0f).bits == 0x3c00);
  CHECK(float16::from_float(65504.0f).bits == 0x7bff);
  CHECK(float16::from_float(1e6f).bits == 0x7c00);
  CHECK(float16::from_float(5.9604645e-8f).bits == 0x0001);  // smallest subnormal
  CHECK(float16::from_float(-2.0f).to_float() == -2.0f);
  for (std::uint32_t b = 0; b < 0x7c00; b += 7) {  // every finite half round-trips
    const float16 h{static_cast<std::uint16_t>(b)};
    CHECK(float16::from_float(h.to_float()).bits == h.bits);
  }
}

TEST_CASE("attention_varlen equals per-sequence calls", "[varlen]") {
  const std::int64_t cu_q[] = {0, 5, 5, 40, 41};
  const std::int64_t cu_k[] = {0, 9, 12, 50, 130};
  problem p(1, 4, 2, 41, 130, 16, 8, 41);
  std::vector<float> out(p.out_size()), lse(4 * 41);
  options o;
  o.causal = causal::bottom_right;
  o.lse = lse.data();
  attention_varlen(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), cu_q, cu_k, o);
  for (int b = 0; b < 4; ++b) {
    const index_t lq = cu_q[b + 1] - cu_q[b], lk = cu_k[b + 1] - cu_k[b];
    if (lq == 0) continue;
    std::vector<float> one(static_cast<std::size_t>(4 * lq * 8)), l1(static_cast<std::size_t>(4 * lq));
    options o1;
    o1.causal = causal::bottom_right;
    o1.lse = l1.data();
    attention(softmax{}, keys_slice(p.qv(), cu_q[b], lq), keys_slice(p.kv(), cu_k[b], lk),
              keys_slice(p.vv(), cu_k[b], lk), bhsd(one.data(), 1, 4, lq, 8), o1);
    for (index_t h = 0; h < 4; ++h)
      for (index_t i = 0; i < lq; ++i) {
        for (index_t d = 0; d < 8; ++d)
          CHECK(one[static_cast<std::size_t>((h * lq + i) * 8 + d)] ==
                out[static_cast<std::size_t>((h * 41 + cu_q[b] + i) * 8 + d)]);
        CHECK(l1[static_cast<std::size_t>(h * lq + i)] == lse[static_cast<std::size_t>(h * 41 + cu_q[b] + i)]);
      }
  }
  std::vector<float> untouched(p.out_size(), 7.0f);
  const std::int64_t bad[] = {0, 5, 3, 40, 41};
  CHECK_THROWS_WITH(attention_varlen(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(untouched), bad, cu_k),
                    Catch::Contains("cu_seqlens_q") && Catch::Contains("non-decreasing"));
  for (float x : untouched) REQUIRE(x == 7.0f);
}

TEST_CASE("thread count: options, then ATTNKIT_NUM_THREADS, then the hardware", "[threads]") {
  CHECK(resolve_num_threads(3) == 3);
  ::setenv("ATTNKIT_NUM_THREADS", "5", 1);
  CHECK(resolve_num_threads(0) == 5);
  CHECK(resolve_num_threads(2) == 2);
  ::setenv("ATTNKIT_NUM_THREADS", "nonsense", 1);  // reported, not ignored (test_lifecycle.cpp has more)
  CHECK_THROWS_AS(resolve_num_threads(0), invalid_argument_error);
  ::unsetenv("ATTNKIT_NUM_THREADS");
  CHECK(resolve_num_threads(0) == static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

TEST_CASE("concurrent calls from several user threads on shared inputs are safe and exact", "[threads]") {
  problem p(1, 4, 2, 200, 300, 32, 32, 77);
  std::vector<float> ref(p.out_size());
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(ref));
  std::vector<std::vector<float>> outs(4, std::vector<float>(p.out_size()));
  std::vector<std::thread> users;
  for (int u = 0; u < 4; ++u)
    users.emplace_back([&, u] {
      for (int rep = 0; rep < 3; ++rep) attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(outs[static_cast<std::size_t>(u)]));
    });
  for (auto& t : users) t.join();
  for (const auto& o : outs) CHECK(std::memcmp(o.data(), ref.data(), ref.size() * sizeof(float)) == 0);
}
