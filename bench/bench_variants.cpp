// Throughput of the other variants and of the instrumentation, beside the FMA peak
// and triad bandwidth measured in the same process (common.hpp).
//
//   bench_variants [--quick] [google-benchmark flags]
//
// Names (B=1, H=8, D=Dv=64, fp32, self-attention of N tokens):
//   linear/N:.../causal:C/threads:T         elu+1 features; flop: N·(4·M·Dv) non-causal,
//                                           N·(4·M·Dv + 2·64·(M+Dv)) causal (chunked, tile 64)
//   lln/N:.../causal:1/threads:T            same flop count as linear
//   softmax_ref/N:.../causal:1/threads:T    softmax on the same shape (the 20× target)
//   sliding_window/W:256/N:.../threads:T    sparse{sliding_window{255, 0}}; flop: 4·D per visited key
//   block_sparse/density:0.25/N:4096/...    random block layout (64×64 blocks); flop: 4·D per visited key
//   dense_for_block_sparse/N:4096/...       the same call with every block on
//   stochastic_permutation/W:256/N:...      symmetric window of 257 ranks; flop: 4·D per visited key
//   dilated_window/W:128/dilation:2/...     the other static patterns; flop: 4·D per allowed pair,
//   neighborhood_1d/kernel:255[/dilation:4]  counter `density` = allowed pairs / N²
//   neighborhood_2d/grid:64x64/kernel:15x15
//   power_attention/block:64, sink_window/sinks:4/W:256/N:4096|16384
//   flex_prefill/gamma:0.9/N:4096/...       block-structured Q/K; flop: 4·D per key of the kept blocks
//   top_k/k:64/N:4096/threads:T             sparse{top_k{64}}, non-causal; flop: 6·D per key (selection
//                                           Q·Kᵀ, then Q·Kᵀ and P·V; with random data nearly every
//                                           tile holds a kept key, so the main pass skips almost none)
//   entropy/off|on/N:4096/D:64/threads:1    softmax with and without observe(stats)
//   softmax_decode_bf16/Lk:4096/D:128/H:8   bf16 K/V decode; GB/s of K+V bytes read
//   softmax_decode_fp16/Lk:4096/D:128/H:8   the same with fp16 K/V
#include <attnkit/attnkit.hpp>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"

namespace {

using namespace attnkit_bench;
using attnkit::index_t;

constexpr index_t heads = 8, dim = 64;

struct inputs {
  buffer<float> q, k, v, o;
  explicit inputs(index_t n)
      : q(random_vector(static_cast<std::size_t>(heads * n * dim), 1)),
        k(random_vector(static_cast<std::size_t>(heads * n * dim), 2)),
        v(random_vector(static_cast<std::size_t>(heads * n * dim), 3)),
        o(static_cast<std::size_t>(heads * n * dim)) {}
};

/// Q and K whose 64-token blocks each share an offset vector (1.5 × a unit
/// Gaussian one per block and head), so a block-selection pattern sees
/// different block means; V plain noise.
struct structured_inputs : inputs {
  explicit structured_inputs(index_t n) : inputs(n) {
    const auto offsets = random_vector(static_cast<std::size_t>(2 * heads * (n / 64 + 1) * dim), 4, 1.5f);
    for (int which = 0; which < 2; ++which) {
      float* x = which == 0 ? q.data() : k.data();
      for (index_t r = 0; r < heads * n; ++r) {
        const float* off = offsets.data() + ((which * heads + r / n) * (n / 64 + 1) + r % n / 64) * dim;
        for (index_t d = 0; d < dim; ++d) x[r * dim + d] += off[d];
      }
    }
  }
};

/// Number of (query, key) pairs a static pattern allows in self-attention of n tokens.
template <class Pattern>
double allowed_pairs(const Pattern& pat, index_t n) {
  double pairs = 0;
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) pairs += pat.allowed(i, j, n, n) ? 1.0 : 0.0;
  return pairs;
}

