// Context-parallel causal attention across MPI processes (attnkit/distributed/ring.hpp).
//
//   mpirun -np 4 ./ring_attention_mpi        (as root: add --allow-run-as-root)
//
// Each rank holds its zig-zag share of one causal sequence (chunks r and 2P-1-r of
// 2P), calls ring_attention, and checks its rows against attention() on the whole
// sequence — which every rank can afford here because the example is small; a real
// program never materialises the whole sequence anywhere.
#include <attnkit/distributed/ring.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  int provided = 0;
  // FUNNELED: attnkit's worker threads never call MPI, only the calling thread does.
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);

  using attnkit::index_t;
  namespace dist = attnkit::distributed;
  const index_t B = 1, Hq = 8, Hkv = 2, N = 777, D = 64;  // GQA, N not divisible by 2P

  // The whole sequence, identical on every rank (same seed).
  std::mt19937 gen(2024);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randn = [&](index_t n) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (auto& e : x) e = nd(gen);
    return x;
  };
  const std::vector<float> q = randn(B * Hq * N * D), k = randn(B * Hkv * N * D), v = randn(B * Hkv * N * D);

  // This rank's rows: its zig-zag chunks, one after the other.
  const std::vector<dist::chunk> mine = dist::chunks_of(dist::layout::zigzag, N, ranks, rank);
  index_t n = 0;
  for (const auto& c : mine) n += c.length;
  auto take = [&](const std::vector<float>& x, index_t H) {
    std::vector<float> y(static_cast<std::size_t>(B * H * n * D));
    for (index_t h = 0; h < H; ++h)
      for (const auto& c : mine)
        for (index_t i = 0; i < c.length; ++i)
          for (index_t d = 0; d < D; ++d)
            y[static_cast<std::size_t>((h * n + c.local + i) * D + d)] = x[static_cast<std::size_t>((h * N + c.global + i) * D + d)];
    return y;
  };
  const std::vector<float> q_local = take(q, Hq), k_local = take(k, Hkv), v_local = take(v, Hkv);
  std::vector<float> out(static_cast<std::size_t>(B * Hq * n * D));

  attnkit::options opt;
  opt.causal = attnkit::causal::bottom_right;
  dist::ring_stats stats;
  dist::ring_attention(attnkit::softmax{}, attnkit::bhsd(q_local.data(), B, Hq, n, D),
                       attnkit::bhsd(k_local.data(), B, Hkv, n, D), attnkit::bhsd(v_local.data(), B, Hkv, n, D),
                       attnkit::bhsd(out.data(), B, Hq, n, D), opt, MPI_COMM_WORLD,
                       {.layout = dist::layout::zigzag, .stats = &stats});

  // Check against the single-process result on this rank's rows.
  std::vector<float> whole(static_cast<std::size_t>(B * Hq * N * D));
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), B, Hq, N, D), attnkit::bhsd(k.data(), B, Hkv, N, D),
                     attnkit::bhsd(v.data(), B, Hkv, N, D), attnkit::bhsd(whole.data(), B, Hq, N, D), opt);
  double err = 0, scale = 0;
  for (float x : whole) scale = std::fmax(scale, std::fabs(x));
  for (index_t h = 0; h < Hq; ++h)
    for (const auto& c : mine)
      for (index_t i = 0; i < c.length; ++i)
        for (index_t d = 0; d < D; ++d)
          err = std::fmax(err, std::fabs(out[static_cast<std::size_t>((h * n + c.local + i) * D + d)] -
                                         whole[static_cast<std::size_t>((h * N + c.global + i) * D + d)]));
  std::printf("rank %d/%d: rows %lld+%lld at %lld and %lld, %d local calls, compute %.2f ms, waiting %.2f ms, "
              "max |ring - single| = %.2e (of max |out| %.2f)\n",
              rank, ranks, static_cast<long long>(mine[0].length), static_cast<long long>(mine[1].length),
              static_cast<long long>(mine[0].global), static_cast<long long>(mine[1].global), stats.attention_calls,
              stats.compute_s * 1e3, stats.wait_s * 1e3, err, scale);
  int ok = err <= 2e-5 * scale, all_ok = 0;  // the softmax kernel's tolerance
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
