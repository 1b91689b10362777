// Ring attention across MPI ranks (run by ctest under mpiexec with 2 and 4 ranks):
// every rank builds the same whole-sequence problem, takes its rows under the
// layout, calls ring_attention, and compares its rows with attention() on the whole
// sequence and with the float64 oracle. Covered: contiguous and zig-zag layouts,
// causal both alignments, window, ALiBi, softcap, sinks (counted once), masked rows
// (zero / NaN), GQA, uneven N, empty blocks, decode-sized query blocks, bf16 K/V,
// BSHD (strided) views, a mask in global key order, NaN propagation, bitwise
// determinism under different timing and thread counts, and bad input: invalid
// arguments on one rank only and arguments that differ across ranks make every
// rank throw the same invalid_argument_error with `out` untouched, after which the
// ring still works (no message was sent).
// Tolerance: 2e-5·max|oracle| for outputs, 2e-5 relative for LSE (the softmax
// kernel's, test_softmax_oracle.cpp), against attention() and against the oracle.
// A plain program (not Catch2): every rank counts its failures; rank 0 reports the sum.
#include <attnkit/distributed/ring.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "../ring_support.hpp"

using namespace attnkit;
using attnkit::distributed::layout;
using attnkit_test::problem;
using ringtest::chunk;

namespace {
constexpr double tol = 2e-5;
int g_rank = 0, g_size = 1, g_checks = 0, g_failures = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "[rank %d/%d] FAILED: %s\n", g_rank, g_size, what.c_str());
  }
}

/// One ring call and its expectation.
struct ring_case {
  std::string name;
  problem p;
  options opt{};
  layout lay = layout::contiguous;
  std::vector<index_t> lq{}, lk{};  ///< custom contiguous lengths per rank (empty: even split)
  bool bf16 = false;                ///< K/V stored (and sent) as bfloat16
  bool bshd = false;                ///< BSHD (strided) local views
  const std::vector<char>* mask = nullptr;  ///< [Lq, Lk] in global order
};

template <class T>
std::vector<T> to_bshd(const std::vector<T>& x, index_t B, index_t H, index_t L, index_t D) {
  std::vector<T> y(x.size());
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t l = 0; l < L; ++l)
        for (index_t d = 0; d < D; ++d)
          y[static_cast<std::size_t>(((b * L + l) * H + h) * D + d)] = x[static_cast<std::size_t>(((b * H + h) * L + l) * D + d)];
  return y;
}

/// This rank's inputs of a case and the call; returns (out, lse) as contiguous BHSD.
struct local_result {
  std::vector<float> out, lse;
  std::vector<chunk> runs;
  distributed::ring_stats stats;
};

local_result run_ring(const ring_case& c, const options& opt, int tag = 7411) {
  const problem& p = c.p;
  local_result r;
  r.runs = ringtest::runs_of(c.lay, p.Lq, g_size, g_rank, c.lq);
  const auto kruns = ringtest::runs_of(c.lay, p.Lk, g_size, g_rank, c.lk);
  const index_t n = ringtest::rows_in(r.runs), m = ringtest::rows_in(kruns);
  auto q = ringtest::take_rows(p.q, p.B, p.Hq, p.Lq, p.D, r.runs);
  auto k = ringtest::take_rows(p.k, p.B, p.Hkv, p.Lk, p.D, kruns);
  auto v = ringtest::take_rows(p.v, p.B, p.Hkv, p.Lk, p.Dv, kruns);
  std::vector<char> mask;
  options o = opt;
  if (c.mask) {
    mask = ringtest::take_rows(*c.mask, 1, 1, p.Lq, p.Lk, r.runs);
    o.mask = bhsd(reinterpret_cast<const bool*>(mask.data()), 1, 1, n, p.Lk);
  }
  r.out.assign(static_cast<std::size_t>(p.B * p.Hq * n * p.Dv), -9.0f);
  r.lse.assign(static_cast<std::size_t>(p.B * p.Hq * n), -9.0f);
  o.lse = r.lse.data();
  const distributed::ring_options ro{.layout = c.lay, .tag = tag, .stats = &r.stats};
  auto view = [&](auto& x, index_t H, index_t L, index_t D) {
    return c.bshd ? bshd(x.data(), p.B, L, H, D) : bhsd(x.data(), p.B, H, L, D);
  };
  std::vector<float> out_store(r.out.size(), -9.0f);
  if (c.bshd) {
    q = to_bshd(q, p.B, p.Hq, n, p.D);
    k = to_bshd(k, p.B, p.Hkv, m, p.D);
    v = to_bshd(v, p.B, p.Hkv, m, p.Dv);
  }
  const auto out = view(out_store, p.Hq, n, p.Dv);
  if (c.bf16) {
    std::vector<bfloat16> kh, vh;
    for (float x : k) kh.push_back(bfloat16::from_float(x));
    for (float x : v) vh.push_back(bfloat16::from_float(x));
    distributed::ring_attention(softmax{}, view(q, p.Hq, n, p.D), view(kh, p.Hkv, m, p.D), view(vh, p.Hkv, m, p.Dv),
                                out, o, MPI_COMM_WORLD, ro);
  } else {
    distributed::ring_attention(softmax{}, view(q, p.Hq, n, p.D), view(k, p.Hkv, m, p.D), view(v, p.Hkv, m, p.Dv),
                                out, o, MPI_COMM_WORLD, ro);
  }
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < n; ++i)
        for (index_t d = 0; d < p.Dv; ++d) r.out[static_cast<std::size_t>(((b * p.Hq + h) * n + i) * p.Dv + d)] = out(b, h, i, d);
  return r;
}

