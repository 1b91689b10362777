// The backward pass of ring attention across MPI ranks (run by ctest under mpiexec
// with 2 and 4 ranks): every rank builds the same whole-sequence problem and its
// gradients with attention() + attention_backward() in one process, then takes its
// rows under the layout, runs ring_attention + ring_attention_backward and compares
// its rows of dq and its keys of dk, dv. Covered: both layouts, causal both
// alignments, window, ALiBi, softcap, sinks, NaN/zero masked rows, a NaN key, GQA, uneven
// blocks with empty ranks, decode-sized query blocks, bf16 K/V, a mask in global key
// order, accumulate, bitwise determinism (threads, timing), and bad input on one
// rank (every rank throws the same error, no gradient byte written).
// Tolerance: 1e-4 · max|gradient| per tensor, the single-process backward's own
// (tests/test_backward_softmax.cpp); NaN patterns must match exactly.
#include <attnkit/distributed/ring.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <utility>

#include "../ring_support.hpp"

using namespace attnkit;
using attnkit::distributed::layout;
using attnkit_test::problem;
using ringtest::chunk;

namespace {
constexpr double tol = 1e-4;
int g_rank = 0, g_size = 1, g_checks = 0, g_failures = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "[rank %d/%d] FAILED: %s\n", g_rank, g_size, what.c_str());
  }
}

struct grads {
  std::vector<float> dq, dk, dv;
};

/// The whole sequence in one process: forward, then backward for `dout`.
grads whole(const problem& p, const std::vector<float>& dout, options o) {
  std::vector<float> out(p.out_size()), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
  o.lse = lse.data();
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  grads g{std::vector<float>(p.q.size()), std::vector<float>(p.k.size()), std::vector<float>(p.v.size())};
  attention_backward(softmax{}, p.qv(), p.kv(), p.vv(), bhsd(out.data(), p.B, p.Hq, p.Lq, p.Dv), lse.data(),
                     bhsd(dout.data(), p.B, p.Hq, p.Lq, p.Dv), bhsd(g.dq.data(), p.B, p.Hq, p.Lq, p.D),
                     bhsd(g.dk.data(), p.B, p.Hkv, p.Lk, p.D), bhsd(g.dv.data(), p.B, p.Hkv, p.Lk, p.Dv), o);
  return g;
}

struct ring_case {
  std::string name;
  problem p;
  options opt{};
  layout lay = layout::contiguous;
  std::vector<index_t> lq{}, lk{};          ///< contiguous lengths per rank (empty: the layout's split)
  bool bf16 = false;                        ///< K/V stored and sent as bfloat16
  const std::vector<char>* mask = nullptr;  ///< [Lq, Lk] in global order
  float start = 0.0f;                       ///< accumulate onto gradients filled with this (0: overwrite)
};

