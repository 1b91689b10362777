// The transport-free half of ring attention (attnkit/distributed/ring_plan.hpp), in
// one process, so it also runs where MPI is absent and under the sanitizers:
//   - layouts: every position held exactly once, zig-zag chunks within one of each other;
//   - the visibility test that skips block pairs equals a brute-force search;
//   - the whole ring simulated rank by rank (the same run_block / accumulator the MPI
//     ring uses, blocks in ring order) equals attention() on the whole sequence and
//     the float64 oracle: contiguous and zig-zag, uneven and empty blocks, both causal
//     alignments, window, ALiBi, softcap, sinks (counted once), masked rows, GQA,
//     mask and bias in global key order, decode-sized query blocks, bfloat16 K/V.
// Tolerance: 2e-5·max|oracle| for outputs, 2e-5 relative for LSE (the softmax
// kernel's, test_softmax_oracle.cpp), against attention() and against the oracle.
#include <catch2/catch.hpp>

#include "ring_support.hpp"

using namespace attnkit;
using attnkit::distributed::chunk;
using attnkit::distributed::layout;
using attnkit_test::problem;

namespace {
constexpr double tol = 2e-5;

template <class KV>
KV to_kv(float x) {
  if constexpr (std::is_same_v<KV, float>)
    return x;
  else
    return KV::from_float(x);
}

TEST_CASE("ring layouts hold every position exactly once", "[ring][layout]") {
  for (layout l : {layout::contiguous, layout::zigzag})
    for (int P = 1; P <= 6; ++P)
      for (index_t n : {0, 1, 5, 11, 12, 13, 50}) {
        std::vector<int> seen(static_cast<std::size_t>(n), 0);
        index_t min_chunk = n, max_chunk = 0;
        for (int r = 0; r < P; ++r) {
          index_t local = 0;
          for (const chunk& c : distributed::chunks_of(l, n, P, r)) {
            CHECK(c.local == local);  // runs follow one another in the local tensor
            local += c.length;
            min_chunk = std::min(min_chunk, c.length);
            max_chunk = std::max(max_chunk, c.length);
            for (index_t i = 0; i < c.length; ++i) ++seen[static_cast<std::size_t>(c.global + i)];
          }
          if (l == layout::zigzag) CHECK(local == distributed::detail::ring_plan::zigzag_local(n, P, r));
        }
        INFO("layout " << static_cast<int>(l) << " P=" << P << " n=" << n);
        for (int s : seen) CHECK(s == 1);
        CHECK(max_chunk - min_chunk <= 1);
      }
  CHECK_THROWS_AS(distributed::chunks_of(layout::zigzag, 10, 2, 2), invalid_argument_error);
}

TEST_CASE("ring pair visibility equals a brute-force search", "[ring][plan]") {
  const index_t Nq = 23, Nk = 31;
  for (causal c : {causal::none, causal::top_left, causal::bottom_right})
    for (window w : {window{}, window{0, 0}, window{3, -1}, window{-1, 2}, window{4, 6}, window{40, 0}}) {
      options o;
      o.causal = c;
      o.window = w;
      // 4 ranks, zig-zag: 8 query and 8 key chunks of uneven lengths.
      std::vector<index_t> nq, nk;
      for (int r = 0; r < 4; ++r) {
        nq.push_back(distributed::detail::ring_plan::zigzag_local(Nq, 4, r));
        nk.push_back(distributed::detail::ring_plan::zigzag_local(Nk, 4, r));
      }
      const auto plan = distributed::detail::ring_plan::make(layout::zigzag, nq, nk, c);
      const index_t delta = c == causal::top_left ? 0 : Nk - Nq;
      for (const auto& qr : plan.q)
        for (const chunk& qc : qr)
          for (const auto& kr : plan.k)
            for (const chunk& kc : kr) {
              bool any = false;
              for (index_t i = qc.global; i < qc.global + qc.length; ++i)
                for (index_t j = kc.global; j < kc.global + kc.length; ++j) {
                  bool ok = c == causal::none || j <= i + delta;
                  if (w.left >= 0 && j < i + (Nk - Nq) - w.left) ok = false;
                  if (w.right >= 0 && j > i + (Nk - Nq) + w.right) ok = false;
                  any = any || ok;
                }
              INFO("causal " << static_cast<int>(c) << " window {" << w.left << ", " << w.right << "} q["
                             << qc.global << "+" << qc.length << "] k[" << kc.global << "+" << kc.length << "]");
              // top-left with a window needs Nq == Nk (ring_attention rejects the rest).
              if (c != causal::top_left || !w.active()) CHECK(plan.visible(o, qc, kc) == any);
            }
    }
}

/// The ring in one process: rank by rank, blocks in ring order, then finish().
/// `global_mask` [1, 1, Lq, Lk] and `global_bias` [1, Hq, Lq, Lk] are in global order.
template <class KV = float>
void simulate_and_check(const problem& p, const options& o, layout l, int P, const std::vector<index_t>& lq = {},
                        const std::vector<index_t>& lk = {}, const std::vector<char>* global_mask = nullptr,
                        const std::vector<float>* global_bias = nullptr) {
  const ringtest::expected e = ringtest::whole(p, [&] {
    options w = o;
    if (global_mask) w.mask = bhsd(reinterpret_cast<const bool*>(global_mask->data()), 1, 1, p.Lq, p.Lk);
    if (global_bias) w.bias = bhsd(global_bias->data(), 1, p.Hq, p.Lq, p.Lk);
    return w;
  }());
  std::vector<index_t> nq, nk;
  for (int r = 0; r < P; ++r) {
    nq.push_back(ringtest::rows_in(ringtest::runs_of(l, p.Lq, P, r, lq)));
    nk.push_back(ringtest::rows_in(ringtest::runs_of(l, p.Lk, P, r, lk)));
  }
  const auto plan = distributed::detail::ring_plan::make(l, nq, nk, o.causal);
  int calls = 0;
  for (int me = 0; me < P; ++me) {
    const auto& qruns = plan.q[static_cast<std::size_t>(me)];
    const index_t n = nq[static_cast<std::size_t>(me)];
    const auto q = ringtest::take_rows(p.q, p.B, p.Hq, p.Lq, p.D, qruns);
    std::vector<char> mask;
    options mine = o;
    if (global_mask) {
      mask = ringtest::take_rows(*global_mask, 1, 1, p.Lq, p.Lk, qruns);
      mine.mask = bhsd(reinterpret_cast<const bool*>(mask.data()), 1, 1, n, p.Lk);
    }
    std::vector<float> bias;
    if (global_bias) {
      bias = ringtest::take_rows(*global_bias, 1, p.Hq, p.Lq, p.Lk, qruns);
      mine.bias = bhsd(static_cast<const float*>(bias.data()), 1, p.Hq, n, p.Lk);
    }
    std::vector<float> storage(7, 123.0f);  // reused storage starts with stale values
    distributed::detail::ring_accumulator acc(p.B, p.Hq, p.Dv, qruns, storage);
    for (int s = 0; s < P; ++s) {
      const int src = (me + s) % P;
      const auto& kruns = plan.k[static_cast<std::size_t>(src)];
      const index_t m = nk[static_cast<std::size_t>(src)];
      std::vector<KV> k, v;
      for (float x : ringtest::take_rows(p.k, p.B, p.Hkv, p.Lk, p.D, kruns)) k.push_back(to_kv<KV>(x));
      for (float x : ringtest::take_rows(p.v, p.B, p.Hkv, p.Lk, p.Dv, kruns)) v.push_back(to_kv<KV>(x));
      calls += distributed::detail::run_block<simd::default_arch>(
          softmax{}, plan, me, src, bhsd(static_cast<const float*>(q.data()), p.B, p.Hq, n, p.D),
          bhsd(static_cast<const KV*>(k.data()), p.B, p.Hkv, m, p.D),
          bhsd(static_cast<const KV*>(v.data()), p.B, p.Hkv, m, p.Dv), mine, acc, [] {});
    }
    std::vector<float> out(static_cast<std::size_t>(p.B * p.Hq * n * p.Dv), -9.0f),
        lse(static_cast<std::size_t>(p.B * p.Hq * n), -9.0f);
    acc.finish(mine, bhsd(out.data(), p.B, p.Hq, n, p.Dv), lse.data(), n);
    const auto err = ringtest::compare_rows(p, qruns, out, lse, e);
    INFO("layout " << static_cast<int>(l) << " P=" << P << " rank " << me << " causal "
                   << static_cast<int>(o.causal) << " Lq=" << p.Lq << " Lk=" << p.Lk);
    CHECK(err.vs_single <= tol);
    CHECK(err.vs_oracle <= tol);
    CHECK(err.lse_single <= tol);
    CHECK(err.lse_oracle <= tol);
    CHECK_FALSE(err.nan_mismatch);
  }
  CHECK(calls > 0);
}
}  // namespace

