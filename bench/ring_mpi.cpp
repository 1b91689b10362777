// Ring attention timing across MPI ranks (attnkit/distributed/ring.hpp). Not a Google
// Benchmark suite: one process per rank, launched by scripts/bench.sh as
//   mpiexec -np P ring_mpi [--n N] [--heads H] [--dim D] [--causal 0|1]
//                          [--layout contiguous|zigzag] [--threads T] [--reps R] [--quick]
//                          [--backward]
// Every rank times R calls (after one warm-up); rank 0 prints, per rank, the median
// time spent computing (local attention() calls and merges) and waiting (blocked in
// MPI_Waitall), the call time (slowest rank), GFLOP/s of the whole call, the
// single-process attention() on the whole sequence (P = 1 only) and the FMA peak of
// one core measured in this process. Ranks × threads above the core count is printed
// as OVERSUBSCRIBED: those timings share cores and say nothing about scaling.
// --backward times ring_attention_backward instead (after one forward for out and
// LSE), against attention_backward on the whole sequence for P = 1.
#include <attnkit/distributed/ring.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common.hpp"

namespace {
using attnkit::index_t;
namespace dist = attnkit::distributed;

struct config {
  index_t n = 8192, heads = 8, kv_heads = 8, dim = 64;
  bool causal = true;
  dist::layout layout = dist::layout::zigzag;
  int threads = 1, reps = 5;
  bool backward = false;
};

config parse(int argc, char** argv) {
  config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--n") c.n = std::stoll(next());
    else if (a == "--heads") c.heads = c.kv_heads = std::stoll(next());
    else if (a == "--kv-heads") c.kv_heads = std::stoll(next());
    else if (a == "--dim") c.dim = std::stoll(next());
    else if (a == "--causal") c.causal = next() != "0";
    else if (a == "--layout") c.layout = next() == "contiguous" ? dist::layout::contiguous : dist::layout::zigzag;
    else if (a == "--threads") c.threads = std::stoi(next());
    else if (a == "--reps") c.reps = std::stoi(next());
    else if (a == "--quick") { c.n = 1024; c.reps = 2; }
    else if (a == "--backward") c.backward = true;
  }
  return c;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x.empty() ? 0.0 : x[x.size() / 2];
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  const config c = parse(argc, argv);
  const index_t B = 1;

  // This rank's share, random (values do not change the time).
  const auto runs = dist::chunks_of(c.layout, c.n, P, rank);
  index_t n = 0;
  for (const auto& r : runs) n += r.length;
  std::mt19937 gen(1234u + static_cast<unsigned>(rank));
  std::normal_distribution<float> nd;
  auto randn = [&](index_t count) {
    std::vector<float> x(static_cast<std::size_t>(count));
    for (auto& e : x) e = nd(gen);
    return x;
  };
  const auto q = randn(B * c.heads * n * c.dim), k = randn(B * c.kv_heads * n * c.dim), v = randn(B * c.kv_heads * n * c.dim);
  std::vector<float> out(q.size()), lse(static_cast<std::size_t>(B * c.heads * n));
  const auto dout = randn(static_cast<index_t>(out.size()));
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  attnkit::options opt;
  opt.causal = c.causal ? attnkit::causal::bottom_right : attnkit::causal::none;
  opt.num_threads = c.threads;
  const auto qv = attnkit::bhsd(q.data(), B, c.heads, n, c.dim);
  const auto kv = attnkit::bhsd(k.data(), B, c.kv_heads, n, c.dim), vv = attnkit::bhsd(v.data(), B, c.kv_heads, n, c.dim);
  const auto ov = attnkit::bhsd(out.data(), B, c.heads, n, c.dim);
  const auto ring_opt = [&](dist::ring_stats* st) { return dist::ring_options{.layout = c.layout, .stats = st}; };
  // One ring call of the timed direction; the forward also leaves out and LSE for the backward.
  auto ring_call = [&](dist::ring_stats* st) {
    if (!c.backward) {
      dist::ring_attention(attnkit::softmax{}, qv, kv, vv, ov, opt, MPI_COMM_WORLD, ring_opt(st));
      return;
    }
    dist::ring_attention_backward(attnkit::softmax{}, qv, kv, vv, attnkit::bhsd(std::as_const(out).data(), B, c.heads, n, c.dim),
                                  lse.data(), attnkit::bhsd(dout.data(), B, c.heads, n, c.dim),
                                  attnkit::bhsd(dq.data(), B, c.heads, n, c.dim), attnkit::bhsd(dk.data(), B, c.kv_heads, n, c.dim),
                                  attnkit::bhsd(dv.data(), B, c.kv_heads, n, c.dim), opt, MPI_COMM_WORLD, ring_opt(st));
  };
  opt.lse = lse.data();
  dist::ring_attention(attnkit::softmax{}, qv, kv, vv, ov, opt, MPI_COMM_WORLD, ring_opt(nullptr));

