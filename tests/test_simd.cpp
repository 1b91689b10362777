// The SIMD layer on every architecture this build can run: exp2 accuracy,
// reductions, masking, and the two register micro-kernels against plain loops.
#include <catch2/catch.hpp>

#include <attnkit/simd/decode_kernels.hpp>
#include <attnkit/simd/microkernel.hpp>
#include <attnkit/simd/transpose.hpp>
#include <attnkit/simd/widen.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "support.hpp"

using namespace attnkit;

namespace {
/// Distance in units in the last place between two finite floats of the same sign.
std::int64_t ulp_distance(float a, float b) {
  const auto ia = static_cast<std::int64_t>(std::bit_cast<std::int32_t>(a));
  const auto ib = static_cast<std::int64_t>(std::bit_cast<std::int32_t>(b));
  return ia > ib ? ia - ib : ib - ia;
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("exp2_fast is within 2 ulp of exp2 on the kernel's range", "[simd]", simd::compiled_archs) {
  using O = simd::ops<TestType>;
  constexpr int W = O::width;
  INFO("arch " << simd::arch_name<TestType>());
  std::int64_t worst = 0;
  alignas(64) float in[64], out[64];
  for (float x0 = -124.0f; x0 < 30.0f; x0 += 0.37f * W) {
    for (int i = 0; i < W; ++i) in[i] = x0 + 0.37f * static_cast<float>(i) + 0.001f;
    O::store(out, O::exp2_fast(O::load(in)));
    for (int i = 0; i < W; ++i) worst = std::max(worst, ulp_distance(out[i], std::exp2(in[i])));
  }
  CHECK(worst <= 2);
  // Underflow and masked lanes are exact zeros; 0 gives exactly 1.
  for (int i = 0; i < W; ++i) in[i] = i % 2 ? -std::numeric_limits<float>::infinity() : -126.5f;
  O::store(out, O::exp2_fast(O::load(in)));
  for (int i = 0; i < W; ++i) CHECK(out[i] == 0.0f);
  O::store(out, O::exp2_fast(O::set1(0.0f)));
  CHECK(out[0] == 1.0f);
}

TEMPLATE_LIST_TEST_CASE("reductions, iota and masks", "[simd]", simd::compiled_archs) {
  using O = simd::ops<TestType>;
  constexpr int W = O::width;
  alignas(64) float in[64], out[64];
  for (int i = 0; i < W; ++i) in[i] = static_cast<float>((i * 7) % W) - 3.0f;
  const auto v = O::load(in);
  float mx = in[0], sum = 0;
  for (int i = 0; i < W; ++i) {
    mx = std::max(mx, in[i]);
    sum += in[i];
  }
  CHECK(O::reduce_max(v) == mx);
  CHECK(O::reduce_add(v) == Approx(sum));
  O::store(out, O::mask_range(v, O::iota(10.0f), 11.0f, 13.0f));
  for (int i = 0; i < W; ++i) {
    const bool keep = 10 + i >= 11 && 10 + i < 13;
    if (keep)
      CHECK(out[i] == in[i]);
    else
      CHECK(out[i] == -std::numeric_limits<float>::infinity());
  }
  std::uint8_t keep[64];  // mask bytes: any nonzero value keeps the lane
  for (int i = 0; i < W; ++i) keep[i] = i % 3 != 0 ? 0 : i % 2 != 0 ? 1 : 200;
  O::store(out, O::mask_bool(v, keep));
  for (int i = 0; i < W; ++i) CHECK((keep[i] ? out[i] == in[i] : std::isinf(out[i])));
  CHECK(O::count_finite(O::load(out)) == static_cast<float>((W + 2) / 3));
  // mask_bits: lane l kept iff bit l is set; bits at and above the width ignored.
  for (const std::uint32_t bits : {0u, 0xffffffffu, 0x5a5au, 0x80000001u, 0x12345u}) {
    O::store(out, O::mask_bits(v, bits));
    for (int i = 0; i < W; ++i)
      CHECK((((bits >> i) & 1u) ? out[i] == in[i] : out[i] == -std::numeric_limits<float>::infinity()));
  }
  // max/min: a > b ? a : b (a < b ? a : b) on every arch, so the second operand
  // when either is NaN (x86's maxps/minps; NEON's fmax would return NaN: ops uses
  // isa::max there), and b for equal operands (+0 vs −0). The kernels' NaN
  // handling relies on it.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float as[] = {1.0f, nan, 2.0f, nan, -inf, 0.0f, -0.0f, 3.0f};
  const float bs[] = {2.0f, 5.0f, nan, nan, -1.0f, -0.0f, 0.0f, -inf};
  constexpr int npairs = 8;
  alignas(64) float va[64], vb[64], mx_out[64], mn_out[64];
  for (int base = 0; base < npairs; base += W) {
    for (int i = 0; i < W; ++i) va[i] = as[(base + i) % npairs], vb[i] = bs[(base + i) % npairs];
    O::store(mx_out, O::max(O::load(va), O::load(vb)));
    O::store(mn_out, O::min(O::load(va), O::load(vb)));
    for (int i = 0; i < W; ++i) {
      INFO("a " << va[i] << " b " << vb[i]);
      const float emx = va[i] > vb[i] ? va[i] : vb[i], emn = va[i] < vb[i] ? va[i] : vb[i];
      CHECK(std::bit_cast<std::uint32_t>(mx_out[i]) == std::bit_cast<std::uint32_t>(emx));
      CHECK(std::bit_cast<std::uint32_t>(mn_out[i]) == std::bit_cast<std::uint32_t>(emn));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("qk_tile and pv_tile equal plain loops", "[simd]", simd::compiled_archs) {
  using O = simd::ops<TestType>;
  using shape = simd::tile_shape<TestType>;
  constexpr int R = shape::rows, NC = shape::key_vectors, W = O::width, BN = shape::keys;
  const long D = 19;
  const auto q = attnkit_test::randn(R * D, 1);
  const auto kt = attnkit_test::randn(static_cast<std::size_t>(D * BN), 2);  // [D][BN]
  typename O::vf acc[R][NC];
  simd::qk_tile<TestType, R, NC>(q.data(), D, kt.data(), D, acc);
  alignas(64) float row[BN];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NC; ++c) O::store(row + c * W, acc[r][c]);
    for (int j = 0; j < BN; ++j) {
      double ref = 0;
      for (long d = 0; d < D; ++d) ref += static_cast<double>(q[r * D + d]) * kt[d * BN + j];
      CHECK(row[j] == Approx(ref).margin(1e-5));
    }
  }
  // O[R][NV·W] = scale·O + P[R][keys]·V[keys][NV·W]
  constexpr int NV = shape::value_vectors;
  const long keys = 13, ldv = NV * W + 3, ldo = NV * W + 1;
  const auto p = attnkit_test::randn(R * keys, 3);
  const auto v = attnkit_test::randn(static_cast<std::size_t>(keys * ldv), 4);
  auto o = attnkit_test::randn(static_cast<std::size_t>(R * ldo), 5);
  const auto o0 = o;
  const float scale[6] = {1.0f, 0.5f, 2.0f, 0.0f, 1.0f, 0.25f};
  simd::pv_tile<TestType, R, NV>(p.data(), keys, v.data(), ldv, keys, o.data(), ldo, scale);
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < NV * W; ++d) {
      double ref = scale[r] * o0[static_cast<std::size_t>(r * ldo + d)];
      for (long j = 0; j < keys; ++j) ref += static_cast<double>(p[r * keys + j]) * v[j * ldv + d];
      CHECK(o[static_cast<std::size_t>(r * ldo + d)] == Approx(ref).margin(1e-5));
    }
}

TEMPLATE_LIST_TEST_CASE("transpose_16 and any_nonfinite equal plain loops", "[simd]", simd::compiled_archs) {
  for (long dim : {1L, 15L, 16L, 40L, 64L}) {  // vector blocks of 16 dims plus a scalar tail
    const long stride = dim + 3, ld = 64;
    std::vector<float> src(static_cast<std::size_t>(16 * stride)), dst(static_cast<std::size_t>(dim * ld), -1.0f);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.5f - 7.0f;
    simd::transpose_16<TestType>(src.data(), stride, dim, dst.data(), ld);
    for (long d = 0; d < dim; ++d)
      for (long i = 0; i < ld; ++i) {
        const float want = i < 16 ? src[static_cast<std::size_t>(i * stride + d)] : -1.0f;  // padding untouched
        REQUIRE(dst[static_cast<std::size_t>(d * ld + i)] == want);
      }
  }
  std::vector<float> x(37, 1.5f);
  CHECK_FALSE(simd::any_nonfinite<TestType>(x.data(), 37));
  for (std::size_t at : {std::size_t{0}, std::size_t{17}, std::size_t{36}})  // vector body and scalar tail
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      std::vector<float> y = x;
      y[at] = bad;
      CHECK(simd::any_nonfinite<TestType>(y.data(), 37));
    }
  x[3] = std::numeric_limits<float>::max();  // large but finite
  x[4] = std::numeric_limits<float>::denorm_min();
  CHECK_FALSE(simd::any_nonfinite<TestType>(x.data(), 37));
}

TEMPLATE_LIST_TEST_CASE("transpose_16 of scattered rows, copy_probe and fill equal plain loops", "[simd]",
                        simd::compiled_archs) {
  // Rows in a scrambled order (the packing of a reordered call), dims with a tail.
  for (long dim : {3L, 16L, 21L, 64L}) {
    const long ld = 48;
    std::vector<float> src(static_cast<std::size_t>(40 * dim)), dst(static_cast<std::size_t>(dim * ld), -1.0f);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.25f - 3.0f;
    const float* rows[16];
    for (int i = 0; i < 16; ++i) rows[i] = src.data() + ((i * 7 + 3) % 40) * dim;
    simd::transpose_16<TestType>(rows, dim, dst.data(), ld);
    for (long d = 0; d < dim; ++d)
      for (long i = 0; i < ld; ++i) {
        const float want = i < 16 ? rows[i][d] : -1.0f;
        REQUIRE(dst[static_cast<std::size_t>(d * ld + i)] == want);
      }
  }
  for (long n : {0L, 5L, 16L, 37L}) {  // empty, tail only, one vector, vectors + tail
    std::vector<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n) + 1, -2.0f);
    for (long i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(i) - 4.5f;
    CHECK_FALSE(simd::copy_probe<TestType>(x.data(), y.data(), n));
    for (long i = 0; i < n; ++i) REQUIRE(y[static_cast<std::size_t>(i)] == x[static_cast<std::size_t>(i)]);
    CHECK(y[static_cast<std::size_t>(n)] == -2.0f);  // nothing past n is written
    for (long at = 0; at < n; at += 6)
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
        std::vector<float> z = x;
        z[static_cast<std::size_t>(at)] = bad;
        CHECK(simd::copy_probe<TestType>(z.data(), y.data(), n));
      }
    std::vector<float> f(static_cast<std::size_t>(n) + 1, 7.0f);
    simd::fill<TestType>(f.data(), -0.5f, n);
    for (long i = 0; i < n; ++i) REQUIRE(f[static_cast<std::size_t>(i)] == -0.5f);
    CHECK(f[static_cast<std::size_t>(n)] == 7.0f);
  }
}