/// This rank's gradients from the ring: forward (for out and lse), then backward.
grads run_ring(const ring_case& c, const std::vector<float>& dout_all, const options& opt, int tag = 5100) {
  const problem& p = c.p;
  const auto qr = ringtest::runs_of(c.lay, p.Lq, g_size, g_rank, c.lq);
  const auto kr = ringtest::runs_of(c.lay, p.Lk, g_size, g_rank, c.lk);
  const index_t n = ringtest::rows_in(qr), m = ringtest::rows_in(kr);
  const auto q = ringtest::take_rows(p.q, p.B, p.Hq, p.Lq, p.D, qr);
  const auto k = ringtest::take_rows(p.k, p.B, p.Hkv, p.Lk, p.D, kr);
  const auto v = ringtest::take_rows(p.v, p.B, p.Hkv, p.Lk, p.Dv, kr);
  const auto dout = ringtest::take_rows(dout_all, p.B, p.Hq, p.Lq, p.Dv, qr);
  std::vector<char> mask;
  options o = opt;
  if (c.mask) {
    mask = ringtest::take_rows(*c.mask, 1, 1, p.Lq, p.Lk, qr);
    o.mask = bhsd(reinterpret_cast<const bool*>(mask.data()), 1, 1, n, p.Lk);
  }
  std::vector<float> out(static_cast<std::size_t>(p.B * p.Hq * n * p.Dv)), lse(static_cast<std::size_t>(p.B * p.Hq * n));
  o.lse = lse.data();
  grads g{std::vector<float>(q.size(), c.start), std::vector<float>(k.size(), c.start),
          std::vector<float>(v.size(), c.start)};
  backward_options bo;
  bo.accumulate = c.start != 0.0f;
  const distributed::ring_options ro{.layout = c.lay, .tag = tag};
  auto run = [&](const auto& kk, const auto& vv) {
    using KV = typename std::decay_t<decltype(kk)>::value_type;
    const auto kview = bhsd(kk.data(), p.B, p.Hkv, m, p.D);
    const auto vview = bhsd(vv.data(), p.B, p.Hkv, m, p.Dv);
    const auto qview = bhsd(q.data(), p.B, p.Hq, n, p.D);
    distributed::ring_attention(softmax{}, qview, tensor_view<const KV>(kview), tensor_view<const KV>(vview),
                                bhsd(out.data(), p.B, p.Hq, n, p.Dv), o, MPI_COMM_WORLD, ro);
    distributed::ring_attention_backward(softmax{}, qview, tensor_view<const KV>(kview), tensor_view<const KV>(vview),
                                         bhsd(std::as_const(out).data(), p.B, p.Hq, n, p.Dv), lse.data(),
                                         bhsd(dout.data(), p.B, p.Hq, n, p.Dv), bhsd(g.dq.data(), p.B, p.Hq, n, p.D),
                                         bhsd(g.dk.data(), p.B, p.Hkv, m, p.D), bhsd(g.dv.data(), p.B, p.Hkv, m, p.Dv),
                                         o, MPI_COMM_WORLD, ro, bo);
  };
  if (c.bf16) {
    std::vector<bfloat16> kh, vh;
    for (float x : k) kh.push_back(bfloat16::from_float(x));
    for (float x : v) vh.push_back(bfloat16::from_float(x));
    run(kh, vh);
  } else {
    run(k, v);
  }
  return g;
}

/// max |got − want| / max|want| over the rows of `runs`; NaN patterns must agree.
double rel_error(const std::vector<float>& got, const std::vector<float>& all, index_t B, index_t H, index_t N,
                 index_t D, const std::vector<chunk>& runs, float start, bool& nan_mismatch) {
  const auto want = ringtest::take_rows(all, B, H, N, D, runs);
  double scale = 1e-30, err = 0;
  for (float x : all)
    if (!std::isnan(x)) scale = std::max(scale, static_cast<double>(std::abs(x)));
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double w = static_cast<double>(want[i]) + start;
    if (std::isnan(w) != std::isnan(got[i])) nan_mismatch = true;
    if (!std::isnan(w) && !std::isnan(got[i])) err = std::max(err, std::abs(got[i] - w) / scale);
  }
  return err;
}

void run_case(const ring_case& c) {
  problem p = c.p;
  if (c.bf16)  // the whole-sequence call sees the values bfloat16 holds
    for (auto* t : {&p.k, &p.v})
      for (float& x : *t) x = bfloat16::from_float(x).to_float();
  const auto dout = attnkit_test::randn(p.out_size(), 991, 1.0f);
  options whole_opt = c.opt;
  if (c.mask) whole_opt.mask = bhsd(reinterpret_cast<const bool*>(c.mask->data()), 1, 1, p.Lq, p.Lk);
  const grads e = whole(p, dout, whole_opt);
  ring_case cc = c;
  cc.p = p;
  const grads r = run_ring(cc, dout, c.opt);
  const auto qr = ringtest::runs_of(c.lay, p.Lq, g_size, g_rank, c.lq);
  const auto kr = ringtest::runs_of(c.lay, p.Lk, g_size, g_rank, c.lk);
  bool nan_mismatch = false;
  const double eq = rel_error(r.dq, e.dq, p.B, p.Hq, p.Lq, p.D, qr, c.start, nan_mismatch);
  const double ek = rel_error(r.dk, e.dk, p.B, p.Hkv, p.Lk, p.D, kr, c.start, nan_mismatch);
  const double ev = rel_error(r.dv, e.dv, p.B, p.Hkv, p.Lk, p.Dv, kr, c.start, nan_mismatch);
  const std::string tag = c.name + " (" + (c.lay == layout::zigzag ? "zigzag" : "contiguous") + ")";
  check(eq <= tol, tag + ": dq vs attention_backward() " + std::to_string(eq));
  check(ek <= tol, tag + ": dk vs attention_backward() " + std::to_string(ek));
  check(ev <= tol, tag + ": dv vs attention_backward() " + std::to_string(ev));
  check(!nan_mismatch, tag + ": NaN pattern differs");
}