TEST_CASE("ring simulated in one process equals the whole-sequence call", "[ring][simulation]") {
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> sinks = {2.0f, -1.0f, 3.0f, 0.5f};  // large: a sink counted twice shows
  const problem square(2, 4, 2, 97, 97, 40, 24, 31), wide(1, 4, 2, 70, 131, 32, 16, 32);
  for (layout l : {layout::contiguous, layout::zigzag})
    for (int P : {1, 2, 3, 4}) {
      options o;
      simulate_and_check(square, o, l, P);
      o.causal = causal::top_left;
      simulate_and_check(square, o, l, P);
      simulate_and_check(wide, o, l, P);  // top-left, Lq ≠ Lk, no window
      o.causal = causal::bottom_right;
      simulate_and_check(wide, o, l, P);
      o.window = {13, 4};
      o.alibi_slopes = slopes;
      simulate_and_check(wide, o, l, P);
      o.causal = causal::top_left;
      simulate_and_check(square, o, l, P);  // top-left with window + ALiBi, Lq = Lk
      o.causal = causal::none;
      o.window = {9, 9};
      o.alibi_slopes = {};
      simulate_and_check(square, o, l, P);
      // Queries before every key (bottom-right, Lq > Lk): masked rows, with sinks.
      options s;
      s.causal = causal::bottom_right;
      s.softcap = 3.0f;
      s.sinks = sinks;
      for (masked_rows mr : {masked_rows::zero, masked_rows::nan}) {
        s.masked_rows = mr;
        simulate_and_check(problem(1, 4, 4, 120, 50, 16, 16, 33), s, l, P);
        simulate_and_check(wide, s, l, P);
      }
    }
}

