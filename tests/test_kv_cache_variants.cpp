// attention_with_kv_cache beyond softmax and beyond the happy path:
// - sigmoid: prefill and token-by-token decoding give the same rows (one stated
//   key length), and sigmoid{} without it is rejected;
// - linear attention: prefill leaves the recurrent state that decode steps continue,
//   equal to attention(linear) over the whole sequence;
// - q8: quantisation error per value ≤ scale/2, and the output's error against the
//   float cache within the bound that error implies;
// - results bitwise independent of the thread count; attention() on cache views
//   bitwise equal to the cache entry;
// - a NaN in a key some rows may not see stays out of their rows;
// - bad input: invalid_argument_error naming the argument, nothing written (cache,
//   output);
// - the q8 decode kernels against float64 loops.
// Tolerances: 2e-5·max|reference| unless stated.
#include <catch2/catch.hpp>

#include "kv_cache_support.hpp"

using namespace kvt;

namespace {
constexpr double tol = 2e-5;

/// Keys/values/queries of one sequence of T tokens per batch entry, BSHD.
struct sequence {
  index_t B, Hq, Hkv, T, D, Dv;
  std::vector<float> q, k, v;
  sequence(index_t b, index_t hq, index_t hkv, index_t t, index_t d, index_t dv, std::uint32_t seed)
      : B(b), Hq(hq), Hkv(hkv), T(t), D(d), Dv(dv), q(randn(static_cast<std::size_t>(b * t * hq * d), seed)),
        k(randn(static_cast<std::size_t>(b * t * hkv * d), seed + 1)),
        v(randn(static_cast<std::size_t>(b * t * hkv * dv), seed + 2)) {}
  /// Tokens [t0, t0 + n) as BSHD views.
  static tensor_view<const float> slice(const std::vector<float>& x, index_t B, index_t T, index_t H, index_t d, index_t t0,
                                        index_t n) {
    auto view = bshd(x.data(), B, T, H, d);
    view.data += t0 * view.stride[seq_axis];
    view.extent[seq_axis] = n;
    return view;
  }
  tensor_view<const float> qs(index_t t0, index_t n) const { return slice(q, B, T, Hq, D, t0, n); }
  tensor_view<const float> ks(index_t t0, index_t n) const { return slice(k, B, T, Hkv, D, t0, n); }
  tensor_view<const float> vs(index_t t0, index_t n) const { return slice(v, B, T, Hkv, Dv, t0, n); }
  tensor_view<float> os(std::vector<float>& o, index_t t0, index_t n) const {
    auto view = bshd(o.data(), B, T, Hq, Dv);
    view.data += t0 * view.stride[seq_axis];
    view.extent[seq_axis] = n;
    return view;
  }
};

/// Prefill of `prompt` tokens, then one token at a time, through a dense float
/// cache of capacity Lmax; returns the output rows of every token.
template <class P>
std::vector<float> prefill_then_decode(const P& pol, const sequence& s, index_t prompt, index_t Lmax, index_t wlen,
                                       int threads = 0) {
  std::vector<float> kc(static_cast<std::size_t>(s.B * Lmax * s.Hkv * s.D)), vc(static_cast<std::size_t>(s.B * Lmax * s.Hkv * s.Dv));
  std::vector<float> out(static_cast<std::size_t>(s.B * s.T * s.Hq * s.Dv), -7.0f);
  std::vector<std::int64_t> seqlens(static_cast<std::size_t>(s.B), 0);
  kv_cache_options o;
  o.weight_key_length = wlen;
  o.attention.num_threads = threads;
  for (index_t t0 = 0; t0 < s.T;) {
    const index_t n = t0 == 0 ? prompt : 1;
    o.cache_seqlens = seqlens;
    o.k_new = s.ks(t0, n);
    o.v_new = s.vs(t0, n);
    attention_with_kv_cache(pol, s.qs(t0, n), bshd(kc.data(), s.B, Lmax, s.Hkv, s.D), bshd(vc.data(), s.B, Lmax, s.Hkv, s.Dv),
                            s.os(out, t0, n), o);
    for (auto& l : seqlens) l += n;
    t0 += n;
  }
  return out;
}
}  // namespace