TEMPLATE_LIST_TEST_CASE("decode kernels (dot16, dot16_bf16, pv_rows_kv) equal float64 loops", "[simd][dtype]", simd::compiled_archs) {
  INFO("arch " << simd::arch_name<TestType>() << ", AVX512-BF16 " << simd::has_native_bf16_dot<TestType>);
  // Logits: q split into two bf16 halves leaves |r| <= 2^-18·|q| per element, then
  // fp32 accumulation: tolerance 1e-5 × Σ|q_i·k_i| (observed about 3e-6).
  for (long d : {1L, 7L, 31L, 32L, 33L, 40L, 64L, 100L, 128L, 257L})
    for (int n : {1, 5, 16}) {
      const long ldk = d + 3;
      const auto q = attnkit_test::randn(static_cast<std::size_t>(d), 11);
      const auto kf = attnkit_test::randn(static_cast<std::size_t>(16 * ldk), 12);
      std::vector<bfloat16> k(kf.size());
      for (std::size_t i = 0; i < k.size(); ++i) k[i] = bfloat16::from_float(kf[i]);
      std::vector<std::uint16_t> hi(static_cast<std::size_t>(simd::bf16_padded(d))), lo(hi.size());
      simd::split_bf16(q.data(), d, hi.data(), lo.data());
      float out[16];
      std::fill_n(out, 16, -7.0f);
      simd::dot16_bf16<TestType>(q.data(), hi.data(), lo.data(), d, k.data(), ldk, n, out);
      for (int j = 0; j < 16; ++j) {
        if (j >= n) {
          CHECK(out[j] == -7.0f);  // nothing written past n
          continue;
        }
        double ref = 0, mag = 0;
        for (long i = 0; i < d; ++i) {
          const double t = static_cast<double>(q[static_cast<std::size_t>(i)]) * k[static_cast<std::size_t>(j * ldk + i)].to_float();
          ref += t;
          mag += std::fabs(t);
        }
        INFO("d " << d << " n " << n << " key " << j);
        CHECK(std::fabs(out[j] - ref) <= 1e-5 * mag);
      }
    }
  // Non-finite keys give what the plain fp32 dot gives: ±inf stays ±inf (not the
  // NaN of 0·inf in the low half), NaN stays NaN; other keys are unaffected.
  {
    const long d = 64;
    std::vector<float> q(static_cast<std::size_t>(d), 0.5f);
    q[3] = 0.3f;
    std::vector<bfloat16> k(static_cast<std::size_t>(16 * d), bfloat16::from_float(1.0f));
    k[2 * d + 5] = bfloat16::from_float(std::numeric_limits<float>::infinity());
    k[4 * d + 1] = bfloat16::from_float(-std::numeric_limits<float>::infinity());
    k[6 * d + 9] = bfloat16::from_float(std::numeric_limits<float>::quiet_NaN());
    // 32 spare elements: with d a constant, GCC 12's -Warray-bounds follows the
    // masked-tail branch that never runs for d = 64.
    std::vector<std::uint16_t> hi(static_cast<std::size_t>(simd::bf16_padded(d) + 32)), lo(hi.size());
    simd::split_bf16(q.data(), d, hi.data(), lo.data());
    float out[16];
    simd::dot16_bf16<TestType>(q.data(), hi.data(), lo.data(), d, k.data(), d, 16, out);
    CHECK(out[2] == std::numeric_limits<float>::infinity());
    CHECK(out[4] == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(out[6]));
    CHECK(out[0] == Approx(31.8).epsilon(1e-6));
    CHECK(out[15] == Approx(31.8).epsilon(1e-6));
  }
  // The AVX-512 decode kernels: logits of 16 keys per call and P·V with K/V as
  // float, bf16 or fp16 widened in registers (elsewhere the decode path widens rows
  // and uses the fp32 kernels tested above). Exact fp32 arithmetic: margins 1e-5.
  if constexpr (simd::has_wide_kv_kernels<TestType>) {
    const auto check_type = [&](auto tag) {
      using KV = decltype(tag);
      INFO("storage " << sizeof(KV) * 8 << " bit");
      const auto store = [](float x) {
        if constexpr (std::is_same_v<KV, float>)
          return x;
        else
          return KV::from_float(x);
      };
      for (long d : {1L, 15L, 16L, 17L, 40L, 64L, 128L, 130L})
        for (int n : {1, 7, 16}) {
          const long ldk = d + 5;
          const auto q = attnkit_test::randn(static_cast<std::size_t>(d), 31);
          const auto kf = attnkit_test::randn(static_cast<std::size_t>(16 * ldk), 32);
          std::vector<KV> k(kf.size());
          for (std::size_t i = 0; i < k.size(); ++i) k[i] = store(kf[i]);
          float out[16];
          std::fill_n(out, 16, -7.0f);
          simd::dot16<TestType>(q.data(), d, k.data(), ldk, n, out);
          for (int j = 0; j < 16; ++j) {
            INFO("d " << d << " n " << n << " key " << j);
            if (j >= n) {
              CHECK(out[j] == -7.0f);
              continue;
            }
            double ref = 0;
            for (long i = 0; i < d; ++i)
              ref += static_cast<double>(q[static_cast<std::size_t>(i)]) * to_float(k[static_cast<std::size_t>(j * ldk + i)]);
            CHECK(out[j] == Approx(ref).margin(1e-5));
            if constexpr (std::is_same_v<KV, float>)  // the fp32 decode loop's row dot: same bits
              CHECK(simd::dot1<TestType>(q.data(), d, k.data() + j * ldk) == out[j]);
          }
        }
      for (long dv : {16L, 40L, 64L, 130L})
        for (int R = 1; R <= 6; ++R) {
          const long keys = 37, ldv = dv + 5, ldp = keys + 2, ldo = dv + 1;
          const auto p = attnkit_test::randn(static_cast<std::size_t>(R * ldp), 21);
          const auto vf = attnkit_test::randn(static_cast<std::size_t>(keys * ldv), 22);
          std::vector<KV> v(vf.size());
          for (std::size_t i = 0; i < v.size(); ++i) v[i] = store(vf[i]);
          auto o = attnkit_test::randn(static_cast<std::size_t>(R * ldo), 23);
          const auto o0 = o;
          simd::pv_rows_kv<TestType>(R, p.data(), ldp, v.data(), ldv, keys, o.data(), ldo, dv);
          for (int r = 0; r < R; ++r)
            for (long c = 0; c < dv; ++c) {
              double ref = o0[static_cast<std::size_t>(r * ldo + c)];
              for (long j = 0; j < keys; ++j)
                ref += static_cast<double>(p[static_cast<std::size_t>(r * ldp + j)]) * to_float(v[static_cast<std::size_t>(j * ldv + c)]);
              INFO("dv " << dv << " R " << R << " row " << r << " col " << c);
              CHECK(o[static_cast<std::size_t>(r * ldo + c)] == Approx(ref).margin(1e-5));
            }
        }
    };
    check_type(0.0f);
    check_type(bfloat16{});
    check_type(float16{});
  }
}

