#pragma once
// Shared benchmark helpers: the machine limits (FMA peak, STREAM triad), random fills,
// and the counters every attnkit benchmark reports.
//
// The FMA peak is 12 independent FMA chains in vector registers (zmm with AVX-512:
// 64 flop/cycle/core on Zen 4/5); the triad is STREAM's a = b + s·c. Both are ordinary
// benchmarks (`peak/fma/threads:T`, `peak/triad/threads:T`), so a JSON file carries
// the limits it was measured with. Modes of every bench binary (bench_main):
//   (default)       its own cases plus the peak rows: a standalone run judges its
//                   figures against limits measured in the same process;
//   --limits-only   only the peak rows, for thread counts 1, 2 and all cores;
//   --no-peaks      its own cases without peak rows or peak/triad fractions.
// scripts/bench.sh measures the limits once before and once after all binaries
// (--limits-only) and runs every binary with --no-peaks, so one set of limits judges
// every figure of a run (scripts/bench_report.py).
#include <attnkit/attnkit.hpp>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace attnkit_bench {

using clock_type = std::chrono::steady_clock;

// ---------------------------------------------------------------- FMA peak

/// Name of the vector unit the peak loop uses (compile-time, follows -march).
inline const char* fma_isa() noexcept {
#if defined(__AVX512F__)
  return "avx512f (12 zmm FMA chains)";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma (12 ymm FMA chains)";
#else
  return "scalar (12 FMA chains; compile with -march=native for the real peak)";
#endif
}

/// flop per iteration of fma_chains(): 12 chains x lanes x 2.
#if defined(__AVX512F__)
inline constexpr double fma_flop_per_iter = 12 * 16 * 2;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr double fma_flop_per_iter = 12 * 8 * 2;
#else
inline constexpr double fma_flop_per_iter = 12 * 2;
#endif

/// 12 independent FMA dependency chains: enough to cover FMA latency x issue width
/// (4 cycles x 2 pipes on Zen 4/5 and recent Intel). Returns a value that depends on
/// every chain so nothing is optimised away.
[[gnu::noinline]] inline float fma_chains(std::int64_t iters, float seed) {
#if defined(__AVX512F__)
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-6f);
  __m512 c0 = _mm512_set1_ps(seed), c1 = _mm512_set1_ps(seed + 1), c2 = _mm512_set1_ps(seed + 2),
         c3 = _mm512_set1_ps(seed + 3), c4 = _mm512_set1_ps(seed + 4), c5 = _mm512_set1_ps(seed + 5),
         c6 = _mm512_set1_ps(seed + 6), c7 = _mm512_set1_ps(seed + 7), c8 = _mm512_set1_ps(seed + 8),
         c9 = _mm512_set1_ps(seed + 9), c10 = _mm512_set1_ps(seed + 10), c11 = _mm512_set1_ps(seed + 11);
  for (std::int64_t i = 0; i < iters; ++i) {
    c0 = _mm512_fmadd_ps(c0, m, a);
    c1 = _mm512_fmadd_ps(c1, m, a);
    c2 = _mm512_fmadd_ps(c2, m, a);
    c3 = _mm512_fmadd_ps(c3, m, a);
    c4 = _mm512_fmadd_ps(c4, m, a);
    c5 = _mm512_fmadd_ps(c5, m, a);
    c6 = _mm512_fmadd_ps(c6, m, a);
    c7 = _mm512_fmadd_ps(c7, m, a);
    c8 = _mm512_fmadd_ps(c8, m, a);
    c9 = _mm512_fmadd_ps(c9, m, a);
    c10 = _mm512_fmadd_ps(c10, m, a);
    c11 = _mm512_fmadd_ps(c11, m, a);
  }
  const __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                    _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7))),
      _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
  return _mm512_reduce_add_ps(s);