TEST_CASE("ring simulation: uneven and empty blocks, decode rows, 16-bit K/V, mask, bias", "[ring][simulation]") {
  options o;
  o.causal = causal::bottom_right;
  const problem p(1, 4, 2, 60, 90, 32, 32, 34);
  simulate_and_check(p, o, layout::contiguous, 4, {60, 0, 0, 0}, {0, 0, 45, 45});
  simulate_and_check(p, o, layout::contiguous, 4, {0, 20, 0, 40}, {90, 0, 0, 0});
  simulate_and_check(p, o, layout::contiguous, 3, {1, 58, 1}, {30, 0, 60});
  // Decode: 3 query rows over 4 ranks (some empty), keys in 3 kernel chunks per rank.
  const problem dec(1, 8, 2, 3, 4400, 64, 64, 35);
  simulate_and_check(dec, o, layout::contiguous, 4);
  simulate_and_check(dec, o, layout::zigzag, 4);
  problem half(1, 4, 2, 50, 70, 32, 32, 36);  // K/V values that bfloat16 holds exactly
  for (auto* t : {&half.k, &half.v})
    for (float& x : *t) x = bfloat16::from_float(x).to_float();
  simulate_and_check<bfloat16>(half, o, layout::zigzag, 3);
  // A boolean mask in global key order (zig-zag: a rank's columns are scattered).
  const problem m(1, 4, 2, 64, 64, 16, 16, 37);
  std::vector<char> mask(static_cast<std::size_t>(64 * 64));
  for (std::size_t x = 0; x < mask.size(); ++x) mask[x] = (x * 2654435761u >> 7) % 3 != 0;
  o.causal = causal::top_left;
  simulate_and_check(m, o, layout::zigzag, 4, {}, {}, &mask);
  simulate_and_check(m, o, layout::contiguous, 3, {}, {}, &mask);
  // An additive bias per head, in global key order, with and without the mask.
  const std::vector<float> bias = attnkit_test::randn(static_cast<std::size_t>(4 * 64 * 64), 38, 2.0f);
  simulate_and_check(m, o, layout::zigzag, 3, {}, {}, nullptr, &bias);
  o.causal = causal::none;
  simulate_and_check(m, o, layout::contiguous, 4, {10, 0, 50, 4}, {}, &mask, &bias);
}
