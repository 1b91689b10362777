// Softmax / sigmoid attention throughput, the decode path, and a naive Eigen baseline,
// beside the FMA peak and triad bandwidth measured in the same process (common.hpp).
//
//   bench_softmax [--quick] [google-benchmark flags]
//
// Names: softmax/N:4096/D:64/causal:0/threads:1  (B=1, H=8, fp32, Lq=Lk=N)
//        sigmoid/N:4096/D:64/causal:0/threads:1
//        softmax_bf16/N:4096/D:64/causal:0/threads:1  (q, k, v, out bf16; also softmax_fp16)
//        softmax_decode/Lk:4096/D:128/H:8/threads:1  (one query per head; GB/s of K+V)
//        eigen_naive/N:1024/D:64                    (materialised N×N, 1 thread)
//        peak/fma/threads:T, peak/triad/threads:T, peak/bf16dot/threads:1 (AVX512-BF16 only)
// Counters: GFLOPS (useful flop: 4·N²·D·H, halved for causal), peak_frac (of the
// per-core FMA peak × threads), GBps and triad_frac for decode.
#include <attnkit/attnkit.hpp>

#include <string>
#include <thread>
#include <vector>

#include "common.hpp"

#ifdef ATTNKIT_BENCH_HAVE_EIGEN
#include <Eigen/Core>
#endif

