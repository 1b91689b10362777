// The backward pass (attnkit::attention_backward, softmax fp32), forward+backward,
// and a naive Eigen forward+backward, beside the FMA peak measured in the same
// process (common.hpp).
//
//   bench_backward [--quick] [google-benchmark flags]
//
// Names: backward/N:4096/D:64/causal:0/threads:1   (B=1, H=8, Lq=Lk=N; backward only)
//        fwd_bwd/N:1024/D:64/threads:1             (attention with LSE + attention_backward)
//        eigen_fwd_bwd/N:1024/D:64                 (materialised N×N, 1 thread)
//        peak/fma/threads:T
// Counters: GFLOPS of useful flop — backward: 10·N²·D·H (S, dP, dV, dK, dQ: five
// N×N×D products, the recomputation of S included, as FlashAttention-2 counts it),
// halved for causal; forward+backward: 14·N²·D·H for both the kernels and the Eigen
// baseline (the baseline does not recompute S, so it is credited 2·N²·D·H it never
// runs); peak_frac of the per-core FMA peak × threads.
#include <attnkit/attnkit.hpp>

#include <cmath>
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

/// The tensors of one forward+backward problem (B = 1, H heads, Lq = Lk = n).
struct problem {
  index_t n, d;
  buffer<float> q, k, v, o, dout, dq, dk, dv, lse;
  problem(index_t n_, index_t d_)
      : n(n_), d(d_), q(random_vector(size(), 1)), k(random_vector(size(), 2)), v(random_vector(size(), 3)),
        o(size()), dout(random_vector(size(), 4)), dq(size()), dk(size()), dv(size()),
        lse(static_cast<std::size_t>(heads * n)) {}
  std::size_t size() const { return static_cast<std::size_t>(heads * n * d); }
  template <class T>
  attnkit::tensor_view<T> view(T* p) const {
    return attnkit::bhsd(p, 1, heads, n, d);
  }
  void forward(const attnkit::options& opt) {
    attnkit::attention(attnkit::softmax{}, view<const float>(q.data()), view<const float>(k.data()),
                       view<const float>(v.data()), view(o.data()), opt);
  }
  void backward(const attnkit::options& opt) {
    attnkit::attention_backward(attnkit::softmax{}, view<const float>(q.data()), view<const float>(k.data()),
                                view<const float>(v.data()), view<const float>(o.data()), lse.data(),
                                view<const float>(dout.data()), view(dq.data()), view(dk.data()), view(dv.data()),
                                opt);
  }
};

attnkit::options make_options(problem& p, bool causal, int threads) {
  attnkit::options opt;
  opt.causal = causal ? attnkit::causal::bottom_right : attnkit::causal::none;
  opt.num_threads = threads;
  opt.lse = p.lse.data();
  return opt;
}

double n2dh(index_t n, index_t d) {
  return static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d) * heads;
}