#elif defined(__AVX2__) && defined(__FMA__)
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-6f);
  __m256 c[12];
  for (int j = 0; j < 12; ++j) c[j] = _mm256_set1_ps(seed + static_cast<float>(j));
  for (std::int64_t i = 0; i < iters; ++i) {
    c[0] = _mm256_fmadd_ps(c[0], m, a);
    c[1] = _mm256_fmadd_ps(c[1], m, a);
    c[2] = _mm256_fmadd_ps(c[2], m, a);
    c[3] = _mm256_fmadd_ps(c[3], m, a);
    c[4] = _mm256_fmadd_ps(c[4], m, a);
    c[5] = _mm256_fmadd_ps(c[5], m, a);
    c[6] = _mm256_fmadd_ps(c[6], m, a);
    c[7] = _mm256_fmadd_ps(c[7], m, a);
    c[8] = _mm256_fmadd_ps(c[8], m, a);
    c[9] = _mm256_fmadd_ps(c[9], m, a);
    c[10] = _mm256_fmadd_ps(c[10], m, a);
    c[11] = _mm256_fmadd_ps(c[11], m, a);
  }
  __m256 s = c[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, c[j]);
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
#else
  float c[12];
  for (int j = 0; j < 12; ++j) c[j] = seed + static_cast<float>(j);
  for (std::int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) c[j] = std::fma(c[j], 0.999999f, 1e-6f);
  float s = 0;
  for (float x : c) s += x;
  return s;
#endif
}

#if defined(__AVX512BF16__)
/// 12 independent vdpbf16ps chains (zmm): each instruction is 32 bf16 products
/// summed pairwise into 16 fp32 lanes, 64 flop. The 16-bit compute peak that a
/// bf16 Q·Kᵀ / P·V kernel could reach; reported beside the fp32 FMA peak so a
/// 16-bit row can be judged against the faster of the two (issue #27).
inline constexpr double bf16dot_flop_per_iter = 12 * 32 * 2;
[[gnu::noinline]] inline float bf16dot_chains(std::int64_t iters, float seed) {
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);  // 1, 2^-24·…
  __m512 c[12];
  for (int j = 0; j < 12; ++j) c[j] = _mm512_set1_ps(seed + static_cast<float>(j));
  for (std::int64_t i = 0; i < iters; ++i) {
    c[0] = _mm512_dpbf16_ps(c[0], a, b);
    c[1] = _mm512_dpbf16_ps(c[1], a, b);
    c[2] = _mm512_dpbf16_ps(c[2], a, b);
    c[3] = _mm512_dpbf16_ps(c[3], a, b);
    c[4] = _mm512_dpbf16_ps(c[4], a, b);
    c[5] = _mm512_dpbf16_ps(c[5], a, b);
    c[6] = _mm512_dpbf16_ps(c[6], a, b);
    c[7] = _mm512_dpbf16_ps(c[7], a, b);
    c[8] = _mm512_dpbf16_ps(c[8], a, b);
    c[9] = _mm512_dpbf16_ps(c[9], a, b);
    c[10] = _mm512_dpbf16_ps(c[10], a, b);
    c[11] = _mm512_dpbf16_ps(c[11], a, b);
  }
  __m512 s = c[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, c[j]);
  return _mm512_reduce_add_ps(s);
}

/// `peak/bf16dot/threads:1`: GFLOPS of the vdpbf16ps chains (best iteration).
inline void bm_peak_bf16dot(benchmark::State& st) {
  constexpr std::int64_t iters = std::int64_t{1} << 21;
  double best = 0;
  for (auto _ : st) {
    const auto t0 = clock_type::now();
    benchmark::DoNotOptimize(bf16dot_chains(iters, 1.0f));
    const double sec = std::chrono::duration<double>(clock_type::now() - t0).count();
    best = std::max(best, bf16dot_flop_per_iter * static_cast<double>(iters) / sec * 1e-9);
  }
  st.counters["GFLOPS"] = best;
  st.SetLabel("avx512bf16 (12 zmm vdpbf16ps chains)");
}
#endif

/// Runs `work(t)` for t in [0, threads): t = 0 on the calling thread (so the benchmark
/// thread's CPU time tracks the wall time, which Google Benchmark uses to pick the
/// iteration count), the others on threads released together. Returns the wall time
/// from the release to the last thread's end (thread creation not included).
template <class Work>
double run_parallel_timed(int threads, Work&& work) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads));
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      work(t);
    });
  while (ready.load() < threads - 1) std::this_thread::yield();
  const auto t0 = clock_type::now();
  go.store(true, std::memory_order_release);
  work(0);
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Wall-clock time of a benchmark loop. Google Benchmark's rate counters divide by the
/// benchmark thread's CPU time unless UseRealTime() is set, and UseRealTime() appends
/// "/real_time" to every name; the counters here are computed from this timer instead.
class wall_timer {
 public:
  wall_timer() : t0_(clock_type::now()) {}
  double seconds() const { return std::chrono::duration<double>(clock_type::now() - t0_).count(); }