TEST_CASE("KV cache: sigmoid prefill and token-by-token decode give the same rows", "[kv_cache][sigmoid]") {
  const sequence s(2, 4, 2, 40, 32, 16, 21);
  const index_t Lmax = 64, wlen = 48;  // the length stated once (e.g. the model's context)
  const auto prefilled = prefill_then_decode(sigmoid{}, s, s.T, Lmax, wlen);  // all 40 tokens in one call
  const auto stepped = prefill_then_decode(sigmoid{}, s, 7, Lmax, wlen);      // 7, then one by one
  const double scale = attnkit_test::max_abs(prefilled);
  CHECK(attnkit_test::max_abs_diff(prefilled, stepped) <= tol * scale);
  // Both are sigmoid(s − ln 48) over the causal prefix: the oracle with that bias.
  std::vector<double> ref(prefilled.size());
  options causal_opt;
  causal_opt.causal = causal::top_left;
  reference::attention(sigmoid{.bias = static_cast<float>(-std::log(48.0))}, bshd(s.q.data(), s.B, s.T, s.Hq, s.D),
                       bshd(s.k.data(), s.B, s.T, s.Hkv, s.D), bshd(s.v.data(), s.B, s.T, s.Hkv, s.Dv),
                       bshd(ref.data(), s.B, s.T, s.Hq, s.Dv), causal_opt);
  double err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(stepped[i] - ref[i]));
  CHECK(err <= tol * scale);
  // sigmoid{} with neither a bias nor a stated length: rejected, nothing written.
  std::vector<float> kc(static_cast<std::size_t>(s.B * Lmax * s.Hkv * s.D), 1.0f), vc(static_cast<std::size_t>(s.B * Lmax * s.Hkv * s.Dv), 1.0f),
      out(static_cast<std::size_t>(s.B * s.Hq * s.Dv), 5.0f);
  const auto kc0 = kc;
  std::vector<std::int64_t> seqlens{3, 3};
  kv_cache_options o;
  o.cache_seqlens = seqlens;
  o.k_new = s.ks(0, 1);
  o.v_new = s.vs(0, 1);
  try {
    attention_with_kv_cache(sigmoid{}, s.qs(0, 1), bshd(kc.data(), s.B, Lmax, s.Hkv, s.D),
                            bshd(vc.data(), s.B, Lmax, s.Hkv, s.Dv), bshd(out.data(), s.B, 1, s.Hq, s.Dv), o);
    FAIL("no exception");
  } catch (const invalid_argument_error& e) {
    CHECK(e.argument() == "kv_cache_options.weight_key_length");
  }
  CHECK(kc == kc0);
  // An explicit bias needs no length; the softmax prefill/decode pair agrees too.
  const auto a = prefill_then_decode(sigmoid{.bias = -2.0f}, s, s.T, Lmax, 0);
  const auto b = prefill_then_decode(sigmoid{.bias = -2.0f}, s, 1, Lmax, 0);
  CHECK(attnkit_test::max_abs_diff(a, b) <= tol * attnkit_test::max_abs(a));
  const auto c = prefill_then_decode(softmax{}, s, s.T, Lmax, 0);
  const auto d = prefill_then_decode(softmax{}, s, 5, Lmax, 0);
  CHECK(attnkit_test::max_abs_diff(c, d) <= tol * attnkit_test::max_abs(c));
}