void run_case(const ring_case& c) {
  options whole_opt = c.opt;
  if (c.mask) whole_opt.mask = bhsd(reinterpret_cast<const bool*>(c.mask->data()), 1, 1, c.p.Lq, c.p.Lk);
  problem p = c.p;
  if (c.bf16)  // the whole-sequence call sees the values bfloat16 holds
    for (auto* t : {&p.k, &p.v})
      for (float& x : *t) x = bfloat16::from_float(x).to_float();
  const ringtest::expected e = ringtest::whole(p, whole_opt);
  ring_case cc = c;
  cc.p = p;
  const local_result r = run_ring(cc, c.opt);
  const auto err = ringtest::compare_rows(p, r.runs, r.out, r.lse, e);
  const std::string tag = c.name + " (" + (c.lay == layout::zigzag ? "zigzag" : "contiguous") + ")";
  check(err.vs_single <= tol, tag + ": out vs attention() " + std::to_string(err.vs_single));
  check(err.vs_oracle <= tol, tag + ": out vs oracle " + std::to_string(err.vs_oracle));
  check(err.lse_single <= tol, tag + ": lse vs attention() " + std::to_string(err.lse_single));
  check(err.lse_oracle <= tol, tag + ": lse vs oracle " + std::to_string(err.lse_oracle));
  check(!err.nan_mismatch, tag + ": NaN pattern differs");
  check(r.stats.steps == g_size, tag + ": one step per rank");
}

/// Lengths putting everything on the first rank (queries) and the last (keys).
std::vector<index_t> all_on(int rank, index_t n) {
  std::vector<index_t> l(static_cast<std::size_t>(g_size), 0);
  l[static_cast<std::size_t>(rank)] = n;
  return l;
}

/// Uneven lengths with empty odd ranks: the even ranks share n unevenly.
std::vector<index_t> gappy(index_t n) {
  std::vector<index_t> l(static_cast<std::size_t>(g_size), 0);
  index_t left = n;
  for (int r = 0; r < g_size; r += 2) {
    const index_t take = r + 2 >= g_size ? left : left / 3 + 1;
    l[static_cast<std::size_t>(r)] = std::min(take, left);
    left -= l[static_cast<std::size_t>(r)];
  }
  return l;
}

void correctness_cases() {
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> sinks = {2.0f, -1.0f, 3.0f, 0.5f};  // large: a sink counted per block shows
  const problem square(2, 4, 2, 97, 97, 40, 24, 51), wide(1, 4, 2, 70, 131, 32, 16, 52);
  std::vector<char> mask(static_cast<std::size_t>(97 * 97));
  for (std::size_t x = 0; x < mask.size(); ++x) mask[x] = (x * 2654435761u >> 9) % 4 != 0;
  for (layout l : {layout::contiguous, layout::zigzag}) {
    auto add = [&](std::string name, const problem& p, options o) { run_case({std::move(name), p, o, l}); };
    options o;
    add("no mask, GQA, N = 97", square, o);
    o.causal = causal::top_left;
    add("causal top-left", square, o);
    add("causal top-left, Lq != Lk", wide, o);
    o.causal = causal::bottom_right;
    add("causal bottom-right, Lq != Lk", wide, o);
    o.window = {13, 4};
    o.alibi_slopes = slopes;
    add("bottom-right + window + ALiBi", wide, o);
    o.causal = causal::top_left;
    add("top-left + window + ALiBi", square, o);
    o.causal = causal::none;
    o.window = {9, 9};
    o.alibi_slopes = {};
    add("window only", square, o);
    options s;
    s.causal = causal::bottom_right;
    s.softcap = 3.0f;
    s.sinks = sinks;
    add("softcap + sinks", wide, s);
    s.masked_rows = masked_rows::nan;
    add("sinks + NaN masked rows (queries before every key)", problem(1, 4, 4, 120, 50, 16, 16, 53), s);
    s.masked_rows = masked_rows::zero;
    s.sinks = {};
    add("zero masked rows", problem(1, 4, 4, 120, 50, 16, 16, 53), s);
    options c;
    c.causal = causal::bottom_right;
    add("decode rows (3 queries, 4400 keys)", problem(1, 8, 2, 3, 4400, 64, 64, 54), c);
    run_case({"bf16 K/V", wide, c, l, {}, {}, true});
    run_case({"BSHD views", square, c, l, {}, {}, false, true});
    options tl;
    tl.causal = causal::top_left;
    run_case({"mask in global key order", square, tl, l, {}, {}, false, false, &mask});
  }
  options c;
  c.causal = causal::bottom_right;
  c.window = {20, -1};
  const problem p(1, 4, 2, 60, 90, 32, 32, 55);
  run_case({"queries on rank 0, keys on the last rank", p, c, layout::contiguous, all_on(0, 60), all_on(g_size - 1, 90)});
  run_case({"uneven blocks, empty odd ranks", p, c, layout::contiguous, gappy(60), gappy(90)});
  run_case({"zig-zag, N < 2P (empty chunks)", problem(1, 2, 1, 3, 5, 16, 16, 56), c, layout::zigzag});
}

