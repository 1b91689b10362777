// Threads and process life cycle (issue #19, classes 3, 5 and 6): the thread cap,
// ATTNKIT_NUM_THREADS, nested pool calls, many user threads at once, and fork().
// Calls after main() returned are tested by lifecycle_exit.cpp (a program of its
// own: they need a process exit). The ThreadSanitizer stage (scripts/test.sh
// --tsan) runs this file too, without the [fork] cases (TSan does not support
// threads started in the child of a multi-threaded fork).
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {
constexpr float sentinel = 12345.0f;

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// OS threads of this process (Linux: /proc/self/status).
int os_threads() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key)
    if (key == "Threads:") {
      int n = 0;
      status >> n;
      return n;
    }
  return -1;
}

/// Restores ATTNKIT_NUM_THREADS (unset) when a test ends, failed or not.
struct env_guard {
  ~env_guard() { ::unsetenv("ATTNKIT_NUM_THREADS"); }
};

/// One call of `pol` into a fresh output with `threads` threads.
template <class P>
std::vector<float> run(const P& pol, const problem& p, int threads, options o = {}) {
  std::vector<float> out(p.out_size(), sentinel);
  o.num_threads = threads;
  attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  return out;
}
}  // namespace

TEST_CASE("thread counts are capped: a huge request leaves a bounded pool", "[threads][pool]") {
  const int cap = max_threads();
  CHECK(cap >= 1);
  CHECK(cap <= hard_max_threads);
  CHECK(resolve_num_threads(1'000'000) == cap);
  CHECK(resolve_num_threads(std::numeric_limits<int>::max()) == cap);
  CHECK(resolve_num_threads(1) == 1);
  // One call with a million threads: the result of one thread, and the process
  // holds at most the cap (it used to keep ~15,600 OS threads).
  const problem p(1, 8, 2, 300, 300, 32, 32, 5);
  const auto one = run(softmax{}, p, 1);
  CHECK(bitwise_equal(run(softmax{}, p, 1'000'000), one));
  CHECK(thread_pool::instance().workers() <= cap - 1);
  const int threads = os_threads();
  INFO("OS threads " << threads << ", cap " << cap);
  if (threads >= 0) CHECK(threads <= cap + 1);  // the workers, the main thread
}

TEST_CASE("ATTNKIT_NUM_THREADS: valid values, and invalid ones reported before any write", "[threads][env]") {
  env_guard restore;
  const int cap = max_threads();
  ::setenv("ATTNKIT_NUM_THREADS", "5", 1);
  CHECK(resolve_num_threads(0) == std::min(5, cap));
  CHECK(resolve_num_threads(2) == 2);  // options win; the variable is not read
  ::setenv("ATTNKIT_NUM_THREADS", " 3\n", 1);
  CHECK(resolve_num_threads(0) == std::min(3, cap));
  ::setenv("ATTNKIT_NUM_THREADS", "", 1);  // empty: as if unset
  CHECK(resolve_num_threads(0) == std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, cap));
  ::setenv("ATTNKIT_NUM_THREADS", "100000", 1);  // valid, lowered to the cap
  CHECK(resolve_num_threads(0) == cap);

  const problem p(1, 2, 1, 20, 30, 8, 8, 6);
  for (const char* bad : {"abc", "-3", "0", "99999999999", "4x", "+4", "1e3", "2 3", "0x10"}) {
    INFO("ATTNKIT_NUM_THREADS=" << bad);
    ::setenv("ATTNKIT_NUM_THREADS", bad, 1);
    bool thrown = false;
    try {
      resolve_num_threads(0);
    } catch (const invalid_argument_error& e) {
      thrown = true;
      CHECK(e.argument() == "ATTNKIT_NUM_THREADS");
      CHECK(std::string(e.what()).find(bad) != std::string::npos);
    }
    CHECK(thrown);
    // A call that would read it refuses before writing (output and LSE untouched).
    std::vector<float> out(p.out_size(), sentinel), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq), sentinel);
    options o;
    o.lse = lse.data();
    thrown = false;
    try {
      attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    } catch (const invalid_argument_error& e) {
      thrown = true;
      CHECK(e.argument() == "ATTNKIT_NUM_THREADS");
    }
    CHECK(thrown);
    for (float x : out) REQUIRE(x == sentinel);
    for (float x : lse) REQUIRE(x == sentinel);
    // With options.num_threads set the variable is not consulted.
    o.num_threads = 2;
    CHECK_NOTHROW(attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o));
  }
}

TEST_CASE("nested pool calls run inline and stay exact", "[threads][pool]") {
  // A task that calls parallel_for again (an observer calling attention() does
  // this) must neither deadlock nor lock the pool's mutex twice.
  constexpr int outer = 12, inner = 50;
  std::vector<std::int64_t> sums(outer, 0);
  parallel_for(outer, 4, [&](std::int64_t t) {
    std::vector<std::int64_t> part(inner, 0);
    parallel_for(inner, 4, [&](std::int64_t u) { part[static_cast<std::size_t>(u)] = t * 1000 + u; });
    for (auto x : part) sums[static_cast<std::size_t>(t)] += x;
  });
  for (int t = 0; t < outer; ++t) CHECK(sums[static_cast<std::size_t>(t)] == t * 1000 * inner + inner * (inner - 1) / 2);
}