TEST_CASE("KV cache: linear attention's prefill state continues through decode steps", "[kv_cache][linear]") {
  const sequence s(2, 4, 2, 37, 16, 12, 31);
  const linear pol{feature::elu_plus_one{}};
  std::vector<float> full(static_cast<std::size_t>(s.B * s.T * s.Hq * s.Dv)), streamed(full.size());
  options top_left;
  top_left.causal = causal::top_left;
  attention(pol, s.qs(0, s.T), s.ks(0, s.T), s.vs(0, s.T), s.os(full, 0, s.T), top_left);
  auto state = make_linear_state(pol, s.B, s.Hq, s.D, s.Dv);
  kv_cache_options o;
  for (index_t t0 = 0; t0 < s.T;) {
    const index_t n = t0 == 0 ? 30 : 1;  // a 30-token prompt, then single tokens
    std::vector<std::int64_t> seqlens(static_cast<std::size_t>(s.B), state.tokens);
    o.cache_seqlens = seqlens;
    o.k_new = s.ks(t0, n);
    o.v_new = s.vs(t0, n);
    attention_with_kv_cache(pol, s.qs(t0, n), state, s.os(streamed, t0, n), o);
    t0 += n;
  }
  CHECK(state.tokens == s.T);
  CHECK(attnkit_test::max_abs_diff(full, streamed) <= tol * attnkit_test::max_abs(full));
  // Rotary: the same as linear_step on rotated q and k.
  rope_tables rope(64, 16, false);
  auto st1 = make_linear_state(pol, s.B, s.Hq, s.D, s.Dv), st2 = st1;
  o.rotary = rope.emb;
  o.cache_seqlens = {};
  o.k_new = s.ks(0, s.T);
  o.v_new = s.vs(0, s.T);
  std::vector<float> a(full.size()), b(full.size()), qr(s.q.size()), kr(s.k.size());
  attention_with_kv_cache(pol, s.qs(0, s.T), st1, s.os(a, 0, s.T), o);
  for (index_t r = 0; r < s.B * s.T * s.Hq; ++r) {
    const auto y = rotate_naive(rope.emb, (r / s.Hq) % s.T, s.q.data() + r * s.D, s.D);
    std::copy(y.begin(), y.end(), qr.begin() + r * s.D);
  }
  for (index_t r = 0; r < s.B * s.T * s.Hkv; ++r) {
    const auto y = rotate_naive(rope.emb, (r / s.Hkv) % s.T, s.k.data() + r * s.D, s.D);
    std::copy(y.begin(), y.end(), kr.begin() + r * s.D);
  }
  linear_step(pol, bshd(qr.data(), s.B, s.T, s.Hq, s.D), bshd(kr.data(), s.B, s.T, s.Hkv, s.D), s.vs(0, s.T),
              s.os(b, 0, s.T), st2);
  CHECK(attnkit_test::max_abs_diff(a, b) <= tol * attnkit_test::max_abs(b));
  // A state that does not hold cache_seqlens tokens is refused.
  std::vector<std::int64_t> wrong{5, 5};
  o.rotary.reset();
  o.cache_seqlens = wrong;
  o.k_new = s.ks(0, 1);
  o.v_new = s.vs(0, 1);
  const auto a0 = a;
  const auto S0 = st2.S, z0 = st2.z;
  CHECK_THROWS_AS(attention_with_kv_cache(pol, s.qs(0, 1), st2, s.os(a, 0, 1), o), invalid_argument_error);
  CHECK(st2.tokens == s.T);  // nothing absorbed, nothing written
  CHECK((st2.S == S0 && st2.z == z0 && a == a0));
}

