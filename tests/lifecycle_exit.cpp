// attnkit used after main() returned (issue #19, class 3): main() runs parallel
// calls (the pool's workers start), then an atexit handler and the destructor of a
// static object call the library again. The process exits 0 when every late call
// gave the right result; a late call into a destroyed pool crashed (SIGSEGV, or
// heap-use-after-free under ASan) or hung (ctest's timeout then fails it).
//
//   lifecycle_exit pool              parallel_for, 4 threads, from the destructor and atexit
//   lifecycle_exit attention-thread  attention() with 3 threads, from a thread the
//                                    destructor starts (fresh thread_local storage)
//   lifecycle_exit attention         attention() with 3 threads on the exiting thread itself;
//                                    its thread_local kernel scratch is already destroyed
//                                    then, so this mode waits for the per-call workspace
//                                    (the ctest entry is disabled until it lands)
#include <attnkit/attnkit.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using attnkit::index_t;

/// A small problem and its one-thread result, computed in main().
struct problem {
  static constexpr index_t B = 1, H = 4, L = 150, D = 32;
  std::vector<float> q, k, v, expected;
  problem() : q(B * H * L * D), k(q.size()), v(q.size()), expected(q.size()) {
    std::mt19937 gen(5);
    std::normal_distribution<float> nd;
    for (auto* x : {&q, &k, &v})
      for (auto& e : *x) e = nd(gen);
  }
  std::vector<float> run(int threads) const {
    std::vector<float> out(q.size(), -1.0f);
    attnkit::options o;
    o.num_threads = threads;
    o.causal = attnkit::causal::bottom_right;
    attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), B, H, L, D), attnkit::bhsd(k.data(), B, H, L, D),
                       attnkit::bhsd(v.data(), B, H, L, D), attnkit::bhsd(out.data(), B, H, L, D), o);
    return out;
  }
};

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "lifecycle_exit: FAILED: %s\n", what);
  std::fflush(stderr);
  std::_Exit(3);
}

void late_pool_call(const char* where) {
  constexpr std::int64_t n = 1000;
  std::vector<std::int64_t> got(n, -1);
  attnkit::parallel_for(n, 4, [&](std::int64_t t) { got[static_cast<std::size_t>(t)] = 3 * t; });
  for (std::int64_t t = 0; t < n; ++t)
    if (got[static_cast<std::size_t>(t)] != 3 * t) die(where);
}

void late_attention_call(const problem& p, bool own_thread, const char* where) {
  std::vector<float> out;
  if (own_thread) {
    std::thread t([&] { out = p.run(3); });
    t.join();
  } else {
    out = p.run(3);
  }
  if (std::memcmp(out.data(), p.expected.data(), out.size() * sizeof(float)) != 0) die(where);
}

std::string mode;  // set by main(); read after it returned (a trivially usable global)

/// Constructed before main() (so destroyed after everything main() created,
/// including the pool of the old code); calls the library from its destructor.
struct late_user {
  problem p;
  ~late_user() {
    if (mode == "pool") late_pool_call("parallel_for from a static destructor");
    if (mode == "attention-thread") late_attention_call(p, true, "attention() on a thread started by a static destructor");
    if (mode == "attention") late_attention_call(p, false, "attention() from a static destructor");
    std::fprintf(stderr, "lifecycle_exit: static destructor done (%s)\n", mode.c_str());
  }
} user;

void at_exit() {
  if (mode == "pool") late_pool_call("parallel_for from an atexit handler");
  if (mode == "attention-thread") late_attention_call(user.p, true, "attention() on a thread started by atexit");
  if (mode == "attention") late_attention_call(user.p, false, "attention() from an atexit handler");
}

}  // namespace

int main(int argc, char** argv) {
  mode = argc > 1 ? argv[1] : "pool";
  if (mode != "pool" && mode != "attention-thread" && mode != "attention") {
    std::fprintf(stderr, "usage: lifecycle_exit pool|attention-thread|attention\n");
    return 2;
  }
  // Use the library with several threads: the pool and its workers exist now.
  user.p.expected = user.p.run(1);
  for (int threads : {2, 3, 4})
    if (std::memcmp(user.p.run(threads).data(), user.p.expected.data(), user.p.expected.size() * sizeof(float)) != 0)
      die("thread counts differ in main()");
  late_pool_call("parallel_for in main()");
  std::atexit(at_exit);
  std::fprintf(stderr, "lifecycle_exit: main() done (%s)\n", mode.c_str());
  return 0;
}
