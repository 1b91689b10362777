// attention_with_kv_cache against the float64 oracle: dense caches (BSHD and BHSD,
// every compiled arch), 16-bit and q8 caches, paged caches with shuffled pages,
// rotary embedding against a naive rotary, the bytes of the cache after an append,
// and q8 against a float cache holding the dequantised values (bitwise).
// Every slot past a sequence's tokens holds NaN, so a read beyond cache_seqlens
// shows. Tolerance: max|out − oracle| ≤ 2e-5·max|oracle| (the oracle reads the
// values the cache stores: conversion and quantisation errors are not the kernel's;
// test_kv_cache_variants.cpp bounds the q8 error against the float cache).
#include <catch2/catch.hpp>

#include "kv_cache_support.hpp"

using namespace kvt;

namespace {
constexpr double tol = 2e-5;

struct setup {
  index_t B = 2, Hq = 8, Hkv = 2, Lmax = 128, D = 40, Dv = 24, Lq = 1, Lnew = 1;
  std::vector<std::int64_t> seqlens{37, 90};
  bool bshd_layout = true;
  options base{.causal = causal::bottom_right};
  std::uint32_t seed = 7;
};

/// The cache's rows after the call: untouched outside [seqlen, seqlen + Lnew),
/// the new rows (rotated keys) inside it.
template <class Cache, class T>
void check_rows(Cache& cache, const std::vector<T>& k_before, const std::vector<T>& v_before, const setup& s,
                const std::vector<float>& kn, const std::vector<float>& vn, const rotary_embedding* rot) {
  const std::size_t kb = detail::row_bytes<T>(s.D), vb = detail::row_bytes<T>(s.Dv);
  for (index_t b = 0; b < s.B; ++b)
    for (index_t g = 0; g < s.Hkv; ++g)
      for (index_t j = 0; j < s.Lmax; ++j) {
        const index_t t = j - s.seqlens[static_cast<std::size_t>(b)];
        const T* kr = cache.row(true, b, g, j);
        const T* vr = cache.row(false, b, g, j);
        INFO("batch " << b << " head " << g << " token " << j);
        if (t < 0 || t >= s.Lnew) {
          REQUIRE(std::memcmp(kr, k_before.data() + (kr - cache.k.data()), kb) == 0);
          REQUIRE(std::memcmp(vr, v_before.data() + (vr - cache.v.data()), vb) == 0);
          continue;
        }
        const float* kx = kn.data() + ((b * s.Hkv + g) * s.Lnew + t) * s.D;
        const float* vx = vn.data() + ((b * s.Hkv + g) * s.Lnew + t) * s.Dv;
        REQUIRE(std::memcmp(vr, stored<T>(vx, s.Dv).data(), vb) == 0);
        if (!rot) {
          REQUIRE(std::memcmp(kr, stored<T>(kx, s.D).data(), kb) == 0);
        } else {  // float rotation in the kernel vs double here
          const auto want = rotate_naive(*rot, j, kx, s.D);
          const auto got = values(kr, s.D);
          for (index_t i = 0; i < s.D; ++i)
            REQUIRE(std::abs(got[static_cast<std::size_t>(i)] - want[static_cast<std::size_t>(i)]) <=
                    1e-6 * (1.0 + std::abs(want[static_cast<std::size_t>(i)])));
        }
      }
}

/// One call on a dense cache of T: the cache's bytes, then the output vs the oracle.
template <class Arch, class T, class P = softmax>
void check_dense(const setup& s, const P& pol = {}, const rotary_embedding* rot = nullptr) {
  dense_cache<T> cache(s.B, s.Lmax, s.Hkv, s.D, s.Dv, s.bshd_layout, s.seqlens, s.seed);
  const auto q = randn(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.D), s.seed + 1);
  const auto kn = randn(static_cast<std::size_t>(s.B * s.Hkv * s.Lnew * s.D), s.seed + 2);
  const auto vn = randn(static_cast<std::size_t>(s.B * s.Hkv * s.Lnew * s.Dv), s.seed + 3);
  const auto k0 = cache.k, v0 = cache.v;
  std::vector<float> out(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Dv), -7.0f);
  kv_cache_options o;
  o.cache_seqlens = s.seqlens;
  if (s.Lnew > 0) {
    o.k_new = bhsd(kn.data(), s.B, s.Hkv, s.Lnew, s.D);
    o.v_new = bhsd(vn.data(), s.B, s.Hkv, s.Lnew, s.Dv);
  }
  o.attention = s.base;
  if (rot) o.rotary = *rot;
  attention_with_kv_cache<Arch>(pol, bhsd(q.data(), s.B, s.Hq, s.Lq, s.D), cache.kview(), cache.vview(),
                                bhsd(out.data(), s.B, s.Hq, s.Lq, s.Dv), o);
  check_rows(cache, k0, v0, s, kn, vn, rot);
  std::vector<std::int64_t> len = s.seqlens;
  for (auto& l : len) l += s.Lnew;
  std::vector<float> qe = q;
  if (rot)
    for (index_t b = 0; b < s.B; ++b)
      for (index_t r = 0; r < s.Hq * s.Lq; ++r) {
        const index_t i = r % s.Lq;
        const auto y = rotate_naive(*rot, len[static_cast<std::size_t>(b)] - s.Lq + i, q.data() + (b * s.Hq * s.Lq + r) * s.D, s.D);
        std::copy(y.begin(), y.end(), qe.begin() + (b * s.Hq * s.Lq + r) * s.D);
      }
  const auto e = compare(pol, qe, cache.floats(true), cache.floats(false), out, s.B, s.Hq, s.Hkv, s.Lq, s.Lmax, s.D,
                         s.Dv, len, s.base);
  INFO("arch " << simd::arch_name<Arch>() << " elements " << sizeof(T) << " B" << sizeof(T) << " Hq " << s.Hq << " Hkv "
               << s.Hkv << " Lq " << s.Lq << " Lnew " << s.Lnew << " Lmax " << s.Lmax << " D " << s.D << " Dv " << s.Dv
               << (s.bshd_layout ? " BSHD" : " BHSD"));
  CHECK(e.err <= tol);
  CHECK_FALSE(e.nan_mismatch);
}