TEST_CASE("KV cache: q8 error against the float cache stays within the quantisation bound", "[kv_cache][q8]") {
  // Per value: |x − dequantised| ≤ scale/2 (scale = max|x| of its block / 127).
  const auto x = randn(4096, 3, 2.0f);
  for (bool fp16_scale : {true, false}) {
    std::vector<float> back(x.size());
    if (fp16_scale) {
      std::vector<block_q8<float16>> blk(x.size() / 32);
      quantize_q8(x.data(), 4096, blk.data());
      dequantize_q8(blk.data(), 4096, back.data());
      for (std::size_t i = 0; i < x.size(); ++i) CHECK(std::abs(x[i] - back[i]) <= 0.5f * blk[i / 32].scale.to_float() * 1.0001f);
    } else {
      std::vector<block_q8<float>> blk(x.size() / 32);
      quantize_q8(x.data(), 4096, blk.data());
      dequantize_q8(blk.data(), 4096, back.data());
      for (std::size_t i = 0; i < x.size(); ++i) CHECK(std::abs(x[i] - back[i]) <= 0.5f * blk[i / 32].scale * 1.0001f);
    }
  }
  // Specials: a block with NaN or Inf reads back NaN; zeros stay zeros.
  std::vector<float> sp(64, 0.0f);
  sp[40] = std::numeric_limits<float>::infinity();
  std::vector<block_q8<float16>> b2(2);
  quantize_q8(sp.data(), 64, b2.data());
  dequantize_q8(b2.data(), 64, sp.data());
  for (int i = 0; i < 32; ++i) CHECK(sp[static_cast<std::size_t>(i)] == 0.0f);
  for (int i = 32; i < 64; ++i) CHECK(std::isnan(sp[static_cast<std::size_t>(i)]));

  // The output: logit error ε_j = τ·Σ_i |q_i|·scale_ji/2 per key, so each weight
  // moves by a factor within e^{±2ε} (ε = max_j ε_j) and
  // |o_q8 − o_float| ≤ (e^{2ε} − 1)·max|v_q8| + max|v_q8 − v| (+ fp32 rounding).
  const index_t H = 2, L = 300, D = 64;
  const std::vector<std::int64_t> len{L};
  dense_cache<float> fl(1, L, H, D, D, false, len, 11);
  dense_cache<block_q8<float16>> q8(1, L, H, D, D, false, len, 11);
  for (index_t r = 0; r < H * L; ++r) {  // the same values, quantised
    quantize_q8(fl.k.data() + r * D, D, q8.k.data() + r * D / 32);
    quantize_q8(fl.v.data() + r * D, D, q8.v.data() + r * D / 32);
  }
  const auto q = randn(static_cast<std::size_t>(H * D), 12);
  std::vector<float> a(static_cast<std::size_t>(H * D)), b(a.size());
  kv_cache_options o;
  o.cache_seqlens = len;
  attention_with_kv_cache(softmax{}, bhsd(q.data(), 1, H, 1, D), q8.kview(), q8.vview(), bhsd(a.data(), 1, H, 1, D), o);
  attention_with_kv_cache(softmax{}, bhsd(q.data(), 1, H, 1, D), fl.kview(), fl.vview(), bhsd(b.data(), 1, H, 1, D), o);
  const auto kq = q8.floats(true), vq = q8.floats(false);
  const double tau = 1.0 / std::sqrt(static_cast<double>(D));
  double worst_ratio = 0;
  for (index_t h = 0; h < H; ++h) {
    double eps = 0, vmax = 0, dv = 0;
    for (index_t j = 0; j < L; ++j) {
      double e = 0;
      for (index_t i = 0; i < D; ++i)
        e += std::abs(q[static_cast<std::size_t>(h * D + i)]) * 0.5 * q8.k[static_cast<std::size_t>((h * L + j) * D / 32 + i / 32)].scale.to_float();
      eps = std::max(eps, tau * e);
      for (index_t i = 0; i < D; ++i) {
        const std::size_t at = static_cast<std::size_t>((h * L + j) * D + i);
        vmax = std::max(vmax, static_cast<double>(std::abs(vq[at])));
        dv = std::max(dv, static_cast<double>(std::abs(vq[at] - fl.v[at])));
      }
    }
    const double bound = (std::exp(2 * eps) - 1) * vmax + dv + 1e-5 * vmax;
    for (index_t i = 0; i < D; ++i) {
      const double err = std::abs(a[static_cast<std::size_t>(h * D + i)] - b[static_cast<std::size_t>(h * D + i)]);
      CHECK(err <= bound);
      worst_ratio = std::max(worst_ratio, err / bound);
    }
  }
  INFO("worst error / bound " << worst_ratio);
  CHECK(worst_ratio > 0.0);  // the q8 path really ran on quantised values
}