 private:
  clock_type::time_point t0_;
};

/// Iterations of fma_chains per thread and per benchmark iteration (~10 ms at peak).
inline constexpr std::int64_t fma_iters_per_rep = std::int64_t{1} << 22;

/// One timed run of the FMA loop on `threads` threads: returns {seconds, flop}.
inline std::pair<double, double> fma_run(int threads, std::int64_t iters = fma_iters_per_rep) {
  std::vector<float> sink(static_cast<std::size_t>(threads));
  const double s = run_parallel_timed(threads, [&](int t) { sink[static_cast<std::size_t>(t)] = fma_chains(iters, 1.0f + t); });
  benchmark::DoNotOptimize(sink.data());
  return {s, fma_flop_per_iter * static_cast<double>(iters) * threads};
}

// ---------------------------------------------------------------- STREAM triad

/// a[i] = b[i] + s*c[i] over arrays far larger than the caches (3 x 64 MiB of floats).
class triad_arrays {
 public:
  static constexpr std::size_t n = std::size_t{1} << 24;
  explicit triad_arrays(int threads) : a_(alloc()), b_(alloc()), c_(alloc()) {
    // First touch by the threads that will stream them.
    run_parallel_timed(threads, [&](int t) {
      const auto [lo, hi] = range(t, threads);
      for (std::size_t i = lo; i < hi; ++i) a_[i] = 0.0f, b_[i] = 1.0f, c_[i] = 2.0f;
    });
  }
  /// One triad sweep on `threads` threads; returns seconds.
  double sweep(int threads, float s) {
    float* __restrict a = a_.get();
    const float* __restrict b = b_.get();
    const float* __restrict c = c_.get();
    const double sec = run_parallel_timed(threads, [&](int t) {
      const auto [lo, hi] = range(t, threads);  // multiples of 16, 64-byte aligned
      // Explicit vectors: the result must not depend on -O2 vs -O3 auto-vectorisation.
      // Ordinary stores, as STREAM does (non-temporal stores would report ~1.5x more).
#if defined(__AVX512F__)
      const __m512 sv = _mm512_set1_ps(s);
      for (std::size_t i = lo; i < hi; i += 16)
        _mm512_store_ps(a + i, _mm512_fmadd_ps(sv, _mm512_load_ps(c + i), _mm512_load_ps(b + i)));
#elif defined(__AVX2__) && defined(__FMA__)
      const __m256 sv = _mm256_set1_ps(s);
      for (std::size_t i = lo; i < hi; i += 8)
        _mm256_store_ps(a + i, _mm256_fmadd_ps(sv, _mm256_load_ps(c + i), _mm256_load_ps(b + i)));
#else
      for (std::size_t i = lo; i < hi; ++i) a[i] = b[i] + s * c[i];
#endif
    });
    benchmark::DoNotOptimize(a);
    benchmark::ClobberMemory();
    return sec;
  }
  /// Bytes one sweep moves, STREAM convention (read b, c; write a; no write-allocate).
  static constexpr double bytes() { return 3.0 * sizeof(float) * static_cast<double>(n); }

 private:
  struct free_deleter {
    void operator()(float* p) const noexcept { ::operator delete[](p, std::align_val_t{64}); }
  };
  using buffer = std::unique_ptr<float[], free_deleter>;
  static buffer alloc() { return buffer(static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t{64}))); }
  static std::pair<std::size_t, std::size_t> range(int t, int threads) {
    const std::size_t chunk = (n / static_cast<std::size_t>(threads) + 15) & ~std::size_t{15};
    const std::size_t lo = std::min(n, chunk * static_cast<std::size_t>(t));
    return {lo, std::min(n, lo + chunk)};
  }
  buffer a_, b_, c_;
};

// ---------------------------------------------------------------- the limits of this run

/// Whether this process reports peak rows and peak/triad fractions (false with
/// --no-peaks: the limits are measured by another process of the run).
inline bool in_process_limits = true;

/// Limits measured in this process. The peak benchmarks store their best result here;
/// if they were filtered out, a short measurement is made on first use.
struct machine_limits {
  std::mutex mu;
  double fma_gflops_per_core = 0;          ///< single-thread FMA peak
  std::map<int, double> triad_gbps;        ///< by thread count

  static machine_limits& get() {
    static machine_limits m;
    return m;
  }

