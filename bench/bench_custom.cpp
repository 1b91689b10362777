// Variants and feature maps defined outside the library (examples/custom_variants.hpp)
// beside the built-in variant doing the same work, in one process (the open interface's
// speed target: each custom variant ≥ 90% of its built-in counterpart).
//
//   bench_custom [--quick] [google-benchmark flags]
//
// Names (B=1, H=8, D=Dv=64, fp32, self-attention of N tokens):
//   custom/softplus/N:.../threads:T           l1-normalised softplus (custom)
//   custom_baseline/softplus/N:.../threads:T  sigmoid (built-in): the same logits, one weight each
//   custom/relu/...  custom_baseline/relu/... relu/Lk (custom) vs sigmoid (built-in)
//   custom/document_mask/N:.../threads:T      8 packed documents, causal within each (custom pattern)
//   custom_baseline/document_mask/...         block_sparse with the same 64×64 blocks + causal
//   custom/linear_relu2/N:.../threads:T       linear attention, causal, relu² features (custom, elementwise)
//   custom_baseline/linear_relu2/...          the same with the built-in relu map
//   custom/linear_learned/N:.../threads:T     causal, 96 learned positive features (custom row map)
//   custom_baseline/linear_learned/...        the built-in FAVOR+ with the same matrix
// flop: 4·D per visited (query, key) pair — the same for a pair of rows; linear
// attention: N·(4·M·Dv + 2·64·(M + Dv)) per head (as bench_variants.cpp counts it).
#include <attnkit/attnkit.hpp>

#include <string>
#include <vector>

#include "../examples/custom_variants.hpp"
#include "common.hpp"

namespace {

using namespace attnkit_bench;
using attnkit::index_t;

constexpr index_t heads = 8, dim = 64;

/// One timed case: `pol` on N tokens with options `opt`; `flop` per call.
template <class Policy>
void time_policy(benchmark::State& st, const Policy& pol, index_t n, attnkit::options opt, int threads, double flop) {
  const auto q = random_vector(static_cast<std::size_t>(heads * n * dim), 11);
  const auto k = random_vector(static_cast<std::size_t>(heads * n * dim), 12);
  const auto v = random_vector(static_cast<std::size_t>(heads * n * dim), 13);
  buffer<float> out(static_cast<std::size_t>(heads * n * dim));
  opt.num_threads = threads;
  const auto view = [&](const float* p) { return attnkit::bhsd(p, 1, heads, n, dim); };
  const auto o = attnkit::bhsd(out.data(), 1, heads, n, dim);
  attnkit::attention(pol, view(q.data()), view(k.data()), view(v.data()), o, opt);  // warm-up
  const wall_timer timer;
  for (auto _ : st) {
    attnkit::attention(pol, view(q.data()), view(k.data()), view(v.data()), o, opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(st, flop, threads, timer.seconds());
}

std::string tail(index_t n, int t) { return "/N:" + std::to_string(n) + "/threads:" + std::to_string(t); }

void register_all(bool quick) {
  const std::vector<int> thread_counts = quick ? std::vector<int>{1} : limit_thread_counts();
  register_peaks(thread_counts);
  const index_t n = 4096;
  const double dense = 4.0 * dim * static_cast<double>(n) * static_cast<double>(n) * heads;
  // Documents of 512 tokens: the block layout below visits exactly the same tiles.
  static const std::vector<index_t> first = custom::document_starts(std::vector<index_t>(8, 512));
  static std::vector<char> layout(64 * 64, 0);
  double pairs = 0;
  for (index_t qb = 0; qb < 64; ++qb)
    for (index_t kb = 0; kb <= qb; ++kb) layout[static_cast<std::size_t>(qb * 64 + kb)] = qb / 8 == kb / 8;
  for (index_t i = 0; i < n; ++i) pairs += static_cast<double>(i - first[static_cast<std::size_t>(i)] + 1);
  const double doc_flop = 4.0 * dim * pairs * heads;
  attnkit::options causal;
  causal.causal = attnkit::causal::top_left;
  static const std::vector<float> projection = attnkit::feature::orthogonal_projection(96, dim, 3);
  const auto linear_flop = [&](index_t m) {  // causal chunked linear attention with M features
    return (4.0 * static_cast<double>(m) * dim + 2.0 * 64 * static_cast<double>(m + dim)) * static_cast<double>(n) * heads;
  };
  const attnkit::pattern::block_sparse blocks{reinterpret_cast<const bool*>(layout.data()), 64, 64, 64, 64};
  for (int t : thread_counts) {
    const auto reg = [&](const std::string& name, auto pol, attnkit::options opt, double flop) {
      benchmark::RegisterBenchmark((name + tail(n, t)).c_str(), [=](benchmark::State& st) {
        time_policy(st, pol, n, opt, t, flop);
      })->Unit(benchmark::kMillisecond);
    };
    reg("custom/softplus", custom::softplus_attention{}, {}, dense);
    reg("custom_baseline/softplus", attnkit::sigmoid{}, {}, dense);
    reg("custom/relu", custom::relu_attention{}, {}, dense);
    reg("custom_baseline/relu", attnkit::sigmoid{}, {}, dense);
    reg("custom/document_mask", attnkit::sparse{custom::document_causal{first.data()}}, {}, doc_flop);
    reg("custom_baseline/document_mask", attnkit::sparse{blocks}, causal, doc_flop);
    reg("custom/linear_relu2", attnkit::linear{custom::relu_squared_features{}}, causal, linear_flop(dim));
    reg("custom_baseline/linear_relu2", attnkit::linear{attnkit::feature::relu{}}, causal, linear_flop(dim));
    reg("custom/linear_learned", attnkit::linear{custom::learned_positive_features{projection.data(), 96}}, causal,
        linear_flop(96));
    reg("custom_baseline/linear_learned", attnkit::linear{attnkit::feature::favor_plus{projection.data(), 96}}, causal,
        linear_flop(96));
  }
}

}  // namespace

int main(int argc, char** argv) { return bench_main(argc, argv, register_all); }