TEST_CASE("KV cache: results do not depend on the thread count", "[kv_cache][threads]") {
  for (index_t Hkv : {2, 32}) {  // few heads: split keys and merge; many heads: one task per head
    const index_t B = 2, Hq = 2 * Hkv, Lmax = 1200, D = 32;
    const std::vector<std::int64_t> len{1100, 700};
    dense_cache<float> c(B, Lmax, Hkv, D, D, true, len, 2);
    paged_buffers<bfloat16> p(B, Lmax / 16, 16, Hkv, D, D, len, len, 3);
    const auto q = randn(static_cast<std::size_t>(B * Hq * 3 * D), 4);
    std::vector<std::vector<float>> outs;
    for (int threads : {1, 2, 3, 7}) {
      kv_cache_options o;
      o.cache_seqlens = len;
      o.attention.num_threads = threads;
      std::vector<float> a(q.size()), b(q.size());
      attention_with_kv_cache(softmax{}, bhsd(q.data(), B, Hq, 3, D), c.kview(), c.vview(), bhsd(a.data(), B, Hq, 3, D), o);
      o.block_table = p.table;
      attention_with_kv_cache(softmax{}, bhsd(q.data(), B, Hq, 3, D), p.kcache(), p.vcache(), bhsd(b.data(), B, Hq, 3, D), o);
      a.insert(a.end(), b.begin(), b.end());
      outs.push_back(a);
    }
    for (std::size_t i = 1; i < outs.size(); ++i) CHECK(std::memcmp(outs[0].data(), outs[i].data(), outs[0].size() * sizeof(float)) == 0);
  }
}