void nan_case() {
  // A NaN in one key row: every row that can see it is NaN, like the single call.
  problem p(1, 2, 1, 40, 40, 16, 16, 57);
  for (index_t d = 0; d < p.D; ++d) p.k[static_cast<std::size_t>(25 * p.D + d)] = std::numeric_limits<float>::quiet_NaN();
  options o;
  o.causal = causal::top_left;
  for (layout l : {layout::contiguous, layout::zigzag}) run_case({"NaN key row", p, o, l});
}

void determinism_case() {
  // Bitwise equal results with 1 or 2 threads per rank and different arrival timing.
  const problem p(1, 4, 2, 150, 150, 32, 32, 58);
  const std::vector<float> sinks = {0.1f, 0.2f, 0.3f, 0.4f};
  options o;
  o.causal = causal::bottom_right;
  o.sinks = sinks;
  for (layout l : {layout::contiguous, layout::zigzag}) {
    const ring_case c{"determinism", p, o, l};
    options a = o, b = o;
    a.num_threads = 1;
    b.num_threads = 2;
    const local_result r1 = run_ring(c, a);
    std::this_thread::sleep_for(std::chrono::milliseconds(15 * ((g_rank * 7) % 3)));
    const local_result r2 = run_ring(c, b);
    check(std::memcmp(r1.out.data(), r2.out.data(), r1.out.size() * sizeof(float)) == 0 &&
              std::memcmp(r1.lse.data(), r2.lse.data(), r1.lse.size() * sizeof(float)) == 0,
          std::string("determinism: bitwise equal runs (") + (l == layout::zigzag ? "zigzag)" : "contiguous)"));
  }
}

