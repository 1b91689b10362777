// 16-bit calls end to end (issue #27 item 1): q, k, v all bfloat16 or all float16,
// out of that type or float, through attention() for every family, attention_varlen,
// attention_with_kv_cache, linear_step and attention_backward.
//
// Two kinds of check:
//  * Equivalence, bitwise: a 16-bit call computes exactly what the float call
//    computes on the same values (for attention(), all-float q, k, v: the path every
//    oracle test checks on every arch; for the other entries, the float-q call with
//    the same 16-bit K/V, itself oracle-tested in their own files), and a 16-bit out
//    is that float result rounded to nearest even. No tolerance.
//  * Accuracy, FlashAttention's criterion: the error against the float64 oracle (on
//    the 16-bit inputs' exact values) is at most 2x that of a naive float
//    implementation on the same inputs (float dot products, float softmax, out rounded
//    to the same output type), stated per case.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <attnkit/reference/reference.hpp>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;
using attnkit_test::randn;

namespace {

template <class T>
std::vector<T> to16(const std::vector<float>& x) {
  std::vector<T> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = T::from_float(x[i]);
  return r;
}
template <class T>
std::vector<float> to32(const std::vector<T>& x) {
  std::vector<float> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = x[i].to_float();
  return r;
}
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// A problem's tensors in 16-bit type T, with float copies of their exact values.
template <class T>
struct half_problem {
  problem p;
  std::vector<T> q, k, v;
  std::vector<float> qf;  // q's values as float (k, v: p.k, p.v hold them)
  explicit half_problem(problem base) : p(std::move(base)), q(to16<T>(p.q)), k(to16<T>(p.k)), v(to16<T>(p.v)) {
    qf = to32(q);
    p.k = to32(k);
    p.v = to32(v);
  }
  tensor_view<const T> qh() const { return bhsd(q.data(), p.B, p.Hq, p.Lq, p.D); }
  tensor_view<const T> kh() const { return bhsd(k.data(), p.B, p.Hkv, p.Lk, p.D); }
  tensor_view<const T> vh() const { return bhsd(v.data(), p.B, p.Hkv, p.Lk, p.Dv); }
  tensor_view<const float> q32() const { return bhsd(qf.data(), p.B, p.Hq, p.Lq, p.D); }
};

/// attention() with 16-bit q/k/v and a float out equals the all-float call on the
/// same values bitwise (outs and LSE), and a 16-bit out is that result rounded. The
/// one stated exception: one-query decode over bfloat16 K/V on AVX512-BF16 hosts
/// takes the native bf16 dot product (simd/decode_kernels.hpp); there the float-q
/// call with the same 16-bit K/V is the bitwise reference, and the all-float call
/// agrees to 1e-5 x max|out| (test_kernel_invariants states why).
template <class T, class P>
void check_attention_equivalence(const P& pol, const problem& base, options o, const std::string& what) {
  INFO(what);
  const half_problem<T> h(base);
  const problem& p = h.p;
  const std::size_t n = p.out_size();
  constexpr bool normalized = std::is_same_v<P, softmax>;
  std::vector<float> want(n), got(n), lse_want(static_cast<std::size_t>(p.B * p.Hq * p.Lq)), lse_got(lse_want.size());
  options ow = o, og = o;
  if (normalized) {
    ow.lse = lse_want.data();
    og.lse = lse_got.data();
  }
  const bool native_decode = std::is_same_v<T, bfloat16> && simd::has_native_bf16_dot<simd::default_arch> &&
                             std::is_same_v<typename P::family, family::quadratic> &&
                             p.Lq * (p.Hq / p.Hkv) <= detail::decode_max_rows;
  if (native_decode)
    attention(pol, h.q32(), h.kh(), h.vh(), p.ov(want), ow);
  else
    attention(pol, h.q32(), p.kv(), p.vv(), p.ov(want), ow);
  attention(pol, h.qh(), h.kh(), h.vh(), p.ov(got), og);
  CHECK(std::memcmp(want.data(), got.data(), n * sizeof(float)) == 0);
  if (normalized) CHECK(std::memcmp(lse_want.data(), lse_got.data(), lse_want.size() * sizeof(float)) == 0);
  if (native_decode) {
    std::vector<float> all_float(n);
    attention(pol, h.q32(), p.kv(), p.vv(), p.ov(all_float), o);
    CHECK(attnkit_test::max_abs_diff(got, all_float) <= 1e-5 * attnkit_test::max_abs(all_float));
  }
  std::vector<T> out16(n);
  attention(pol, h.qh(), h.kh(), h.vh(), bhsd(out16.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  CHECK(same_bits(out16, to16<T>(got)));
}

}  // namespace

TEMPLATE_TEST_CASE("16-bit q, k, v: attention() equals the float call on the same values, for every family",
                   "[dtype][io]", bfloat16, float16) {
  options causal_br;
  causal_br.causal = causal::bottom_right;
  options causal_tl;
  causal_tl.causal = causal::top_left;
  // Prefill (odd extents, GQA) and decode (one query row: the decode skeleton).
  check_attention_equivalence<TestType>(softmax{}, problem(2, 4, 2, 77, 131, 40, 24, 11), causal_br, "softmax prefill");
  check_attention_equivalence<TestType>(softmax{}, problem(1, 6, 2, 1, 515, 64, 64, 12), {}, "softmax decode");
  check_attention_equivalence<TestType>(softmax{}, problem(1, 2, 1, 33, 33, 128, 128, 13), causal_tl,
                                        "softmax D = 128 top-left");
  if constexpr (std::is_same_v<TestType, bfloat16>) {
    // The other families: one instantiation each (bfloat16), their own skeletons.
    check_attention_equivalence<TestType>(sigmoid{}, problem(1, 2, 2, 45, 60, 32, 16, 14), causal_br, "sigmoid");
    check_attention_equivalence<TestType>(log_normal{}, problem(1, 2, 1, 50, 50, 32, 32, 15), {}, "log-normal");
    check_attention_equivalence<TestType>(linear<feature::elu_plus_one>{}, problem(1, 2, 2, 40, 40, 16, 16, 16),
                                          causal_tl, "linear elu+1 causal");
    check_attention_equivalence<TestType>(sparse{pattern::sliding_window{17, 3}}, problem(1, 2, 1, 70, 70, 32, 32, 17),
                                          {}, "sliding window");
    check_attention_equivalence<TestType>(sparse{pattern::top_k{.k = 9}}, problem(1, 2, 2, 41, 90, 32, 32, 18), {},
                                          "top-k");
    check_attention_equivalence<TestType>(stochastic_permutation{.window = 16, .seed = 5},
                                          problem(1, 2, 2, 64, 64, 32, 32, 19), {}, "stochastic permutation");
  }
}

TEMPLATE_TEST_CASE("narrow() rounds as from_float: ties, subnormals, overflow, specials", "[dtype][io]", bfloat16,
                   float16) {
  using T = TestType;
  // Bit patterns around every rounding boundary: random floats of every exponent,
  // plus the edge values of both formats (fp16 max / overflow threshold, fp16 and
  // bf16 subnormals, exact ties, zeros, infinities, NaNs).
  std::vector<float> x;
  std::mt19937 gen(7);
  for (int i = 0; i < 20000; ++i) x.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(gen())));
  for (float e : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f,
                  6.1035156e-5f, 6.0975552e-5f, 1.00048828125f, 1.00146484375f, 1.00390625f, 1.01171875f, 1e-40f,
                  -1e-45f, 3.4028235e38f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    x.push_back(e);
  x.push_back(std::bit_cast<float>(0x7f800001u));  // a signalling NaN whose payload is only in the low bits
  // Vector body and scalar tail at two alignments; the default arch's conversion and
  // the portable one (F16C for fp16 where compiled, else from_float).
  for (int portable = 0; portable < 2; ++portable) {
    for (std::size_t off : {std::size_t{0}, std::size_t{3}}) {
      INFO("portable " << portable << ", offset " << off);
      const std::size_t n = x.size() - off;
      std::vector<T> got(n);
      if (portable)
        simd::isa::narrow(x.data() + off, got.data(), static_cast<std::ptrdiff_t>(n), xsimd::generic{});
      else
        narrow(x.data() + off, got.data(), static_cast<index_t>(n));
      std::size_t bad = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const T want = T::from_float(x[off + i]);
        const bool nan = std::isnan(x[off + i]);
        if (nan ? !std::isnan(got[i].to_float()) : got[i].bits != want.bits) ++bad;
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("16-bit q, k, v: strided views and an exception leave a 16-bit out untouched", "[dtype][io]") {
  // q as BSHD (heads interleaved): the widened copy follows the strides.
  const index_t B = 1, H = 3, L = 21, D = 16;
  const auto qv = randn(static_cast<std::size_t>(B * H * L * D), 40), kv = randn(qv.size(), 41), vv = randn(qv.size(), 42);
  const auto q = to16<bfloat16>(qv), k = to16<bfloat16>(kv), v = to16<bfloat16>(vv);
  std::vector<float> want(qv.size()), got(qv.size());
  const auto qf = to32(q);
  attention(softmax{}, bshd(qf.data(), B, L, H, D), bshd(k.data(), B, L, H, D), bshd(v.data(), B, L, H, D),
            bshd(want.data(), B, L, H, D));
  attention(softmax{}, bshd(q.data(), B, L, H, D), bshd(k.data(), B, L, H, D), bshd(v.data(), B, L, H, D),
            bshd(got.data(), B, L, H, D));
  CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);

  // An invalid option is reported before a byte of out is written.
  std::vector<bfloat16> out(qv.size(), bfloat16::from_float(7.0f));
  const auto before = out;
  options bad;
  bad.window.left = -2;
  CHECK_THROWS_AS(attention(softmax{}, bhsd(q.data(), B, H, L, D), bhsd(k.data(), B, H, L, D),
                            bhsd(v.data(), B, H, L, D), bhsd(out.data(), B, H, L, D), bad),
                  invalid_argument_error);
  CHECK(same_bits(out, before));
  // A wrong out extent names out.
  CHECK_THROWS_WITH(attention(softmax{}, bhsd(q.data(), B, H, L, D), bhsd(k.data(), B, H, L, D),
                              bhsd(v.data(), B, H, L, D), bhsd(out.data(), B, H, L - 1, D)),
                    Catch::Contains("out"));
  CHECK(same_bits(out, before));
}

TEMPLATE_TEST_CASE("16-bit q, k, v: varlen, KV cache, linear_step", "[dtype][io]", bfloat16, float16) {
  using T = TestType;
  SECTION("attention_varlen") {
    const half_problem<T> h(problem(1, 4, 2, 90, 120, 32, 24, 21));
    const std::vector<std::int64_t> cu_q{0, 30, 30, 90}, cu_k{0, 50, 70, 120};
    options o;
    o.causal = causal::bottom_right;
    std::vector<float> want(h.p.out_size()), got(h.p.out_size());
    attention_varlen(softmax{}, h.q32(), h.kh(), h.vh(), h.p.ov(want), cu_q, cu_k, o);
    attention_varlen(softmax{}, h.qh(), h.kh(), h.vh(), h.p.ov(got), cu_q, cu_k, o);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
    std::vector<T> out16(h.p.out_size());
    attention_varlen(softmax{}, h.qh(), h.kh(), h.vh(), bhsd(out16.data(), 1, 4, 90, 24), cu_q, cu_k, o);
    CHECK(same_bits(out16, to16<T>(want)));
  }
  SECTION("attention_with_kv_cache, dense 16-bit cache") {
    const index_t B = 2, Hq = 4, Hkv = 2, Lmax = 300, D = 64, Lq = 1;
    const half_problem<T> h(problem(B, Hq, Hkv, Lq, Lmax, D, D, 22));
    kv_cache_options o;
    const std::vector<std::int64_t> lens{257, 300};
    o.cache_seqlens = lens;
    std::vector<float> want(h.p.out_size()), got(h.p.out_size());
    attention_with_kv_cache(softmax{}, h.q32(), h.kh(), h.vh(), h.p.ov(want), o);
    attention_with_kv_cache(softmax{}, h.qh(), h.kh(), h.vh(), h.p.ov(got), o);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
    std::vector<T> out16(h.p.out_size());
    attention_with_kv_cache(softmax{}, h.qh(), h.kh(), h.vh(), bhsd(out16.data(), B, Hq, Lq, D), o);
    CHECK(same_bits(out16, to16<T>(want)));
  }
  SECTION("linear_step") {
    const half_problem<T> h(problem(1, 2, 1, 12, 12, 16, 8, 23));
    const linear<feature::elu_plus_one> pol{};
    auto s_want = make_linear_state(pol, 1, 2, 16, 8), s_got = s_want, s_got16 = s_want;
    std::vector<float> want(h.p.out_size()), got(h.p.out_size());
    linear_step(pol, h.q32(), h.p.kv(), h.p.vv(), h.p.ov(want), s_want);
    linear_step(pol, h.qh(), h.kh(), h.vh(), h.p.ov(got), s_got);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
    CHECK(s_got.S == s_want.S);
    CHECK(s_got.tokens == s_want.tokens);
    std::vector<T> out16(h.p.out_size());
    linear_step(pol, h.qh(), h.kh(), h.vh(), bhsd(out16.data(), 1, 2, 12, 8), s_got16);
    CHECK(same_bits(out16, to16<T>(want)));
  }
}

TEMPLATE_TEST_CASE("16-bit q, k, v: attention_backward equals the float call on the same values", "[dtype][io]",
                   bfloat16, float16) {
  using T = TestType;
  const half_problem<T> h(problem(1, 4, 2, 37, 53, 32, 24, 31));
  const index_t B = 1, Hq = 4, Hkv = 2, Lq = 37, Lk = 53, D = 32, Dv = 24;
  options o;
  o.causal = causal::bottom_right;
  std::vector<float> lse(static_cast<std::size_t>(B * Hq * Lq)), out(h.p.out_size());
  o.lse = lse.data();
  attention(softmax{}, h.qh(), h.kh(), h.vh(), h.p.ov(out), o);
  const auto out16 = to16<T>(out), dout16 = to16<T>(randn(out.size(), 32));
  const auto outr = to32(out16), doutr = to32(dout16);  // the 16-bit values, as float
  const std::size_t nq = static_cast<std::size_t>(B * Hq * Lq * D), nk = static_cast<std::size_t>(B * Hkv * Lk * D),
                    nv = static_cast<std::size_t>(B * Hkv * Lk * Dv);
  std::vector<float> dq(nq), dk(nk), dv(nv), gq(nq), gk(nk), gv(nv);
  const auto o16 = bhsd(out16.data(), B, Hq, Lq, Dv);
  const auto do16 = bhsd(dout16.data(), B, Hq, Lq, Dv);
  // Reference: float q, out, dout holding the 16-bit values; K/V 16-bit (the float-q entry).
  attention_backward(softmax{}, h.q32(), h.kh(), h.vh(), bhsd(outr.data(), B, Hq, Lq, Dv), lse.data(),
                     bhsd(doutr.data(), B, Hq, Lq, Dv), bhsd(dq.data(), B, Hq, Lq, D), bhsd(dk.data(), B, Hkv, Lk, D),
                     bhsd(dv.data(), B, Hkv, Lk, Dv), o);
  SECTION("float gradients") {
    attention_backward(softmax{}, h.qh(), h.kh(), h.vh(), o16, lse.data(), do16, bhsd(gq.data(), B, Hq, Lq, D),
                       bhsd(gk.data(), B, Hkv, Lk, D), bhsd(gv.data(), B, Hkv, Lk, Dv), o);
    CHECK(gq == dq);
    CHECK(gk == dk);
    CHECK(gv == dv);
  }
  SECTION("16-bit gradients, overwritten and accumulated") {
    std::vector<T> hq(nq), hk(nk), hv(nv);
    attention_backward(softmax{}, h.qh(), h.kh(), h.vh(), o16, lse.data(), do16, bhsd(hq.data(), B, Hq, Lq, D),
                       bhsd(hk.data(), B, Hkv, Lk, D), bhsd(hv.data(), B, Hkv, Lk, Dv), o);
    CHECK(same_bits(hq, to16<T>(dq)));
    CHECK(same_bits(hk, to16<T>(dk)));
    CHECK(same_bits(hv, to16<T>(dv)));
    // accumulate: the 16-bit gradient's value plus the new one, rounded once.
    backward_options acc;
    acc.accumulate = true;
    const auto base_q = hq;
    attention_backward(softmax{}, h.qh(), h.kh(), h.vh(), o16, lse.data(), do16, bhsd(hq.data(), B, Hq, Lq, D),
                       bhsd(hk.data(), B, Hkv, Lk, D), bhsd(hv.data(), B, Hkv, Lk, Dv), o, acc);
    std::vector<float> sum(nq);
    for (std::size_t i = 0; i < nq; ++i) sum[i] = base_q[i].to_float() + dq[i];
    CHECK(same_bits(hq, to16<T>(sum)));
  }
}

namespace {
/// Softmax attention as a naive float program (float dots, float softmax with the
/// row max subtracted, float P·V), out rounded to O: the baseline of the criterion.
template <class O>
std::vector<double> naive_float(const problem& p, const std::vector<float>& q, bool causal_br) {
  std::vector<double> out(p.out_size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(p.D));
  std::vector<float> s(static_cast<std::size_t>(p.Lk)), acc(static_cast<std::size_t>(p.Dv));
  for (index_t b = 0; b < p.B; ++b)
    for (index_t hh = 0; hh < p.Hq; ++hh) {
      const index_t g = hh / (p.Hq / p.Hkv);
      for (index_t i = 0; i < p.Lq; ++i) {
        const float* qi = q.data() + ((b * p.Hq + hh) * p.Lq + i) * p.D;
        const index_t last = causal_br ? i + p.Lk - p.Lq : p.Lk - 1;
        float m = -INFINITY;
        for (index_t j = 0; j <= last; ++j) {
          const float* kj = p.k.data() + ((b * p.Hkv + g) * p.Lk + j) * p.D;
          float dot = 0.0f;
          for (index_t d = 0; d < p.D; ++d) dot += qi[d] * kj[d];
          s[static_cast<std::size_t>(j)] = dot * scale;
          m = std::max(m, s[static_cast<std::size_t>(j)]);
        }
        float l = 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (index_t j = 0; j <= last; ++j) {
          const float w = std::exp(s[static_cast<std::size_t>(j)] - m);
          l += w;
          const float* vj = p.v.data() + ((b * p.Hkv + g) * p.Lk + j) * p.Dv;
          for (index_t d = 0; d < p.Dv; ++d) acc[static_cast<std::size_t>(d)] += w * vj[d];
        }
        for (index_t d = 0; d < p.Dv; ++d) {
          const float x = acc[static_cast<std::size_t>(d)] / l;
          double r = x;
          if constexpr (!std::is_same_v<O, float>) r = O::from_float(x).to_float();
          out[static_cast<std::size_t>(((b * p.Hq + hh) * p.Lq + i) * p.Dv + d)] = r;
        }
      }
    }
  return out;
}

double max_err(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

/// The case's two errors against the float64 oracle; requires kernel <= 2 x naive.
template <class T, class O>
void check_accuracy(const problem& base, bool causal_br, const std::string& what) {
  const half_problem<T> h(base);
  const problem& p = h.p;
  options o;
  if (causal_br) o.causal = causal::bottom_right;
  std::vector<double> ref(p.out_size());
  reference::attention(softmax{}, h.q32(), p.kv(), p.vv(), bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  std::vector<O> out(p.out_size());
  attention(softmax{}, h.qh(), h.kh(), h.vh(), bhsd(out.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  std::vector<double> got(out.size());
  for (std::size_t i = 0; i < out.size(); ++i) got[i] = static_cast<float>(out[i]);
  const double kernel = max_err(got, ref), naive = max_err(naive_float<O>(p, h.qf, causal_br), ref);
  INFO(what << ": max |kernel - oracle| = " << kernel << ", max |naive float - oracle| = " << naive
            << ", ratio = " << kernel / naive);
  CHECK(kernel <= 2.0 * naive);
}
}  // namespace

TEMPLATE_TEST_CASE("16-bit q, k, v: error against the float64 oracle at most 2x a naive float implementation's",
                   "[dtype][io][oracle]", bfloat16, float16) {
  using T = TestType;
  // Prefill D = 64 and 128 (both causal and not), decode, GQA; out 16-bit and float.
  check_accuracy<T, T>(problem(1, 2, 1, 300, 300, 64, 64, 51), true, "prefill D=64 causal, 16-bit out");
  check_accuracy<T, T>(problem(1, 2, 2, 200, 333, 128, 128, 52), false, "prefill D=128, 16-bit out");
  check_accuracy<T, T>(problem(2, 8, 2, 1, 1000, 128, 128, 53), false, "decode GQA 4:1, 16-bit out");
  check_accuracy<T, float>(problem(1, 2, 1, 300, 300, 64, 64, 54), true, "prefill D=64 causal, float out");
  check_accuracy<T, float>(problem(2, 8, 2, 1, 1000, 128, 128, 55), false, "decode GQA 4:1, float out");
}
