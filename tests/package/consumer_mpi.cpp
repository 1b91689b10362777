// A consumer of the packaged attnkit::mpi target: <attnkit/distributed/ring.hpp>
// compiles and links against the consumer's MPI, and runs as a one-rank singleton.
// (Instantiating ring_attention would compile the kernels again; the MPI tests do.)
#include <attnkit/distributed/ring.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int ranks = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const auto runs = attnkit::distributed::chunks_of(attnkit::distributed::layout::zigzag, 10, ranks, 0);
  std::printf("attnkit::mpi consumer: %d rank, zig-zag runs of 10 positions: %lld + %lld\n", ranks,
              static_cast<long long>(runs[0].length), static_cast<long long>(runs[1].length));
  const bool ok = ranks == 1 && runs[0].length + runs[1].length == 10;
  MPI_Finalize();
  return ok ? 0 : 1;
}