template <class Arch, class T, class P = softmax>
void check_paged(setup s, index_t page_size, const P& pol = {}) {
  const index_t max_pages = detail::ceil_div(s.Lmax, page_size) + 1;
  std::vector<std::int64_t> reserve = s.seqlens;
  for (auto& r : reserve) r += s.Lnew;
  paged_buffers<T> cache(s.B, max_pages, page_size, s.Hkv, s.D, s.Dv, s.seqlens, reserve, s.seed);
  s.Lmax = max_pages * page_size;
  const auto q = randn(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.D), s.seed + 1);
  const auto kn = randn(static_cast<std::size_t>(s.B * s.Hkv * s.Lnew * s.D), s.seed + 2);
  const auto vn = randn(static_cast<std::size_t>(s.B * s.Hkv * s.Lnew * s.Dv), s.seed + 3);
  const auto k0 = cache.k, v0 = cache.v;
  std::vector<float> out(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Dv), -7.0f);
  kv_cache_options o;
  o.cache_seqlens = s.seqlens;
  o.block_table = cache.table;
  if (s.Lnew > 0) {
    o.k_new = bshd(kn.data(), s.B, s.Lnew, s.Hkv, s.D);  // BSHD new tokens: the views' strides are honoured
    o.v_new = bshd(vn.data(), s.B, s.Lnew, s.Hkv, s.Dv);
  }
  o.attention = s.base;
  attention_with_kv_cache<Arch>(pol, bhsd(q.data(), s.B, s.Hq, s.Lq, s.D), cache.kcache(), cache.vcache(),
                                bhsd(out.data(), s.B, s.Hq, s.Lq, s.Dv), o);
  // Bytes: pages nobody uses untouched; the new rows where the table says.
  const std::size_t kb = detail::row_bytes<T>(s.D), vb = detail::row_bytes<T>(s.Dv);
  std::vector<bool> page_used(static_cast<std::size_t>(cache.pages), false);
  for (auto e : cache.table)
    if (e >= 0) page_used[static_cast<std::size_t>(e)] = true;
  for (index_t p = 0; p < cache.pages; ++p)
    if (!page_used[static_cast<std::size_t>(p)]) {
      const std::size_t n = static_cast<std::size_t>(page_size * s.Hkv) * kb;
      REQUIRE(std::memcmp(reinterpret_cast<const char*>(cache.k.data()) + p * n, reinterpret_cast<const char*>(k0.data()) + p * n, n) == 0);
    }
  for (index_t b = 0; b < s.B; ++b)
    for (index_t g = 0; g < s.Hkv; ++g)
      for (index_t t = 0; t < reserve[static_cast<std::size_t>(b)]; ++t) {
        const T* kr = cache.row(true, b, g, t);
        const T* vr = cache.row(false, b, g, t);
        const index_t n = t - s.seqlens[static_cast<std::size_t>(b)];
        INFO("batch " << b << " head " << g << " token " << t);
        if (n < 0) {
          REQUIRE(std::memcmp(kr, k0.data() + (kr - cache.k.data()), kb) == 0);
          REQUIRE(std::memcmp(vr, v0.data() + (vr - cache.v.data()), vb) == 0);
        } else {
          REQUIRE(std::memcmp(kr, stored<T>(kn.data() + ((b * s.Lnew + n) * s.Hkv + g) * s.D, s.D).data(), kb) == 0);
          REQUIRE(std::memcmp(vr, stored<T>(vn.data() + ((b * s.Lnew + n) * s.Hkv + g) * s.Dv, s.Dv).data(), vb) == 0);
        }
      }
  const auto e = compare(pol, q, cache.floats(true, reserve), cache.floats(false, reserve), out, s.B, s.Hq, s.Hkv, s.Lq,
                         s.Lmax, s.D, s.Dv, reserve, s.base);
  INFO("arch " << simd::arch_name<Arch>() << " page_size " << page_size << " Lq " << s.Lq << " Lnew " << s.Lnew);
  CHECK(e.err <= tol);
  CHECK_FALSE(e.nan_mismatch);
}