namespace {

using namespace attnkit_bench;
using attnkit::index_t;

constexpr index_t heads = 8;

template <class Policy>
void bm_prefill(benchmark::State& st, Policy pol, index_t n, index_t d, bool causal, int threads) {
  const auto sz = static_cast<std::size_t>(heads * n * d);
  const auto q = random_vector(sz, 1), k = random_vector(sz, 2), v = random_vector(sz, 3);
  buffer<float> o(sz);
  attnkit::options opt;
  opt.causal = causal ? attnkit::causal::bottom_right : attnkit::causal::none;
  opt.num_threads = threads;
  const auto qv = attnkit::bhsd(q.data(), 1, heads, n, d), kv = attnkit::bhsd(k.data(), 1, heads, n, d),
             vv = attnkit::bhsd(v.data(), 1, heads, n, d);
  const auto ov = attnkit::bhsd(o.data(), 1, heads, n, d);
  attnkit::attention(pol, qv, kv, vv, ov, opt);  // warm: thread pool, packing buffers
  const wall_timer timer;
  for (auto _ : st) {
    attnkit::attention(pol, qv, kv, vv, ov, opt);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  const double flop = 4.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d) * heads;
  set_flop_counters(st, causal ? flop / 2 : flop, threads, sec);
}

/// The same prefill with q, k, v and out all of 16-bit type T (computed in fp32:
/// kernel/staging.hpp), against the float rows above and peak/bf16dot.
template <class T>
void bm_prefill_16bit(benchmark::State& st, index_t n, index_t d, bool causal, int threads) {
  const auto sz = static_cast<std::size_t>(heads * n * d);
  std::vector<T> q(sz), k(sz), v(sz), o(sz);
  {
    const auto a = random_vector(sz, 1), b = random_vector(sz, 2), c = random_vector(sz, 3);
    for (std::size_t i = 0; i < sz; ++i) q[i] = T::from_float(a[i]), k[i] = T::from_float(b[i]), v[i] = T::from_float(c[i]);
  }
  attnkit::options opt;
  opt.causal = causal ? attnkit::causal::bottom_right : attnkit::causal::none;
  opt.num_threads = threads;
  const auto view = [&](std::vector<T>& x) { return attnkit::bhsd(x.data(), 1, heads, n, d); };
  attnkit::attention(attnkit::softmax{}, view(q), view(k), view(v), view(o), opt);  // warm
  const wall_timer timer;
  for (auto _ : st) {
    attnkit::attention(attnkit::softmax{}, view(q), view(k), view(v), view(o), opt);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  const double flop = 4.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d) * heads;
  set_flop_counters(st, causal ? flop / 2 : flop, threads, sec);
}

void bm_decode(benchmark::State& st, index_t lk, index_t d, int threads) {
  const auto kv_size = static_cast<std::size_t>(heads * lk * d);
  const auto q = random_vector(static_cast<std::size_t>(heads * d), 1);
  const auto k = random_vector(kv_size, 2), v = random_vector(kv_size, 3);
  buffer<float> o(static_cast<std::size_t>(heads * d));
  attnkit::options opt;
  opt.num_threads = threads;
  const auto qv = attnkit::bhsd(q.data(), 1, heads, 1, d), kv = attnkit::bhsd(k.data(), 1, heads, lk, d),
             vv = attnkit::bhsd(v.data(), 1, heads, lk, d);
  const auto ov = attnkit::bhsd(o.data(), 1, heads, 1, d);
  attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);
  const wall_timer timer;
  for (auto _ : st) {
    attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  set_bandwidth_counters(st, 2.0 * static_cast<double>(kv_size) * sizeof(float), threads, sec);
}

#ifdef ATTNKIT_BENCH_HAVE_EIGEN
/// The baseline everybody writes first: S = τ·Q·Kᵀ materialised (N×N), row softmax,
/// O = P·V; Eigen 3.4 GEMM on one thread.
void bm_eigen_naive(benchmark::State& st, index_t n, index_t d) {
  using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using cmap = Eigen::Map<const mat>;
  Eigen::setNbThreads(1);
  const auto sz = static_cast<std::size_t>(heads * n * d);
  const auto q = random_vector(sz, 1), k = random_vector(sz, 2), v = random_vector(sz, 3);
  buffer<float> o(sz);
  mat s(n, n);
  Eigen::VectorXf row_max(n), row_sum(n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto run = [&] {
    for (index_t h = 0; h < heads; ++h) {
      const cmap qh(q.data() + h * n * d, n, d), kh(k.data() + h * n * d, n, d), vh(v.data() + h * n * d, n, d);
      Eigen::Map<mat> oh(o.data() + h * n * d, n, d);
      s.noalias() = scale * (qh * kh.transpose());
      row_max = s.rowwise().maxCoeff();
      s.colwise() -= row_max;
      s = s.array().exp().matrix();
      row_sum = s.rowwise().sum();
      oh.noalias() = s * vh;
      oh.array().colwise() /= row_sum.array();
    }
  };
  run();
  const wall_timer timer;
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  set_flop_counters(st, 4.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d) * heads, 1, sec);
}
#endif

std::string suffix(index_t n, index_t d, bool causal, int threads) {
  return "/N:" + std::to_string(n) + "/D:" + std::to_string(d) + "/causal:" + (causal ? "1" : "0") +
         "/threads:" + std::to_string(threads);
}

void register_all(bool quick) {
  const int hw = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  const std::vector<int> thread_counts = hw == 2 ? std::vector<int>{1, 2} : std::vector<int>{1, 2, hw};
  register_peaks(thread_counts);

  const std::vector<index_t> ns = quick ? std::vector<index_t>{256, 1024} : std::vector<index_t>{256, 1024, 4096};
  for (index_t n : ns)
    for (index_t d : {64, 128})
      for (bool causal : {false, true})
        for (int t : thread_counts)
          benchmark::RegisterBenchmark(("softmax" + suffix(n, d, causal, t)).c_str(),
                                       bm_prefill<attnkit::softmax>, attnkit::softmax{}, n, d, causal, t)
              ->Unit(benchmark::kMillisecond);

  // 16-bit end to end (q, k, v, out), one thread: issue #27's rows (N = 4096, D = 64, 128).
  for (index_t n : quick ? std::vector<index_t>{1024} : std::vector<index_t>{4096})
    for (index_t d : {64, 128}) {
      benchmark::RegisterBenchmark(("softmax_bf16" + suffix(n, d, false, 1)).c_str(),
                                   bm_prefill_16bit<attnkit::bfloat16>, n, d, false, 1)
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("softmax_fp16" + suffix(n, d, false, 1)).c_str(),
                                   bm_prefill_16bit<attnkit::float16>, n, d, false, 1)
          ->Unit(benchmark::kMillisecond);
    }

  for (index_t n : quick ? std::vector<index_t>{1024} : std::vector<index_t>{1024, 4096})
    for (int t : quick ? std::vector<int>{1} : thread_counts)
      benchmark::RegisterBenchmark(("sigmoid" + suffix(n, 64, false, t)).c_str(), bm_prefill<attnkit::sigmoid>,
                                   attnkit::sigmoid{}, n, 64, false, t)
          ->Unit(benchmark::kMillisecond);

  for (int t : thread_counts)
    benchmark::RegisterBenchmark(("softmax_decode/Lk:4096/D:128/H:8/threads:" + std::to_string(t)).c_str(),
                                 bm_decode, 4096, 128, t)
        ->Unit(benchmark::kMicrosecond);

#ifdef ATTNKIT_BENCH_HAVE_EIGEN
  for (index_t n : ns)
    benchmark::RegisterBenchmark(("eigen_naive/N:" + std::to_string(n) + "/D:64").c_str(), bm_eigen_naive, n, 64)
        ->Unit(benchmark::kMillisecond);
#endif
}

}  // namespace

int main(int argc, char** argv) { return attnkit_bench::bench_main(argc, argv, register_all); }