TEST_CASE("KV cache: attention() on the cache's views gives the entry's bits", "[kv_cache][views]") {
  const index_t B = 2, Hq = 8, Hkv = 2, Lmax = 600, D = 64;
  const std::vector<std::int64_t> len{555, 20};
  dense_cache<float> c(B, Lmax, Hkv, D, D, true, len, 8);
  dense_cache<bfloat16> h(B, Lmax, Hkv, D, D, true, len, 8);
  for (index_t Lq : {1, 2}) {
    const auto q = randn(static_cast<std::size_t>(B * Hq * Lq * D), 9);
    std::vector<float> a(q.size()), b(q.size()), x(q.size()), y(q.size());
    kv_cache_options o;
    o.cache_seqlens = len;
    options plain;
    plain.key_lengths = len;
    plain.causal = causal::bottom_right;
    const auto qv = bshd(q.data(), B, Lq, Hq, D);
    attention_with_kv_cache(softmax{}, qv, c.kview(), c.vview(), bshd(a.data(), B, Lq, Hq, D), o);
    attention(softmax{}, qv, c.kview(), c.vview(), bshd(b.data(), B, Lq, Hq, D), plain);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    attention_with_kv_cache(softmax{}, qv, h.kview(), h.vview(), bshd(x.data(), B, Lq, Hq, D), o);
    attention(softmax{}, qv, tensor_view<const bfloat16>(h.kview()), tensor_view<const bfloat16>(h.vview()),
              bshd(y.data(), B, Lq, Hq, D), plain);
    CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("KV cache: a NaN in a new key stays out of the rows that cannot see it", "[kv_cache][nan]") {
  // Four new tokens, causal among them: the last token's key/value hold NaN; rows
  // 0–2 do not see it and must equal the oracle, row 3 sees it and is NaN.
  for (bool in_v : {true, false}) {
    const index_t B = 1, H = 2, Lmax = 64, D = 32, Lnew = 4;
    const std::vector<std::int64_t> fill{20};
    dense_cache<float> c(B, Lmax, H, D, D, false, fill, 4);
    auto kn = randn(static_cast<std::size_t>(B * H * Lnew * D), 5), vn = randn(kn.size(), 6);
    for (index_t g = 0; g < H; ++g) (in_v ? vn : kn)[static_cast<std::size_t>((g * Lnew + 3) * D + 7)] = nan_f;
    const auto q = randn(static_cast<std::size_t>(B * H * Lnew * D), 7);
    std::vector<float> out(q.size());
    kv_cache_options o;
    o.cache_seqlens = fill;
    o.k_new = bhsd(kn.data(), B, H, Lnew, D);
    o.v_new = bhsd(vn.data(), B, H, Lnew, D);
    attention_with_kv_cache(softmax{}, bhsd(q.data(), B, H, Lnew, D), c.kview(), c.vview(), bhsd(out.data(), B, H, Lnew, D), o);
    const std::vector<std::int64_t> len{24};
    const auto e = compare(softmax{}, q, c.floats(true), c.floats(false), out, B, H, H, Lnew, Lmax, D, D, len,
                           options{.causal = causal::bottom_right});
    INFO((in_v ? "NaN in v" : "NaN in k"));
    CHECK(e.err <= tol);
    CHECK_FALSE(e.nan_mismatch);
    for (index_t g = 0; g < H; ++g)
      for (index_t i = 0; i < 3; ++i) CHECK(std::isfinite(out[static_cast<std::size_t>((g * Lnew + i) * D)]));
  }
}

namespace {
/// A valid call that each validation case breaks in one way.
struct bad_call {
  index_t B = 2, Hq = 4, Hkv = 2, Lmax = 64, D = 32, Lnew = 2, ps = 16;
  std::vector<std::int64_t> seqlens{10, 30};
  std::vector<float> kc = std::vector<float>(static_cast<std::size_t>(B * Lmax * Hkv * D), 1.0f), vc = kc;
  std::vector<float> q = randn(static_cast<std::size_t>(B * Hq * Lnew * D), 1), out = std::vector<float>(q.size(), 3.0f);
  std::vector<float> kn = randn(static_cast<std::size_t>(B * Hkv * Lnew * D), 2), vn = kn;
  std::vector<std::int32_t> table{0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<float> pool_k = std::vector<float>(static_cast<std::size_t>(8 * ps * Hkv * D), 2.0f), pool_v = pool_k;
  kv_cache_options o;
  bad_call() {
    o.cache_seqlens = seqlens;
    o.k_new = bhsd(kn.data(), B, Hkv, Lnew, D);
    o.v_new = bhsd(vn.data(), B, Hkv, Lnew, D);
  }
  tensor_view<float> kview() { return bshd(kc.data(), B, Lmax, Hkv, D); }
  tensor_view<float> vview() { return bshd(vc.data(), B, Lmax, Hkv, D); }
  tensor_view<const float> qview() const { return bhsd(q.data(), B, Hq, Lnew, D); }
  tensor_view<float> oview() { return bhsd(out.data(), B, Hq, Lnew, D); }
  void dense() { attention_with_kv_cache(softmax{}, qview(), kview(), vview(), oview(), o); }
  void paged_call() {
    o.block_table = table;
    attention_with_kv_cache(softmax{}, qview(), paged(pool_k.data(), 8, ps, Hkv, D), paged(pool_v.data(), 8, ps, Hkv, D),
                            oview(), o);
  }
};

template <class F>
void expect_rejected(const std::string& what, const std::string& argument, F&& run) {
  bad_call c;
  const auto before = std::make_tuple(c.kc, c.vc, c.out, c.pool_k, c.pool_v);
  INFO(what);
  try {
    run(c);
    FAIL("no exception");
  } catch (const invalid_argument_error& e) {
    INFO(e.what());
    CHECK(e.argument() == argument);
  }
  CHECK((std::make_tuple(c.kc, c.vc, c.out, c.pool_k, c.pool_v) == before));  // nothing written
}
}  // namespace

TEST_CASE("KV cache: bad input is rejected before anything is written", "[kv_cache][validation]") {
  const std::string seqlens = "kv_cache_options.cache_seqlens", table = "kv_cache_options.block_table";
  { bad_call ok; ok.dense(); ok.paged_call(); }  // the unbroken calls pass
  expect_rejected("negative cache_seqlens", seqlens, [](bad_call& c) { c.seqlens[1] = -1; c.dense(); });
  expect_rejected("cache_seqlens beyond the capacity", seqlens, [](bad_call& c) { c.seqlens[0] = 65; c.dense(); });
  expect_rejected("new tokens that do not fit", "kv_cache_options.k_new", [](bad_call& c) { c.seqlens[1] = 63; c.dense(); });
  expect_rejected("cache_seqlens of the wrong size", seqlens, [](bad_call& c) { c.o.cache_seqlens = std::span(c.seqlens).first(1); c.dense(); });
  // The new user's view: as long as the current length. The message names the fix.
  {
    bad_call c;
    c.seqlens = {30, 30};
    try {
      attention_with_kv_cache(softmax{}, c.qview(), bshd(c.kc.data(), c.B, 30, c.Hkv, c.D), bshd(c.vc.data(), c.B, 30, c.Hkv, c.D),
                              c.oview(), c.o);
      FAIL("no exception");
    } catch (const invalid_argument_error& e) {
      CHECK(std::string(e.what()).find("bshd(k_cache, B, Lmax, Hkv, D)") != std::string::npos);
    }
  }
  expect_rejected("a block-table entry outside the pool", table, [](bad_call& c) { c.table[4] = 8; c.paged_call(); });
  expect_rejected("a negative block-table entry", table, [](bad_call& c) { c.table[0] = -1; c.paged_call(); });
  expect_rejected("a page twice in one sequence", table, [](bad_call& c) { c.table[5] = 4; c.paged_call(); });
  expect_rejected("a page written by one sequence and read by another", table, [](bad_call& c) { c.table[4] = 0; c.paged_call(); });
  expect_rejected("new tokens past the block table", "kv_cache_options.k_new", [](bad_call& c) { c.seqlens[1] = 63; c.paged_call(); });
  expect_rejected("a block table of the wrong size", table, [](bad_call& c) { c.table.pop_back(); c.paged_call(); });
  expect_rejected("page_size not a multiple of 16", "k_cache", [](bad_call& c) {
    c.o.block_table = c.table;
    attention_with_kv_cache(softmax{}, c.qview(), paged(c.pool_k.data(), 8, 8, c.Hkv, c.D), paged(c.pool_v.data(), 8, 8, c.Hkv, c.D),
                            c.oview(), c.o);
  });
  expect_rejected("k_new with the wrong heads", "kv_cache_options.k_new", [](bad_call& c) { c.o.k_new.extent[head_axis] = 1; c.dense(); });
  expect_rejected("v_new shorter than k_new", "kv_cache_options.v_new", [](bad_call& c) { c.o.v_new.extent[seq_axis] = 1; c.dense(); });
  expect_rejected("q with another head dim", "k_cache", [](bad_call& c) {
    attention_with_kv_cache(softmax{}, bhsd(c.q.data(), c.B, c.Hq, c.Lnew, c.D / 2), c.kview(), c.vview(),
                            bhsd(c.out.data(), c.B, c.Hq, c.Lnew, c.D), c.o);
  });
  expect_rejected("a view of const elements to append into", "k_cache", [](bad_call& c) {
    attention_with_kv_cache(softmax{}, c.qview(), tensor_view<const float>(c.kview()), tensor_view<const float>(c.vview()),
                            c.oview(), c.o);
  });
  expect_rejected("top-left causal", "kv_cache_options.attention.causal", [](bad_call& c) { c.o.attention.causal = causal::top_left; c.dense(); });
  expect_rejected("key_lengths set", "kv_cache_options.attention.key_lengths", [](bad_call& c) { c.o.attention.key_lengths = c.seqlens; c.dense(); });
  expect_rejected("positions set", "kv_cache_options.attention.positions", [](bad_call& c) { c.o.attention.positions = positions{0, 0}; c.dense(); });
  expect_rejected("out inside the cache", "out", [](bad_call& c) {
    attention_with_kv_cache(softmax{}, c.qview(), c.kview(), c.vview(), bhsd(c.kc.data() + 8, c.B, c.Hq, c.Lnew, c.D), c.o);
  });
  expect_rejected("a bad option (negative window)", "options.window", [](bad_call& c) { c.o.attention.window.left = -5; c.dense(); });
  expect_rejected("rotary_dim odd", "kv_cache_options.rotary", [](bad_call& c) {
    static const rope_tables rope(64, 16, false);
    c.o.rotary = rope.emb;
    c.o.rotary->rotary_dim = 15;
    c.dense();
  });
  expect_rejected("rotary tables too short", "kv_cache_options.rotary", [](bad_call& c) {
    static const rope_tables rope(20, 16, false);
    c.o.rotary = rope.emb;
    c.dense();
  });
  expect_rejected("q8 with D not a multiple of 32", "q", [](bad_call& c) {
    std::vector<block_q8<float16>> kq(64), vq(64);
    attention_with_kv_cache(softmax{}, bhsd(c.q.data(), c.B, c.Hq, c.Lnew, 16), bhsd(kq.data(), c.B, c.Hkv, 16, 1),
                            bhsd(vq.data(), c.B, c.Hkv, 16, 1), bhsd(c.out.data(), c.B, c.Hq, c.Lnew, 32), c.o);
  });
}

TEMPLATE_LIST_TEST_CASE("q8 decode kernels (dot16_q8, pv_rows_q8) equal float64 loops", "[simd][q8]", kvt::archs) {
  if constexpr (simd::has_wide_kv_kernels<TestType>) {
    for (long d : {32L, 64L, 96L, 128L, 256L})
      for (int n : {1, 7, 16}) {
        const long ldk = d / 32 + 1;
        const auto kf = randn(static_cast<std::size_t>(16 * ldk * 32), 41);
        std::vector<block_q8<float16>> k(static_cast<std::size_t>(16 * ldk));
        quantize_q8(kf.data(), 16 * ldk * 32, k.data());
        const auto q = randn(static_cast<std::size_t>(d), 42);
        float out[16];
        std::fill_n(out, 16, -7.0f);
        simd::dot16_q8<TestType>(q.data(), d, k.data(), ldk, n, out);
        for (int j = 0; j < 16; ++j) {
          INFO("d " << d << " n " << n << " key " << j);
          if (j >= n) {
            CHECK(out[j] == -7.0f);
            continue;
          }
          const auto kv = values(k.data() + j * ldk, d);
          double ref = 0;
          for (long i = 0; i < d; ++i) ref += static_cast<double>(q[static_cast<std::size_t>(i)]) * kv[static_cast<std::size_t>(i)];
          CHECK(out[j] == Approx(ref).margin(1e-4));
          // The same bits as dot16 on the dequantised rows.
          std::vector<float> rows(static_cast<std::size_t>(16 * d));
          for (int x = 0; x < 16; ++x) detail::row_to_float(k.data() + x * ldk, rows.data() + x * d, d);
          float same[16];
          simd::dot16<TestType>(q.data(), d, rows.data(), d, n, same);
          CHECK(same[j] == out[j]);
        }
      }
    for (long dv : {32L, 64L, 160L})
      for (int R = 1; R <= 6; ++R) {
        const long keys = 37, ldv = dv / 32 + 2, ldp = keys + 2, ldo = dv + 1;
        const auto p = randn(static_cast<std::size_t>(R * ldp), 51);
        const auto vf = randn(static_cast<std::size_t>(keys * ldv * 32), 52);
        std::vector<block_q8<float>> v(static_cast<std::size_t>(keys * ldv));
        quantize_q8(vf.data(), keys * ldv * 32, v.data());
        auto o = randn(static_cast<std::size_t>(R * ldo), 53);
        const auto o0 = o;
        simd::pv_rows_q8<TestType>(R, p.data(), ldp, v.data(), ldv, keys, o.data(), ldo, dv);
        for (int r = 0; r < R; ++r)
          for (long c = 0; c < dv; ++c) {
            double ref = o0[static_cast<std::size_t>(r * ldo + c)];
            for (long j = 0; j < keys; ++j)
              ref += static_cast<double>(p[static_cast<std::size_t>(r * ldp + j)]) * values(v.data() + j * ldv, dv)[static_cast<std::size_t>(c)];
            INFO("dv " << dv << " R " << R << " row " << r << " col " << c);
            CHECK(o[static_cast<std::size_t>(r * ldo + c)] == Approx(ref).margin(1e-4));
          }
      }
  }
}