/// Runs `call` on every rank; expects every rank to throw invalid_argument_error with
/// `argument` and the same message, and its `out` untouched.
void expect_same_error(const std::string& what, const std::string& argument,
                       const std::function<void(std::vector<float>&)>& call) {
  std::vector<float> out(4096, 12345.0f);
  std::string got_arg = "(no exception)", msg;
  try {
    call(out);
  } catch (const invalid_argument_error& e) {
    got_arg = e.argument();
    msg = e.what();
  } catch (const std::exception& e) {
    got_arg = std::string("(other exception) ") + e.what();
  }
  check(got_arg == argument, what + ": argument '" + got_arg + "', expected '" + argument + "'");
  bool intact = true;
  for (float x : out) intact = intact && x == 12345.0f;
  check(intact, what + ": out untouched");
  // Same message on every rank.
  const std::uint64_t h = std::hash<std::string>{}(msg), lo = h;
  std::uint64_t mn = 0, mx = 0;
  MPI_Allreduce(&lo, &mn, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&lo, &mx, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  check(mn == mx, what + ": the same message on every rank");
  check(msg.find("expected") != std::string::npos, what + ": message says what was expected: " + msg);
  if (g_rank == 0) std::printf("  bad input '%s' -> %s\n", what.c_str(), msg.c_str());
}

void bad_input_cases() {
  const index_t B = 1, H = 2, n = 8, D = 16;
  std::vector<float> q(static_cast<std::size_t>(B * H * n * D), 0.5f), k = q, v = q;
  auto call = [&](std::vector<float>& out, options o, index_t out_dim, index_t q_dim, distributed::ring_options ro) {
    distributed::ring_attention(softmax{}, bhsd(q.data(), B, H, n, q_dim), bhsd(k.data(), B, H, n, q_dim),
                                bhsd(v.data(), B, H, n, D), bhsd(out.data(), B, H, n, out_dim), o, MPI_COMM_WORLD, ro);
  };
  const int last = g_size - 1;
  const bool several = g_size > 1;  // cases of ranks that disagree need two ranks
  expect_same_error("out has the wrong dim on the last rank only", "out", [&](std::vector<float>& out) {
    call(out, {}, g_rank == last ? D - 1 : D, D, {});
  });
  if (several) expect_same_error("a window on rank 0 only", "options.window", [&](std::vector<float>& out) {
    options o;
    if (g_rank == 0) o.window = {3, 3};
    call(out, o, D, D, {});
  });
  if (several) expect_same_error("head dim differs on the last rank", "q", [&](std::vector<float>& out) {
    call(out, {}, D, g_rank == last ? D / 2 : D, {});
  });
  const std::vector<float> s1 = {0.5f, 0.5f}, s2 = {0.5f, 0.25f};
  if (several) expect_same_error("sinks differ on the last rank", "options.sinks", [&](std::vector<float>& out) {
    options o;
    o.sinks = g_rank == last ? s2 : s1;
    call(out, o, D, D, {});
  });
  if (several) expect_same_error("layout differs on rank 0", "ring_options.layout", [&](std::vector<float>& out) {
    call(out, {}, D, D, {.layout = g_rank == 0 ? layout::zigzag : layout::contiguous});
  });
  const std::int64_t lens[1] = {4};
  expect_same_error("key_lengths (not supported)", "options.key_lengths", [&](std::vector<float>& out) {
    options o;
    o.key_lengths = lens;
    call(out, o, D, D, {});
  });
  expect_same_error("dropout (not supported)", "options.dropout", [&](std::vector<float>& out) {
    options o;
    if (g_rank == last) o.dropout = {.p = 0.1f, .seed = 3};
    call(out, o, D, D, {});
  });
  expect_same_error("positions set by the caller", "options.positions", [&](std::vector<float>& out) {
    options o;
    if (g_rank == last) o.positions = positions{1, 0};
    call(out, o, D, D, {});
  });
  // The last rank holds 7 query rows: 8P − 1 rows in all, whose zig-zag shares are
  // not what the ranks hold (rank 0's share is 7, it holds 8).
  if (several) expect_same_error("zig-zag length wrong on the last rank", "q", [&](std::vector<float>& out) {
    const index_t mine = g_rank == last ? n - 1 : n;
    distributed::ring_attention(softmax{}, bhsd(q.data(), B, H, mine, D), bhsd(k.data(), B, H, n, D),
                                bhsd(v.data(), B, H, n, D), bhsd(out.data(), B, H, mine, D), {}, MPI_COMM_WORLD,
                                {.layout = layout::zigzag});
  });
  std::vector<char> m(static_cast<std::size_t>(n * n * g_size), 1);
  if (several) expect_same_error("mask spans the local keys, not all keys, on rank 0", "options.mask", [&](std::vector<float>& out) {
    options o;
    o.mask = bhsd(reinterpret_cast<const bool*>(m.data()), 1, 1, n, g_rank == 0 ? n : n * g_size);
    call(out, o, D, D, {});
  });
  const std::vector<float> slopes = {0.5f, 0.25f};
  expect_same_error("top-left + ALiBi with total q.seq != k.seq", "options.causal", [&](std::vector<float>& out) {
    options o;
    o.causal = causal::top_left;
    o.alibi_slopes = slopes;
    const index_t mine = g_rank == 0 ? n - 2 : n;  // one rank holds fewer queries
    distributed::ring_attention(softmax{}, bhsd(q.data(), B, H, mine, D), bhsd(k.data(), B, H, n, D),
                                bhsd(v.data(), B, H, n, D), bhsd(out.data(), B, H, mine, D), o, MPI_COMM_WORLD);
  });
  // Nothing was sent by the failed calls: the ring still works.
  run_case({"a valid call after the rejected ones", problem(1, 2, 1, 33, 33, 16, 16, 59), {}, layout::zigzag});
}
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);  // worker threads never call MPI
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  try {
    correctness_cases();
    nan_case();
    determinism_case();
    bad_input_cases();
  } catch (const std::exception& e) {
    ++g_failures;
    std::fprintf(stderr, "[rank %d] unexpected exception: %s\n", g_rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);  // the other ranks may be blocked in the ring
  }
  int failures = 0, checks = 0;
  MPI_Reduce(&g_failures, &failures, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Reduce(&g_checks, &checks, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  int any = 0;
  MPI_Allreduce(&g_failures, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("test_ring_mpi: %d ranks, %d checks, %d failed\n", g_size, checks, failures);
  MPI_Finalize();
  return any == 0 ? 0 : 1;
}