void bm_backward(benchmark::State& st, index_t n, index_t d, bool causal, int threads) {
  problem p(n, d);
  const attnkit::options opt = make_options(p, causal, threads);
  p.forward(opt);
  p.backward(opt);  // warm: thread pool, workspace
  const wall_timer timer;
  for (auto _ : st) {
    p.backward(opt);
    benchmark::DoNotOptimize(p.dq.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  set_flop_counters(st, 10.0 * n2dh(n, d) / (causal ? 2 : 1), threads, sec);
}

void bm_fwd_bwd(benchmark::State& st, index_t n, index_t d, int threads) {
  problem p(n, d);
  const attnkit::options opt = make_options(p, false, threads);
  p.forward(opt);
  p.backward(opt);
  const wall_timer timer;
  for (auto _ : st) {
    p.forward(opt);
    p.backward(opt);
    benchmark::DoNotOptimize(p.dq.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  set_flop_counters(st, 14.0 * n2dh(n, d), threads, sec);
}

#ifdef ATTNKIT_BENCH_HAVE_EIGEN
/// The forward+backward everybody writes first: S = τQKᵀ and P = softmax(S)
/// materialised (N×N), O = PV; dV = PᵀdO, dP = dO·Vᵀ, D = rowsum(dO∘O),
/// dS = P∘(dP − D), dQ = τ·dS·K, dK = τ·dSᵀQ. Eigen 3.4 GEMM on one thread.
void bm_eigen_fwd_bwd(benchmark::State& st, index_t n, index_t d) {
  using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using cmap = Eigen::Map<const mat>;
  Eigen::setNbThreads(1);
  problem pr(n, d);
  mat p(n, n), dp(n, n);
  Eigen::VectorXf row_max(n), row_sum(n), delta(n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto run = [&] {
    for (index_t h = 0; h < heads; ++h) {
      const index_t off = h * n * d;
      const cmap qh(pr.q.data() + off, n, d), kh(pr.k.data() + off, n, d), vh(pr.v.data() + off, n, d),
          doh(pr.dout.data() + off, n, d);
      Eigen::Map<mat> oh(pr.o.data() + off, n, d), dqh(pr.dq.data() + off, n, d), dkh(pr.dk.data() + off, n, d),
          dvh(pr.dv.data() + off, n, d);
      p.noalias() = scale * (qh * kh.transpose());
      row_max = p.rowwise().maxCoeff();
      p.colwise() -= row_max;
      p = p.array().exp().matrix();
      row_sum = p.rowwise().sum();
      p.array().colwise() /= row_sum.array();
      oh.noalias() = p * vh;
      dvh.noalias() = p.transpose() * doh;
      dp.noalias() = doh * vh.transpose();
      delta = (doh.array() * oh.array()).rowwise().sum().matrix();
      dp.colwise() -= delta;
      dp = (p.array() * dp.array()).matrix();
      dqh.noalias() = scale * (dp * kh);
      dkh.noalias() = scale * (dp.transpose() * qh);
    }
  };
  run();
  const wall_timer timer;
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(pr.dq.data());
    benchmark::ClobberMemory();
  }
  const double sec = timer.seconds();
  set_flop_counters(st, 14.0 * n2dh(n, d), 1, sec);
}
#endif

std::string suffix(index_t n, index_t d) { return "/N:" + std::to_string(n) + "/D:" + std::to_string(d); }

void register_all(bool quick) {
  const int hw = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  const std::vector<int> thread_counts = hw == 2 ? std::vector<int>{1, 2} : std::vector<int>{1, 2, hw};
  register_peaks(thread_counts);

  const index_t n_big = quick ? 256 : 4096, n_cmp = quick ? 256 : 1024;
  for (index_t d : {64, 128})
    for (bool causal : {false, true})
      for (int t : thread_counts)
        benchmark::RegisterBenchmark(("backward" + suffix(n_big, d) + "/causal:" + (causal ? "1" : "0") +
                                      "/threads:" + std::to_string(t))
                                         .c_str(),
                                     bm_backward, n_big, d, causal, t)
            ->Unit(benchmark::kMillisecond);
  for (index_t n : quick ? std::vector<index_t>{n_cmp} : std::vector<index_t>{n_cmp, n_big}) {
    benchmark::RegisterBenchmark(("fwd_bwd" + suffix(n, 64) + "/threads:1").c_str(), bm_fwd_bwd, n, 64, 1)
        ->Unit(benchmark::kMillisecond);
#ifdef ATTNKIT_BENCH_HAVE_EIGEN
    benchmark::RegisterBenchmark(("eigen_fwd_bwd" + suffix(n, 64)).c_str(), bm_eigen_fwd_bwd, n, 64)
        ->Unit(benchmark::kMillisecond);
#endif
  }
}

}  // namespace

int main(int argc, char** argv) { return attnkit_bench::bench_main(argc, argv, register_all); }
