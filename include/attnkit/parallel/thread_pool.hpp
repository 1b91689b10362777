#pragma once
/// \file
/// A persistent worker pool. Work is split into independent tasks whose results
/// do not depend on which thread runs them, so outputs are bitwise identical for
/// any thread count. Concurrent calls from several user threads are safe: a call
/// that finds the pool busy runs its tasks on the calling thread.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace attnkit {

/// Threads a call uses: `requested` if > 0, else ATTNKIT_NUM_THREADS if set and
/// positive, else std::thread::hardware_concurrency().
inline int resolve_num_threads(int requested) {
  if (requested > 0) return requested;
  if (const char* env = std::getenv("ATTNKIT_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && n > 0) return static_cast<int>(n > 1024 ? 1024 : n);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

class thread_pool {
 public:
  /// The process-wide pool. Never destroyed (reachable from a static pointer, so
  /// leak checkers stay quiet): calls from static destructors and atexit handlers
  /// still find it; its idle workers end with the process.
  static thread_pool& instance() {
    static thread_pool* pool = new thread_pool;
    return *pool;
  }

  /// Runs f(task, slot) for task in [0, n_tasks) on up to `threads` threads (the
  /// caller included) and returns when all are done. Tasks are claimed
  /// dynamically; `slot` ∈ [0, threads) names the thread running the task (the
  /// caller is 0), so a task may use per-slot scratch without locks.
  template <class F>
  void run(std::int64_t n_tasks, int threads, F&& f) {
    if (n_tasks <= 0) return;
    if (threads > n_tasks) threads = static_cast<int>(n_tasks);
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (threads <= 1 || !busy.owns_lock()) {
      for (std::int64_t t = 0; t < n_tasks; ++t) f(t, 0);
      return;
    }
    ensure_workers(threads - 1);
    std::function<void(std::int64_t, int)> job = [&f](std::int64_t t, int slot) { f(t, slot); };
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &job;
      n_tasks_ = n_tasks;
      next_.store(0);
      done_.store(0);
      active_workers_ = threads - 1;
      ++generation_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return done_.load() == n_tasks_ && finished_workers_ == active_workers_; });
    finished_workers_ = 0;
    job_ = nullptr;
  }

  ~thread_pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  thread_pool() = default;

  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size());
      std::uint64_t gen;
      {
        std::lock_guard<std::mutex> lk(m_);
        gen = generation_;
      }
      // The worker starts from the generation current *now*, so a job published
      // before the thread gets scheduled is not missed.
      workers_.emplace_back([this, id, gen] { worker_loop(id, gen); });
    }
  }

  void work(int slot) {
    for (;;) {
      std::int64_t t = next_.fetch_add(1);
      if (t >= n_tasks_) break;
      (*job_)(t, slot);
      done_.fetch_add(1);
    }
  }

  void worker_loop(int id, std::uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
        if (id >= active_workers_) continue;
      }
      work(id + 1);
      {
        std::lock_guard<std::mutex> lk(m_);
        ++finished_workers_;
      }
      done_cv_.notify_all();
    }
  }

  std::mutex busy_;  // one parallel job at a time
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  std::function<void(std::int64_t, int)>* job_ = nullptr;
  std::int64_t n_tasks_ = 0;
  std::atomic<std::int64_t> next_{0}, done_{0};
  int active_workers_ = 0;
  int finished_workers_ = 0;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
};

/// Runs f(task) — or f(task, slot), slot ∈ [0, threads) naming the thread (see
/// thread_pool::run) — for task in [0, n_tasks) on `threads` threads of the pool.
template <class F>
void parallel_for(std::int64_t n_tasks, int threads, F&& f) {
  if constexpr (std::is_invocable_v<F&, std::int64_t, int>)
    thread_pool::instance().run(n_tasks, threads, f);
  else
    thread_pool::instance().run(n_tasks, threads, [&f](std::int64_t t, int) { f(t); });
}

}  // namespace attnkit