std::vector<index_t> gappy(index_t n) {  // uneven lengths, odd ranks empty
  std::vector<index_t> l(static_cast<std::size_t>(g_size), 0);
  index_t left = n;
  for (int r = 0; r < g_size; r += 2) {
    l[static_cast<std::size_t>(r)] = r + 2 >= g_size ? left : std::min(left, left / 3 + 1);
    left -= l[static_cast<std::size_t>(r)];
  }
  return l;
}

void correctness_cases() {
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> sinks = {2.0f, -1.0f, 3.0f, 0.5f};
  const problem square(2, 4, 2, 67, 67, 40, 24, 61), wide(1, 4, 2, 50, 93, 32, 16, 62);
  std::vector<char> mask(static_cast<std::size_t>(67 * 67));
  for (std::size_t x = 0; x < mask.size(); ++x) mask[x] = (x * 2654435761u >> 9) % 4 != 0;
  for (layout l : {layout::contiguous, layout::zigzag}) {
    auto add = [&](std::string name, const problem& p, options o) { run_case({std::move(name), p, o, l}); };
    options o;
    add("no mask, GQA", square, o);
    o.causal = causal::top_left;
    add("causal top-left", square, o);
    add("causal top-left, Lq != Lk", wide, o);
    o.causal = causal::bottom_right;
    add("causal bottom-right, Lq != Lk", wide, o);
    o.window = {13, 4};
    o.alibi_slopes = slopes;
    add("bottom-right + window + ALiBi", wide, o);
    options s;
    s.causal = causal::bottom_right;
    s.softcap = 3.0f;
    s.sinks = sinks;
    add("softcap + sinks", wide, s);
    s.masked_rows = masked_rows::nan;
    add("sinks + NaN masked rows", problem(1, 4, 4, 90, 40, 16, 16, 63), s);
    s.masked_rows = masked_rows::zero;
    s.sinks = {};
    add("zero masked rows", problem(1, 4, 4, 90, 40, 16, 16, 63), s);
    options c;
    c.causal = causal::bottom_right;
    add("decode rows (3 queries, 700 keys)", problem(1, 4, 2, 3, 700, 64, 64, 64), c);
    run_case({"bf16 K/V", wide, c, l, {}, {}, true});
    run_case({"accumulate", wide, c, l, {}, {}, false, nullptr, 0.75f});
    options tl;
    tl.causal = causal::top_left;
    run_case({"mask in global key order", square, tl, l, {}, {}, false, &mask});
  }
  options c;
  c.causal = causal::bottom_right;
  c.window = {20, -1};
  run_case({"uneven blocks, empty odd ranks", problem(1, 4, 2, 60, 90, 32, 32, 65), c, layout::contiguous, gappy(60),
            gappy(90)});
  run_case({"zig-zag, N < 2P (empty chunks)", problem(1, 2, 1, 3, 5, 16, 16, 66), c, layout::zigzag});
}