  void record_fma(double gflops_1t) {
    std::lock_guard lk(mu);
    fma_gflops_per_core = std::max(fma_gflops_per_core, gflops_1t);
  }
  void record_triad(int threads, double gbps) {
    std::lock_guard lk(mu);
    double& v = triad_gbps[threads];
    v = std::max(v, gbps);
  }
  double fma_peak_per_core() {
    {
      std::lock_guard lk(mu);
      if (fma_gflops_per_core > 0) return fma_gflops_per_core;
    }
    double best = 0;
    for (int r = 0; r < 5; ++r) {
      const auto [s, f] = fma_run(1, fma_iters_per_rep / 4);
      best = std::max(best, f / s * 1e-9);
    }
    record_fma(best);
    return best;
  }
  double triad(int threads) {
    {
      std::lock_guard lk(mu);
      if (auto it = triad_gbps.find(threads); it != triad_gbps.end()) return it->second;
    }
    triad_arrays arr(threads);
    double best = 0;
    for (int r = 0; r < 5; ++r) best = std::max(best, triad_arrays::bytes() / arr.sweep(threads, 3.0f) * 1e-9);
    record_triad(threads, best);
    return best;
  }
};

/// The FMA peak benchmark `peak/fma/threads:T`: GFLOPS (total over T threads) and
/// GFLOPS_per_core of the best iteration, GFLOPS_mean of all of them.
inline void bm_peak_fma(benchmark::State& st, int threads) {
  double best = 0, flop_sum = 0, sec_sum = 0;
  for (auto _ : st) {
    const auto [s, f] = fma_run(threads);
    best = std::max(best, f / s * 1e-9);
    flop_sum += f, sec_sum += s;
  }
  st.counters["GFLOPS"] = best;
  st.counters["GFLOPS_per_core"] = best / threads;
  st.counters["GFLOPS_mean"] = sec_sum > 0 ? flop_sum / sec_sum * 1e-9 : 0.0;
  st.counters["threads"] = threads;
  if (threads == 1) machine_limits::get().record_fma(best);
  st.SetLabel(fma_isa());
}

/// The bandwidth benchmark `peak/triad/threads:T`: GBps of the best sweep (STREAM
/// reports the best), GBps_mean of all.
inline void bm_peak_triad(benchmark::State& st, int threads) {
  triad_arrays arr(threads);
  arr.sweep(threads, 3.0f);  // warm: page faults done
  double best = 0, sec_sum = 0;
  for (auto _ : st) {
    const double s = arr.sweep(threads, 3.0f);
    best = std::max(best, triad_arrays::bytes() / s * 1e-9);
    sec_sum += s;
  }
  st.counters["GBps"] = best;
  st.counters["GBps_mean"] = sec_sum > 0 ? triad_arrays::bytes() * static_cast<double>(st.iterations()) / sec_sum * 1e-9 : 0.0;
  st.counters["threads"] = threads;
  machine_limits::get().record_triad(threads, best);
}

/// Registers `peak/fma/threads:T` and `peak/triad/threads:T` for every T in
/// `thread_counts` (nothing with --no-peaks).
inline void register_peaks(const std::vector<int>& thread_counts) {
  if (!in_process_limits) return;
  for (int t : thread_counts)
    benchmark::RegisterBenchmark(("peak/fma/threads:" + std::to_string(t)).c_str(), bm_peak_fma, t)
        ->Unit(benchmark::kMillisecond);
  for (int t : thread_counts)
    benchmark::RegisterBenchmark(("peak/triad/threads:" + std::to_string(t)).c_str(), bm_peak_triad, t)
        ->Unit(benchmark::kMillisecond);
#if defined(__AVX512BF16__)
  benchmark::RegisterBenchmark("peak/bf16dot/threads:1", bm_peak_bf16dot)->Unit(benchmark::kMillisecond);
#endif
}

// ---------------------------------------------------------------- counters

/// GFLOPS = useful flop per iteration × iterations ÷ wall seconds of the loop, and
/// (unless --no-peaks) peak_frac = GFLOPS ÷ (per-core FMA peak of this process × threads).
inline void set_flop_counters(benchmark::State& st, double flop_per_iter, int threads, double wall_seconds) {
  const double gflops = flop_per_iter * static_cast<double>(st.iterations()) / wall_seconds * 1e-9;
  st.counters["GFLOPS"] = gflops;
  if (in_process_limits) st.counters["peak_frac"] = gflops / (machine_limits::get().fma_peak_per_core() * threads);
  st.counters["threads"] = threads;
}

