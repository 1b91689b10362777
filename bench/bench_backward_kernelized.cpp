// The backward of the kernelised family (kernel/kernelized/backward.hpp) beside the
// FMA peak measured in the same process (common.hpp), and beside its own forward.
//
//   bench_backward_kernelized [--quick] [google-benchmark flags]
//
// Names (B=1, H=8, D=Dv=64, fp32, self-attention of N tokens, elu+1 features):
//   linear_backward/N:.../causal:C/threads:T   dq, dk, dv of linear attention
//   lln_backward/N:.../causal:1/threads:T      the same for LLN (α, β moment-matched)
//   linear_forward/N:.../causal:C/threads:T    the forward of the same call
// flop: useful work = 2.5 × the forward's (the backward rule of docs/performance.md),
// the forward's being N·(4·M·Dv) non-causal and N·(4·M·Dv + 2·64·(M + Dv)) causal
// per head (bench_variants.cpp). The report checks that the causal backward's time
// grows linearly: linear_backward at 4·N within 4.4× its time at N (N ≥ 4096).
#include <attnkit/attnkit.hpp>
#include <attnkit/kernel/kernelized/backward.hpp>

#include <string>
#include <vector>

#include "common.hpp"

namespace {

using namespace attnkit_bench;
using attnkit::index_t;

constexpr index_t heads = 8, dim = 64;

double forward_flop(index_t n, bool causal) {
  const double per_token = 4.0 * dim * dim + (causal ? 2.0 * 64 * (dim + dim) : 0.0);
  return per_token * static_cast<double>(n) * heads;
}

/// Times the backward (or, with `forward`, the forward) of `pol` on N tokens.
template <class Policy>
void run_case(benchmark::State& st, const Policy& pol, index_t n, bool causal, int threads, bool forward) {
  const std::size_t size = static_cast<std::size_t>(heads * n * dim);
  const auto q = random_vector(size, 1), k = random_vector(size, 2), v = random_vector(size, 3),
             dout = random_vector(size, 4);
  buffer<float> out(size), dq(size), dk(size), dv(size);
  attnkit::options opt;
  opt.causal = causal ? attnkit::causal::top_left : attnkit::causal::none;
  opt.num_threads = threads;
  const auto cv = [&](const float* p) { return attnkit::bhsd(p, 1, heads, n, dim); };
  const auto mv = [&](float* p) { return attnkit::bhsd(p, 1, heads, n, dim); };
  attnkit::workspace ws;
  opt.workspace = &ws;
  const attnkit::backward_options bo{};
  const auto once = [&] {
    if (forward) {
      attnkit::attention(pol, cv(q.data()), cv(k.data()), cv(v.data()), mv(out.data()), opt);
      return;
    }
    // What attnkit::attention_backward does for a kernelised policy: validate, then this.
    const attnkit::problem_shape sh =
        attnkit::validate_backward_call(cv(q.data()), cv(k.data()), cv(v.data()), cv(out.data()), nullptr,
                                        cv(dout.data()), mv(dq.data()), mv(dk.data()), mv(dv.data()), opt, bo,
                                        attnkit::backward_policy_facts{false, true, "kernelised"}, true);
    attnkit::detail::run_kernelized_backward<attnkit::simd::default_arch>(
        pol, sh, cv(q.data()), cv(k.data()), cv(v.data()), cv(out.data()), cv(dout.data()), mv(dq.data()),
        mv(dk.data()), mv(dv.data()), opt, bo, ws);
  };
  once();  // warm-up (and the workspace's buffers)
  const wall_timer timer;
  for (auto _ : st) {
    once();
    benchmark::DoNotOptimize(dq.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(st, forward_flop(n, causal) * (forward ? 1.0 : 2.5), threads, timer.seconds());
}

std::string tail(index_t n, bool causal, int t) {
  return "/N:" + std::to_string(n) + "/causal:" + (causal ? "1" : "0") + "/threads:" + std::to_string(t);
}

void register_all(bool quick) {
  const std::vector<int> thread_counts = quick ? std::vector<int>{1} : limit_thread_counts();
  register_peaks(thread_counts);
  const std::vector<index_t> ns = quick ? std::vector<index_t>{1024} : std::vector<index_t>{4096, 16384, 65536};
  const attnkit::linear linear{attnkit::feature::elu_plus_one{}};
  for (int t : thread_counts)
    for (index_t n : ns) {
      const auto reg = [&](const std::string& name, auto pol, bool causal, bool forward) {
        benchmark::RegisterBenchmark((name + tail(n, causal, t)).c_str(), [=](benchmark::State& st) {
          run_case(st, pol, n, causal, t, forward);
        })->Unit(benchmark::kMillisecond);
      };
      for (bool causal : {true, false}) {
        if (quick && !causal) continue;
        reg("linear_backward", linear, causal, false);
        reg("linear_forward", linear, causal, true);
      }
      reg("lln_backward", attnkit::log_normal{}, true, false);
    }
}

}  // namespace

int main(int argc, char** argv) { return bench_main(argc, argv, register_all); }