TEST_CASE("an exception from a task reaches the caller and leaves the pool usable", "[threads][pool]") {
  // Whichever thread runs the throwing task (a worker's exception used to end the
  // process), the caller gets it after every thread is done with the job.
  for (std::int64_t bad : {0, 5, 63}) {
    std::atomic<int> ran{0};
    CHECK_THROWS_AS(parallel_for(64, 4,
                                 [&](std::int64_t t) {
                                   ran.fetch_add(1);
                                   if (t == bad) throw std::runtime_error("task");
                                 }),
                    std::runtime_error);
    CHECK(ran.load() >= 1);
  }
  std::atomic<std::int64_t> sum{0};
  parallel_for(100, 4, [&](std::int64_t t) { sum.fetch_add(t); });
  CHECK(sum.load() == 4950);
}

TEST_CASE("many user threads calling at once: every result exact", "[threads][concurrency]") {
  // Eight user threads, each running a mix of variants and paths (tiled, decode,
  // banded sparse, permutation, kernelised) with several pool threads, against
  // results computed alone beforehand, bitwise.
  const problem big(1, 4, 2, 160, 200, 32, 16, 7), dec(2, 8, 2, 1, 700, 32, 16, 8), self(1, 4, 2, 150, 150, 32, 16, 9);
  options causal_br;
  causal_br.causal = causal::bottom_right;
  const auto r_soft = run(softmax{}, big, 1, causal_br);
  const auto r_sig = run(sigmoid{}, big, 1);
  const auto r_dec = run(softmax{}, dec, 1);
  const auto r_win = run(sparse{pattern::sliding_window{20, 0}}, big, 1);
  const auto r_perm = run(stochastic_permutation{.window = 16, .seed = 4}, self, 1);
  const auto r_lin = run(linear{feature::elu_plus_one{}}, big, 1, causal_br);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> users;
  for (int u = 0; u < 8; ++u)
    users.emplace_back([&, u] {
      const int threads = 1 + u % 4;
      for (int rep = 0; rep < 2; ++rep) {
        mismatches += !bitwise_equal(run(softmax{}, big, threads, causal_br), r_soft);
        mismatches += !bitwise_equal(run(sigmoid{}, big, threads), r_sig);
        mismatches += !bitwise_equal(run(softmax{}, dec, threads), r_dec);
        mismatches += !bitwise_equal(run(sparse{pattern::sliding_window{20, 0}}, big, threads), r_win);
        mismatches += !bitwise_equal(run(stochastic_permutation{.window = 16, .seed = 4}, self, threads), r_perm);
        mismatches += !bitwise_equal(run(linear{feature::elu_plus_one{}}, big, threads, causal_br), r_lin);
      }
    });
  for (auto& t : users) t.join();
  CHECK(mismatches.load() == 0);
}

namespace {
/// Runs `child` in a fork()ed child process (killed after 120 s, so a hang fails
/// instead of blocking the suite) and returns its wait status; the child exits 0
/// when `child` returns true.
template <class F>
int in_child(F&& child) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::alarm(120);
    int rc = 1;
    try {
      rc = child() ? 0 : 1;
    } catch (...) {
      rc = 2;
    }
    ::_exit(rc);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return status;
}

void check_child_ok(int status) {
  INFO("wait status " << status << (WIFSIGNALED(status) ? " (killed by a signal: SIGALRM = hang)" : ""));
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
}  // namespace

TEST_CASE("fork() after the pool started: the child's multi-threaded calls work", "[fork]") {
  const problem p(1, 8, 2, 260, 260, 32, 32, 10);
  const auto one = run(softmax{}, p, 1);
  REQUIRE(bitwise_equal(run(softmax{}, p, 3), one));  // starts the parent's workers
  REQUIRE(thread_pool::instance().workers() >= 2);
  check_child_ok(in_child([&] {
    bool ok = bitwise_equal(run(softmax{}, p, 3), one) && bitwise_equal(run(softmax{}, p, 3), one);
    std::atomic<std::int64_t> sum{0};
    parallel_for(1000, 4, [&](std::int64_t t) { sum.fetch_add(t); });
    ok = ok && sum.load() == 999 * 1000 / 2;
    // The child runs on workers of its own, not inline.
    return ok && thread_pool::instance().workers() >= 2;
  }));
  // The parent's pool is unaffected.
  CHECK(bitwise_equal(run(softmax{}, p, 3), one));
}

TEST_CASE("fork() while another thread is inside a parallel call", "[fork]") {
  // The parent's pool is busy (its locks held, its workers mid-task) at the fork:
  // the child must not inherit that state.
  const problem p(1, 8, 2, 200, 200, 32, 32, 11);
  const auto one = run(softmax{}, p, 1);
  std::atomic<bool> stop{false};
  std::atomic<int> parent_bad{0};
  std::thread user([&] {
    while (!stop.load()) parent_bad += !bitwise_equal(run(softmax{}, p, 3), one);
  });
  for (int f = 0; f < 5; ++f) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    check_child_ok(in_child([&] { return bitwise_equal(run(softmax{}, p, 3), one); }));
  }
  stop = true;
  user.join();
  CHECK(parent_bad.load() == 0);
}