  dist::ring_stats st;
  std::vector<double> total, compute, wait, check, finish, call;
  for (int r = 0; r <= c.reps; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    ring_call(&st);
    double mine = MPI_Wtime() - t0, slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (r == 0) continue;  // warm-up: thread pool, page faults
    total.push_back(st.total_s);
    compute.push_back(st.compute_s);
    wait.push_back(st.wait_s);
    check.push_back(st.check_s);
    finish.push_back(st.finish_s);
    call.push_back(slowest);
  }
  // Per-rank medians to rank 0.
  const double row[7] = {median(total), median(compute), median(wait), median(check), median(finish),
                         static_cast<double>(st.attention_calls), static_cast<double>(st.bytes_sent)};
  std::vector<double> rows(static_cast<std::size_t>(7 * P));
  MPI_Gather(row, 7, MPI_DOUBLE, rows.data(), 7, MPI_DOUBLE, 0, MPI_COMM_WORLD);

  // Baselines measured in this process (rank 0): one core's FMA peak and, for P = 1,
  // attention() on the whole sequence.
  double peak = 0, single = 0;
  if (rank == 0) {
    for (int r = 0; r < 3; ++r) {
      const auto [s, flop] = attnkit_bench::fma_run(1);
      peak = std::max(peak, flop / s * 1e-9);
    }
    if (P == 1) {
      std::vector<double> t;
      for (int r = 0; r <= c.reps; ++r) {
        const double t0 = MPI_Wtime();
        if (c.backward)
          attnkit::attention_backward(attnkit::softmax{}, qv, kv, vv, attnkit::bhsd(std::as_const(out).data(), B, c.heads, n, c.dim),
                                      lse.data(), attnkit::bhsd(dout.data(), B, c.heads, n, c.dim),
                                      attnkit::bhsd(dq.data(), B, c.heads, n, c.dim),
                                      attnkit::bhsd(dk.data(), B, c.kv_heads, n, c.dim),
                                      attnkit::bhsd(dv.data(), B, c.kv_heads, n, c.dim), opt);
        else
          attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);
        if (r > 0) t.push_back(MPI_Wtime() - t0);
      }
      single = median(t);
    }
  }
  if (rank == 0) {
    const unsigned cores = std::thread::hardware_concurrency();
    const bool over = static_cast<unsigned>(P * c.threads) > cores;
    // Flops of the whole call: QK^T and PV, 4·B·H·N²·D (backward: S, dP, dV, dQ, dK,
    // 10·B·H·N²·D), halved by causality (the skipped upper triangle; the diagonal
    // blocks are computed in full).
    const double flop = (c.backward ? 10.0 : 4.0) * static_cast<double>(B * c.heads) * static_cast<double>(c.n) * static_cast<double>(c.n) *
                        static_cast<double>(c.dim) * (c.causal ? 0.5 : 1.0);
    const double t = median(call);
    std::printf("ring_mpi%s: cpu %s, %u cores; %d rank%s x %d thread%s%s\n", c.backward ? " --backward" : "", cpu_model().c_str(), cores, P, P > 1 ? "s" : "",
                c.threads, c.threads > 1 ? "s" : "", over ? " -- OVERSUBSCRIBED (ranks share cores)" : "");
    std::printf("  N=%lld H=%lld Hkv=%lld D=%lld %s, layout %s, %d reps (median), FMA peak of one core %.1f GFLOP/s\n",
                static_cast<long long>(c.n), static_cast<long long>(c.heads), static_cast<long long>(c.kv_heads),
                static_cast<long long>(c.dim), c.causal ? "causal" : "non-causal",
                c.layout == dist::layout::zigzag ? "zigzag" : "contiguous", c.reps, peak);
    std::printf("  call %.2f ms (slowest rank) = %.1f GFLOP/s", t * 1e3, flop / t * 1e-9);
    if (P == 1)
      std::printf("; %s on the whole sequence %.2f ms", c.backward ? "attention_backward()" : "attention()", single * 1e3);
    std::printf("\n  %-5s %10s %10s %10s %10s %10s %6s %12s\n", "rank", "total ms", "compute ms", "wait ms",
                "check ms", "finish ms", "calls", "bytes sent");
    for (int r = 0; r < P; ++r) {
      const double* x = rows.data() + 7 * r;
      std::printf("  %-5d %10.2f %10.2f %10.2f %10.3f %10.2f %6.0f %12.0f\n", r, x[0] * 1e3, x[1] * 1e3, x[2] * 1e3,
                  x[3] * 1e3, x[4] * 1e3, x[5], x[6]);
    }
  }
  MPI_Finalize();
  return 0;
}