/// GBps of the bytes one iteration must read, and (unless --no-peaks) triad_frac =
/// GBps ÷ the triad bandwidth of this process on the same number of threads.
inline void set_bandwidth_counters(benchmark::State& st, double bytes_per_iter, int threads, double wall_seconds) {
  const double gbps = bytes_per_iter * static_cast<double>(st.iterations()) / wall_seconds * 1e-9;
  st.counters["GBps"] = gbps;
  if (in_process_limits) st.counters["triad_frac"] = gbps / machine_limits::get().triad(threads);
  st.counters["threads"] = threads;
}

// ---------------------------------------------------------------- data

/// Fast deterministic fill with unit variance (uniform on [-√3, √3) × sigma).
inline void fill_random(float* p, std::size_t n, std::uint64_t seed, float sigma = 1.0f) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  const float scale = sigma * 1.7320508f / 8388608.0f;  // 2^23
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
    p[i] = (static_cast<float>(static_cast<std::int32_t>(x >> 40) - (1 << 23))) * scale;
  }
}

/// Tensor storage of the benchmarks: 64-byte aligned, as PyTorch, NumPy (large
/// arrays) and Eigen allocate, so a token row of D = 64 floats is four whole cache
/// lines. (std::vector's large blocks start 16 bytes past a page boundary; kernels
/// that read rows in scattered order, such as stochastic permutation, then touch a
/// fifth line per row.)
template <class T>
struct aligned64 {
  using value_type = T;
  aligned64() noexcept = default;
  template <class U>
  aligned64(const aligned64<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const aligned64<U>&) const noexcept { return true; }
};
template <class T>
using buffer = std::vector<T, aligned64<T>>;

inline buffer<float> random_vector(std::size_t n, std::uint64_t seed, float sigma = 1.0f) {
  buffer<float> v(n);
  fill_random(v.data(), n, seed, sigma);
  return v;
}

/// True if argv has an argument starting with `prefix`.
inline bool has_arg(int argc, char** argv, const std::string& prefix) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind(prefix, 0) == 0) return true;
  return false;
}

/// Removes `flag` from argv (before benchmark::Initialize sees it); true if present.
inline bool take_flag(int& argc, char** argv, const char* flag) {
  bool found = false;
  int w = 1;
  for (int r = 1; r < argc; ++r) {
    if (std::string(argv[r]) == flag)
      found = true;
    else
      argv[w++] = argv[r];
  }
  argc = w;
  return found;
}

/// Thread counts of the limit measurements: 1, 2 and every core.
inline std::vector<int> limit_thread_counts() {
  const int hw = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  return hw == 2 ? std::vector<int>{1, 2} : std::vector<int>{1, 2, hw};
}

/// The main() of every bench binary: a default --benchmark_min_time (a global flag,
/// so names stay free of "/min_time:..."), `--quick` for smaller suites,
/// `--limits-only` / `--no-peaks` (see the file comment), the binary's own
/// registration, and context lines the report script reads.
template <class Register>
int bench_main(int argc, char** argv, Register&& register_all) {
  const bool quick = take_flag(argc, argv, "--quick");
  const bool limits_only = take_flag(argc, argv, "--limits-only");
  in_process_limits = !take_flag(argc, argv, "--no-peaks");
  if (limits_only && !in_process_limits) {
    std::fprintf(stderr, "error: --limits-only and --no-peaks exclude each other\n");
    return 2;
  }
  std::vector<char*> args(argv, argv + argc);
  std::string min_time = std::string("--benchmark_min_time=") + (quick ? "0.05" : "0.3");
  if (!has_arg(argc, argv, "--benchmark_min_time")) args.insert(args.begin() + 1, min_time.data());
  args.push_back(nullptr);
  argc = static_cast<int>(args.size()) - 1;
  argv = args.data();
  if (limits_only)
    register_peaks(limit_thread_counts());
  else
    register_all(quick);
  benchmark::AddCustomContext("attnkit_version", attnkit::version());
  benchmark::AddCustomContext("limits", limits_only        ? "limits only"
                                        : in_process_limits ? "measured in this process"
                                                            : "measured by another process of the run");
  benchmark::AddCustomContext("attnkit_arch", attnkit::simd::arch_name<attnkit::simd::default_arch>());
  benchmark::AddCustomContext("fma_peak_isa", fma_isa());
  benchmark::AddCustomContext("suite", quick ? "quick" : "full");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace attnkit_bench