/// Runs `pol` on N tokens; `flop` is the useful work of one call.
template <class Policy, class Observer = attnkit::null_observer>
void run_case(benchmark::State& st, const Policy& pol, index_t n, bool causal, int threads, double flop,
              Observer obs = {}) {
  inputs in(n);
  attnkit::options opt;
  opt.causal = causal ? attnkit::causal::top_left : attnkit::causal::none;
  opt.num_threads = threads;
  const auto q = attnkit::bhsd(in.q.data(), 1, heads, n, dim), k = attnkit::bhsd(in.k.data(), 1, heads, n, dim),
             v = attnkit::bhsd(in.v.data(), 1, heads, n, dim);
  const auto o = attnkit::bhsd(in.o.data(), 1, heads, n, dim);
  attnkit::attention(pol, q, k, v, o, opt, obs);  // warm-up
  const wall_timer timer;
  for (auto _ : st) {
    attnkit::attention(pol, q, k, v, o, opt, obs);
    benchmark::DoNotOptimize(in.o.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(st, flop, threads, timer.seconds());
}

double kernelized_flop(index_t n, bool causal) {
  const double per_token = 4.0 * dim * dim + (causal ? 2.0 * 64 * (dim + dim) : 0.0);
  return per_token * static_cast<double>(n) * heads;
}

std::string tail(index_t n, int threads) { return "/N:" + std::to_string(n) + "/threads:" + std::to_string(threads); }

void register_all(bool quick) {
  const int hw = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  const std::vector<int> thread_counts = quick ? std::vector<int>{1} : (hw == 2 ? std::vector<int>{1, 2} : std::vector<int>{1, 2, hw});
  register_peaks(quick ? std::vector<int>{1} : thread_counts);
  const auto ms = benchmark::kMillisecond;

  // Kernelised variants: linear in N, and far below softmax at long N.
  const std::vector<index_t> long_ns = quick ? std::vector<index_t>{4096} : std::vector<index_t>{4096, 16384, 65536};
  for (index_t n : long_ns)
    for (int t : thread_counts) {
      for (bool causal : {false, true})
        benchmark::RegisterBenchmark(("linear" + std::string("/N:") + std::to_string(n) + "/causal:" +
                                      (causal ? "1" : "0") + "/threads:" + std::to_string(t)).c_str(),
                                     [=](benchmark::State& st) {
                                       run_case(st, attnkit::linear{attnkit::feature::elu_plus_one{}}, n, causal, t,
                                                kernelized_flop(n, causal));
                                     })
            ->Unit(ms);
      benchmark::RegisterBenchmark(("lln/N:" + std::to_string(n) + "/causal:1/threads:" + std::to_string(t)).c_str(),
                                   [=](benchmark::State& st) {
                                     run_case(st, attnkit::log_normal{}, n, true, t, kernelized_flop(n, true));
                                   })
          ->Unit(ms);
    }
  for (index_t n : quick ? std::vector<index_t>{4096} : std::vector<index_t>{4096, 16384})
    benchmark::RegisterBenchmark(("softmax_ref/N:" + std::to_string(n) + "/causal:1/threads:1").c_str(),
                                 [=](benchmark::State& st) {
                                   run_case(st, attnkit::softmax{}, n, true, 1,
                                            2.0 * static_cast<double>(n) * static_cast<double>(n) * dim * heads);
                                 })
        ->Unit(ms);

  // Sliding window, W = 256 keys (causal local window): cost ∝ N.
  for (index_t n : long_ns)
    for (int t : thread_counts) {
      double keys = 0;
      for (index_t i = 0; i < n; ++i) keys += static_cast<double>(std::min<index_t>(i + 1, 256));
      benchmark::RegisterBenchmark(("sliding_window/W:256" + tail(n, t)).c_str(), [=](benchmark::State& st) {
        run_case(st, attnkit::sparse{attnkit::pattern::sliding_window{255, 0}}, n, false, t, 4.0 * dim * keys * heads);
      })->Unit(ms);
    }

  // Block-sparse at density 0.25 vs the same call dense.
  {
    const index_t n = 4096, nb = n / 64;
    static std::vector<char> quarter(static_cast<std::size_t>(nb * nb)), full(static_cast<std::size_t>(nb * nb), 1);
    std::uint64_t s = 12345;
    double on = 0;
    for (auto& x : quarter) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      x = (s >> 33) % 4 == 0;
      on += x;
    }
    const double flop_q = 4.0 * dim * on * 64 * 64 * heads, flop_f = 4.0 * dim * static_cast<double>(n) * n * heads;
    for (int t : thread_counts) {
      benchmark::RegisterBenchmark(("block_sparse/density:0.25" + tail(n, t)).c_str(), [=](benchmark::State& st) {
        st.counters["density"] = on / static_cast<double>(nb * nb);  // the layout's own: 0.252
        run_case(st, attnkit::sparse{attnkit::pattern::block_sparse{reinterpret_cast<const bool*>(quarter.data()), 64, 64, nb, nb}},
                 n, false, t, flop_q);
      })->Unit(ms);
      benchmark::RegisterBenchmark(("dense_for_block_sparse" + tail(n, t)).c_str(), [=](benchmark::State& st) {
        run_case(st, attnkit::sparse{attnkit::pattern::block_sparse{reinterpret_cast<const bool*>(full.data()), 64, 64, nb, nb}},
                 n, false, t, flop_f);
      })->Unit(ms);
    }
  }

  // Stochastic permutation with a symmetric window of 257 ranks vs sliding window.
  for (index_t n : quick ? std::vector<index_t>{4096} : std::vector<index_t>{4096, 16384})
    for (int t : thread_counts) {
      double keys = 0, sym = 0;
      for (index_t r = 0; r < n; ++r) keys += static_cast<double>(std::min(n - 1, r + 128) - std::max<index_t>(0, r - 128) + 1);
      for (index_t i = 0; i < n; ++i) sym += static_cast<double>(std::min(n - 1, i + 128) - std::max<index_t>(0, i - 128) + 1);
      benchmark::RegisterBenchmark(("stochastic_permutation/W:256" + tail(n, t)).c_str(), [=](benchmark::State& st) {
        run_case(st, attnkit::stochastic_permutation{.window = 256, .seed = 1}, n, false, t, 4.0 * dim * keys * heads);
      })->Unit(ms);
      benchmark::RegisterBenchmark(("sliding_window_sym/W:256" + tail(n, t)).c_str(), [=](benchmark::State& st) {
        run_case(st, attnkit::sparse{attnkit::pattern::sliding_window{128, 128}}, n, false, t, 4.0 * dim * sym * heads);
      })->Unit(ms);
    }

  // Top-k (data-dependent): a selection pass, then the main pass over the kept keys.
  for (int t : thread_counts) {
    const index_t n = 4096;
    benchmark::RegisterBenchmark(("top_k/k:64" + tail(n, t)).c_str(), [=](benchmark::State& st) {
      run_case(st, attnkit::sparse{attnkit::pattern::top_k{.k = 64}}, n, false, t,
               6.0 * dim * static_cast<double>(n) * static_cast<double>(n) * heads);
    })->Unit(ms);
  }

  // The other static patterns, each at N = 4096 (sink window also at 16384: its
  // cost is linear in N), flop = 4·D per allowed (query, key) pair, counted from
  // the pattern's own `allowed` once, on the first run of the case.
  const auto static_case = [&](const std::string& name, auto pat, index_t n, int t) {
    auto pairs = std::make_shared<double>(-1.0);
    benchmark::RegisterBenchmark((name + tail(n, t)).c_str(), [=](benchmark::State& st) {
      if (*pairs < 0) *pairs = allowed_pairs(pat, n);
      st.counters["density"] = *pairs / (static_cast<double>(n) * static_cast<double>(n));
      run_case(st, attnkit::sparse{pat}, n, false, t, 4.0 * dim * *pairs * heads);
    })->Unit(ms);
  };
  for (int t : thread_counts) {
    static_case("dilated_window/W:128/dilation:2", attnkit::pattern::dilated_window{128, 2}, 4096, t);
    static_case("neighborhood_1d/kernel:255", attnkit::pattern::neighborhood_1d{255, 1}, 4096, t);
    static_case("neighborhood_1d/kernel:255/dilation:4", attnkit::pattern::neighborhood_1d{255, 4}, 4096, t);
    static_case("neighborhood_2d/grid:64x64/kernel:15x15", attnkit::pattern::neighborhood_2d{64, 64, 15, 15, 1}, 4096, t);
    static_case("power_attention/block:64", attnkit::pattern::power_attention{64, 1, 1}, 4096, t);
    for (index_t n : quick ? std::vector<index_t>{4096} : std::vector<index_t>{4096, 16384})
      static_case("sink_window/sinks:4/W:256", attnkit::pattern::sink_window{4, 256}, n, t);
  }

  // FlexPrefill block selection (gamma 0.9) on inputs with block structure (each
  // 64-token block of Q and K shares an offset vector, so block means differ and
  // the selection concentrates; on i.i.d. noise it would keep about 90% of the
  // blocks). flop = 4·D per key of the kept blocks, counted from the kernel's own
  // selection (detail::select_blocks) once; the selection pass is not counted.
  for (int t : thread_counts) {
    const index_t n = 4096;
    benchmark::RegisterBenchmark(("flex_prefill/gamma:0.9" + tail(n, t)).c_str(), [=](benchmark::State& st) {
      structured_inputs in(n);
      const attnkit::pattern::flex_prefill pat{.gamma = 0.9, .block = 64, .min_budget = 1};
      attnkit::options opt;
      opt.num_threads = t;
      const auto q = attnkit::bhsd(in.q.data(), 1, heads, n, dim), k = attnkit::bhsd(in.k.data(), 1, heads, n, dim),
                 v = attnkit::bhsd(in.v.data(), 1, heads, n, dim);
      const auto o = attnkit::bhsd(in.o.data(), 1, heads, n, dim);
      const attnkit::problem_shape sh{1, heads, heads, n, n, dim, dim};
      const auto sel = attnkit::detail::select_blocks(pat, sh, attnkit::tensor_view<const float>(q),
                                                      attnkit::tensor_view<const float>(k), opt, t);
      double kept = 0;
      for (unsigned char x : sel.keep) kept += x;
      const double pairs = kept * 64 * 64;  // N is a multiple of the block: every block is 64×64
      st.counters["density"] = pairs / (static_cast<double>(n) * static_cast<double>(n) * heads);
      const attnkit::sparse pol{pat};
      attnkit::attention(pol, q, k, v, o, opt);  // warm-up
      const wall_timer timer;
      for (auto _ : st) {
        attnkit::attention(pol, q, k, v, o, opt);
        benchmark::DoNotOptimize(in.o.data());
        benchmark::ClobberMemory();
      }
      set_flop_counters(st, 4.0 * dim * pairs, t, timer.seconds());
    })->Unit(ms);
  }

  // Instrumentation off vs on (entropy, per-head statistics) on the same call.
  {
    const index_t n = 4096;
    const double flop = 4.0 * static_cast<double>(n) * n * dim * heads;
    benchmark::RegisterBenchmark("entropy/off/N:4096/D:64/threads:1", [=](benchmark::State& st) {
      run_case(st, attnkit::softmax{}, n, false, 1, flop);
    })->Unit(ms);
    benchmark::RegisterBenchmark("entropy/on/N:4096/D:64/threads:1", [=](benchmark::State& st) {
      static attnkit::entropy_stats stats;
      run_case(st, attnkit::softmax{}, n, false, 1, flop, attnkit::observe(stats));
    })->Unit(ms);
  }

  // Decode with bf16 and fp16 K/V: half the bytes of the fp32 decode in bench_softmax.
  const auto decode_16bit = [&](auto tag, const char* name) {
    using KV = decltype(tag);
    for (int t : thread_counts)
      benchmark::RegisterBenchmark((std::string(name) + "/Lk:4096/D:128/H:8/threads:" + std::to_string(t)).c_str(),
                                   [=](benchmark::State& st) {
                                     const index_t lk = 4096, d = 128;
                                     const auto kf = random_vector(static_cast<std::size_t>(heads * lk * d), 2);
                                     const auto vf = random_vector(static_cast<std::size_t>(heads * lk * d), 3);
                                     buffer<KV> kb(kf.size()), vb(vf.size());
                                     for (std::size_t i = 0; i < kf.size(); ++i) {
                                       kb[i] = KV::from_float(kf[i]);
                                       vb[i] = KV::from_float(vf[i]);
                                     }
                                     const auto q = random_vector(static_cast<std::size_t>(heads * d), 1);
                                     buffer<float> o(static_cast<std::size_t>(heads * d));
                                     attnkit::options opt;
                                     opt.num_threads = t;
                                     const auto qv = attnkit::bhsd(q.data(), 1, heads, 1, d);
                                     const auto kv = attnkit::bhsd(static_cast<const KV*>(kb.data()), 1, heads, lk, d);
                                     const auto vv = attnkit::bhsd(static_cast<const KV*>(vb.data()), 1, heads, lk, d);
                                     const auto ov = attnkit::bhsd(o.data(), 1, heads, 1, d);
                                     attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);
                                     const wall_timer timer;
                                     for (auto _ : st) {
                                       attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);
                                       benchmark::DoNotOptimize(o.data());
                                     }
                                     set_bandwidth_counters(st, 2.0 * static_cast<double>(kb.size()) * 2, t, timer.seconds());
                                   })
          ->Unit(benchmark::kMicrosecond);
  };
  decode_16bit(attnkit::bfloat16{}, "softmax_decode_bf16");
  decode_16bit(attnkit::float16{}, "softmax_decode_fp16");
}

}  // namespace

int main(int argc, char** argv) { return attnkit_bench::bench_main(argc, argv, register_all); }