TEST_CASE("the default arch is the target's best SIMD path", "[simd]") {
  INFO("default_arch " << simd::arch_name<>());
#if defined(__aarch64__)
  STATIC_REQUIRE(std::is_same_v<simd::default_arch, xsimd::neon64>);  // NEON is baseline on aarch64
  STATIC_REQUIRE(std::is_same_v<simd::compiled_archs, std::tuple<simd::scalar, xsimd::neon64>>);
#elif defined(__AVX512F__)
  STATIC_REQUIRE(std::is_base_of_v<xsimd::avx512f, simd::default_arch>);
#elif defined(__AVX2__) && defined(__FMA__)
  STATIC_REQUIRE(std::is_base_of_v<xsimd::avx2, simd::default_arch>);
#endif
  CHECK(std::tuple_size_v<simd::compiled_archs> >= 1);
}

// simd/isa.hpp: each instruction-set overload against the portable one, on every
// compiled arch and on the default arch (AVX-512 BW here: the BW+VL byte mask).
using isa_archs = decltype(std::tuple_cat(std::declval<simd::compiled_archs>(), std::tuple<simd::default_arch>{}));
TEMPLATE_LIST_TEST_CASE("simd/isa.hpp: every overload equals the portable form", "[simd][isa]", isa_archs) {
  if constexpr (!simd::is_scalar_v<TestType>) {
    using vf = xsimd::batch<float, TestType>;
    constexpr int W = static_cast<int>(vf::size);
    INFO("arch " << simd::arch_name<TestType>());
    const xsimd::generic portable{};
    alignas(64) float in[64], a[64], b[64];
    for (int i = 0; i < W; ++i) in[i] = static_cast<float>((i * 5) % W) - 4.5f;
    in[W / 2] = -std::numeric_limits<float>::infinity();
    const vf v = vf::load_aligned(in);
    CHECK(simd::isa::reduce_max(v, TestType{}) == simd::isa::reduce_max(v, portable));
    std::uint8_t keep[64];
    for (int i = 0; i < W; ++i) keep[i] = static_cast<std::uint8_t>(i % 3 == 0 ? 0 : i * 37);
    simd::isa::mask_bytes(v, keep, TestType{}).store_aligned(a);
    simd::isa::mask_bytes(v, keep, portable).store_aligned(b);
    for (int i = 0; i < W; ++i) CHECK(std::bit_cast<std::uint32_t>(a[i]) == std::bit_cast<std::uint32_t>(b[i]));
    for (const std::uint32_t bits : {0u, 0xffffffffu, 0x5a5au, 0x80000001u}) {
      simd::isa::mask_bits(v, bits, TestType{}).store_aligned(a);
      simd::isa::mask_bits(v, bits, portable).store_aligned(b);
      for (int i = 0; i < W; ++i) CHECK(std::bit_cast<std::uint32_t>(a[i]) == std::bit_cast<std::uint32_t>(b[i]));
    }
    // 2^n·p: n integral in [−126, 126], lanes below the underflow bound exact zeros.
    alignas(64) float n[64], p[64], x[64];
    for (int i = 0; i < W; ++i) {
      n[i] = static_cast<float>(i * 17 % 253 - 126);
      p[i] = 0.75f + 0.03f * static_cast<float>(i);
      x[i] = i % 4 == 0 ? -130.0f : n[i];
    }
    const vf vn = vf::load_aligned(n), vp = vf::load_aligned(p), vx = vf::load_aligned(x);
    simd::isa::scale_by_exp2(vp, vn, vx, simd::exp2_underflow, TestType{}).store_aligned(a);
    simd::isa::scale_by_exp2(vp, vn, vx, simd::exp2_underflow, portable).store_aligned(b);
    for (int i = 0; i < W; ++i) CHECK(a[i] == b[i]);
    // Compaction of a W-key group.
    float da[64], db[64];
    const auto ca = simd::isa::compact_ge<W>(in, -1.0f, da, TestType{});
    const auto cb = simd::isa::compact_ge<W>(in, -1.0f, db, portable);
    REQUIRE(ca == cb);
    for (std::ptrdiff_t i = 0; i < ca; ++i) CHECK(da[i] == db[i]);
  }
  // Widening 16-bit rows (odd length: vector body and scalar tail).
  std::vector<bfloat16> hb(37);
  std::vector<float16> hh(37);
  for (int i = 0; i < 37; ++i) {
    hb[i] = bfloat16::from_float(0.1f * static_cast<float>(i) - 1.7f);
    hh[i] = float16::from_float(0.3f * static_cast<float>(i) - 5.1f);
  }
  std::vector<float> wb(37), wh(37);
  widen(hb.data(), wb.data(), 37);
  widen(hh.data(), wh.data(), 37);
  for (int i = 0; i < 37; ++i) {
    CHECK(wb[i] == hb[i].to_float());
    CHECK(wh[i] == hh[i].to_float());
  }
}