template <class Tuple, class F>
void for_each_type(F&& f) {
  std::apply([&](auto... t) { (f(t), ...); }, Tuple{});
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("KV cache (float, dense): append then attend equals the oracle", "[kv_cache][oracle]", kvt::archs) {
  for (bool bshd_layout : {true, false})
    for (index_t Lnew : {0, 1, 3}) {
      setup s;
      s.bshd_layout = bshd_layout;
      s.Lnew = Lnew;
      s.Lq = std::max<index_t>(Lnew, 1);
      check_dense<TestType, float>(s);
    }
  setup mqa;  // MQA, speculative verification: 16 new tokens, causal among them
  mqa.Hq = 3, mqa.Hkv = 1, mqa.Lq = mqa.Lnew = 16, mqa.seqlens = {0, 77};
  check_dense<TestType, float>(mqa);
  setup non_causal = mqa;  // every new query sees every new key
  non_causal.base.causal = causal::none;
  check_dense<TestType, float>(non_causal);
  setup split;  // long caches, few heads: keys split in chunks of 512 and merged
  split.Lmax = 1300, split.seqlens = {1100, 513}, split.D = 16, split.Dv = 16, split.Lnew = 2, split.Lq = 2;
  check_dense<TestType, float>(split);
  setup many;  // many heads: one task per head, no split, even for long caches
  many.B = 4, many.Hq = 16, many.Hkv = 16, many.Lmax = 700, many.seqlens = {600, 1, 333, 650}, many.D = 16, many.Dv = 8;
  check_dense<TestType, float>(many);
  setup rows;  // 64 rows per kv head (Hq/Hkv = 4, 16 new tokens): the prefill skeleton, as attention()
  rows.Lq = rows.Lnew = 16;
  check_dense<TestType, float>(rows);
  setup options_set;  // window, softcap, ALiBi, sinks and a bias over the cache's Lmax keys
  const std::vector<float> slopes{0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f}, sinks{0.5f, -1, 2, 0, 0.1f, 3, -2, 1};
  const auto bias = randn(static_cast<std::size_t>(options_set.Lmax), 99);
  options_set.Lq = options_set.Lnew = 3;
  options_set.base.window = {20, 0};
  options_set.base.softcap = 30.0f;
  options_set.base.alibi_slopes = slopes;
  options_set.base.sinks = sinks;
  options_set.base.bias = bhsd(bias.data(), 1, 1, 1, options_set.Lmax);
  check_dense<TestType, float>(options_set);
}

TEST_CASE("KV cache (16-bit and q8, dense): the kernel reads exactly what the cache stores", "[kv_cache][oracle][dtype]") {
  for_each_type<two_archs>([](auto arch) {
    using A = decltype(arch);
    const auto each = [&](auto tag) {
      using T = decltype(tag);
      for (index_t Lq : {1, 4, 16}) {
        setup s;
        s.D = 64, s.Dv = 32;  // q8: multiples of 32
        s.Lq = s.Lnew = Lq;
        s.Hq = Lq == 16 ? 4 : 8;  // 32 rows per kv head at 16 new tokens: the prefill skeleton for 16-bit caches
        check_dense<A, T>(s);
      }
    };
    each(bfloat16{});
    each(float16{});
    each(block_q8<float16>{});
    each(block_q8<float>{});
  });
}

TEST_CASE("KV cache (paged): shuffled pages equal the oracle, new tokens land in their pages", "[kv_cache][paged]") {
  for_each_type<two_archs>([](auto arch) {
    using A = decltype(arch);
    for (index_t ps : {16, 48})
      for (index_t Lnew : {1, 5, 40}) {
        setup s;
        s.B = 3, s.seqlens = {0, 17, 95}, s.Lmax = 140, s.D = 64, s.Dv = 32;
        s.Lq = s.Lnew = Lnew;
        check_paged<A, float>(s, ps);
        check_paged<A, block_q8<float16>>(s, ps);
      }
    setup gqa;  // attend only (no new tokens), GQA 4:1, keys split in chunks across pages
    gqa.B = 1, gqa.Hq = 8, gqa.Lnew = 0, gqa.seqlens = {1000}, gqa.Lmax = 1024, gqa.D = 32, gqa.Dv = 32;
    check_paged<A, bfloat16>(gqa, 32);
  });
}

TEMPLATE_LIST_TEST_CASE("KV cache: rotary embedding of q and the new keys equals a naive rotary", "[kv_cache][rotary]",
                        kvt::two_archs) {
  for (bool interleaved : {false, true})
    for (index_t rd : {40, 16}) {
      rope_tables rope(200, rd, interleaved);
      setup s;
      s.Lq = s.Lnew = 3;
      check_dense<TestType, float>(s, softmax{}, &rope.emb);
      setup attend_only = s;  // no new keys: q alone is rotated, at the cache's last positions
      attend_only.Lnew = 0;
      check_dense<TestType, float>(attend_only, softmax{}, &rope.emb);
    }
}

TEMPLATE_LIST_TEST_CASE("KV cache: q8 equals a float cache holding the dequantised values, bitwise", "[kv_cache][q8]",
                        kvt::two_archs) {
  for (index_t Lq : {1, 4}) {
    setup s;
    s.D = 64, s.Dv = 64, s.Lq = Lq, s.Lnew = 0, s.seqlens = {700, 90}, s.Lmax = 720;
    dense_cache<block_q8<float16>> q8(s.B, s.Lmax, s.Hkv, s.D, s.Dv, true, s.seqlens, 5);
    dense_cache<float> fl(s.B, s.Lmax, s.Hkv, s.D, s.Dv, true, s.seqlens, 5);
    fl.k = q8.floats(true);  // BHSD values into a BHSD float cache
    fl.v = q8.floats(false);
    fl.bshd_layout = false;
    const auto q = randn(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.D), 3);
    std::vector<float> a(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Dv)), b(a.size());
    kv_cache_options o;
    o.cache_seqlens = s.seqlens;
    const auto qv = bhsd(q.data(), s.B, s.Hq, s.Lq, s.D);
    attention_with_kv_cache<TestType>(softmax{}, qv, q8.kview(), q8.vview(), bhsd(a.data(), s.B, s.Hq, s.Lq, s.Dv), o);
    attention_with_kv_cache<TestType>(softmax{}, qv, fl.kview(), fl.vview(), bhsd(b.data(), s.B, s.Hq, s.Lq, s.Dv), o);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }
}