void nan_case() {
  // A NaN in one key row: the rows that see it, and the keys those rows see, get NaN
  // gradients exactly where the single call gives them.
  problem p(1, 2, 1, 40, 40, 16, 16, 68);
  for (index_t d = 0; d < p.D; ++d) p.k[static_cast<std::size_t>(25 * p.D + d)] = std::numeric_limits<float>::quiet_NaN();
  options o;
  o.causal = causal::top_left;
  for (layout l : {layout::contiguous, layout::zigzag}) run_case({"NaN key row", p, o, l});
}

void determinism_case() {
  const problem p(1, 4, 2, 120, 120, 32, 32, 67);
  const auto dout = attnkit_test::randn(p.out_size(), 992, 1.0f);
  options o;
  o.causal = causal::bottom_right;
  for (layout l : {layout::contiguous, layout::zigzag}) {
    const ring_case c{"determinism", p, o, l};
    options a = o, b = o;
    a.num_threads = 1;
    b.num_threads = 2;
    const grads r1 = run_ring(c, dout, a);
    std::this_thread::sleep_for(std::chrono::milliseconds(15 * ((g_rank * 7) % 3)));
    const grads r2 = run_ring(c, dout, b);
    check(r1.dq == r2.dq && r1.dk == r2.dk && r1.dv == r2.dv,
          std::string("determinism: bitwise equal gradients (") + (l == layout::zigzag ? "zigzag)" : "contiguous)"));
  }
}

/// A bad argument on one rank: every rank throws the same invalid_argument_error,
/// before any gradient byte is written; then the ring still works.
void bad_input_case(const std::string& what, const std::string& argument, bool sinks_on_last, bool dim_on_last) {
  const index_t B = 1, H = 2, n = 8, D = 16;
  std::vector<float> q(static_cast<std::size_t>(B * H * n * D), 0.5f), out = q, dout = q, lse(B * H * n, 1.0f);
  std::vector<float> dq(q.size(), 777.0f), dk = dq, dv = dq;
  const std::vector<float> sinks = {0.5f, 0.5f};
  float dsinks[2] = {777.0f, 777.0f};
  options o;
  o.sinks = sinks;
  backward_options bo;
  const bool last = g_rank == g_size - 1;
  if (sinks_on_last && last) bo.dsinks = dsinks;
  const index_t gd = dim_on_last && last ? D - 1 : D;
  std::string got = "(no exception)";
  try {
    distributed::ring_attention_backward(softmax{}, bhsd(q.data(), B, H, n, D), bhsd(q.data(), B, H, n, D),
                                         bhsd(q.data(), B, H, n, D), bhsd(std::as_const(out).data(), B, H, n, D),
                                         lse.data(), bhsd(dout.data(), B, H, n, D), bhsd(dq.data(), B, H, n, gd),
                                         bhsd(dk.data(), B, H, n, D), bhsd(dv.data(), B, H, n, D), o, MPI_COMM_WORLD,
                                         {}, bo);
  } catch (const invalid_argument_error& e) {
    got = e.argument();
  }
  check(got == argument, what + ": argument '" + got + "', expected '" + argument + "'");
  bool intact = dsinks[0] == 777.0f && dsinks[1] == 777.0f;
  for (const auto* g : {&dq, &dk, &dv})
    for (float x : *g) intact = intact && x == 777.0f;
  check(intact, what + ": no gradient byte written");
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  try {
    bad_input_case("dsinks requested on the last rank", "backward_options.dsinks", true, false);
    bad_input_case("dq has the wrong dim on the last rank", "dq", false, true);
    correctness_cases();  // after the bad calls: the ring still works
    nan_case();
    determinism_case();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] unexpected exception: %s\n", g_rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);  // the other ranks may be blocked in the ring
  }
  int failures = 0, checks = 0, any = 0;
  MPI_Reduce(&g_failures, &failures, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Reduce(&g_checks, &checks, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Allreduce(&g_failures, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("test_ring_backward_mpi: %d ranks, %d checks, %d failed\n", g_size, checks, failures);
  MPI_Finalize();
  return any == 0 ? 0 : 1;
}
