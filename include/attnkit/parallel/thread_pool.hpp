#pragma once
/// \file
/// A persistent worker pool. Work is split into independent tasks whose results
/// do not depend on which thread runs them, so outputs are bitwise identical for
/// any thread count.
///
/// Life cycle (docs/guarantees.md):
/// - Concurrent calls from several user threads are safe: a call that finds the
///   pool busy runs its tasks on the calling thread. So does a nested call (one made
///   from inside a task, e.g. by an observer).
/// - The pool is created on first use and never destroyed: calls from static
///   destructors and atexit handlers still find it (its workers sleep until the
///   process ends).
/// - fork(): the child process cannot use the parent's workers (they do not exist
///   there) and must not touch their locks, so a pthread_atfork handler sets the
///   parent's pool aside in the child; the child's first parallel call starts a new
///   pool. (fork() from inside an attention call, i.e. from an observer, is not
///   supported: that call would wait for workers the child does not have.)
/// - At most max_threads() threads per call (parallel/num_threads.hpp), so the pool
///   never holds more than max_threads() − 1 OS threads.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>

#include "num_threads.hpp"

namespace attnkit {

class thread_pool {
 public:
  /// The process's pool (a new one in a child process after fork()).
  static thread_pool& instance() {
    thread_pool* p = current().load(std::memory_order_acquire);
    if (p != nullptr) [[likely]]
      return *p;
    static const bool fork_handler = pthread_atfork(nullptr, nullptr, &forget_after_fork) == 0;
    (void)fork_handler;
    auto* fresh = new thread_pool();
    if (current().compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first; this one never started a worker
    return *p;
  }

  /// Runs f(task, slot) for task in [0, n_tasks) on up to `threads` threads (the
  /// caller included, at most max_threads()) and returns when all are done. Tasks
  /// are claimed dynamically; `slot` ∈ [0, threads) names the thread running the
  /// task (the caller is 0), so a task may use per-slot scratch without locks.
  template <class F>
  void run(std::int64_t n_tasks, int threads, F&& f) {
    if (n_tasks <= 0) return;
    threads = std::min(threads, max_threads());
    if (threads > n_tasks) threads = static_cast<int>(n_tasks);
    const auto inline_run = [&] {
      for (std::int64_t t = 0; t < n_tasks; ++t) f(t, 0);
    };
    // A task that calls back into the pool runs inline: the pool is busy with the
    // task's own job (and std::mutex may not be locked twice by one thread).
    if (threads <= 1 || in_task()) return inline_run();
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return inline_run();
    ensure_workers(threads - 1);
    std::function<void(std::int64_t, int)> job = [&f](std::int64_t t, int slot) { f(t, slot); };
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &job;
      n_tasks_ = n_tasks;
      next_.store(0);
      active_workers_ = threads - 1;
      ++generation_;
    }
    cv_.notify_all();
    // Every task is claimed by the caller or by an active worker; when the caller
    // runs out of tasks and every active worker has reported, all are done. A task
    // that throws (on any thread) stops the others from starting; the first
    // exception is rethrown here once no thread uses `job` any more.
    in_task() = true;
    work(0);
    in_task() = false;
    std::exception_ptr error;
    {
      std::unique_lock<std::mutex> lk(m_);
      done_cv_.wait(lk, [&] { return finished_workers_ == active_workers_; });
      finished_workers_ = 0;
      job_ = nullptr;
      std::swap(error, error_);
    }
    if (error) std::rethrow_exception(error);
  }

  /// Worker threads the pool holds now (never more than max_threads() − 1).
  int workers() const {
    std::lock_guard<std::mutex> lk(m_);
    return static_cast<int>(workers_.size());
  }

 private:
  thread_pool() = default;

  static std::atomic<thread_pool*>& current() noexcept {
    static std::atomic<thread_pool*> pool{nullptr};  // trivially destructible: usable at exit
    return pool;
  }
  /// Pools set aside by forget_after_fork: still reachable, never used again.
  static thread_pool*& set_aside() noexcept {
    static thread_pool* head = nullptr;
    return head;
  }
  /// True on pool workers and on a caller while it runs tasks of its own job.
  static bool& in_task() noexcept {
    thread_local bool flag = false;
    return flag;
  }

  /// pthread_atfork child handler: the child has none of the parent's workers, and
  /// the pool's locks may be held by threads that no longer exist, so the pool is
  /// left untouched (kept reachable, so leak checkers stay quiet) and the next
  /// parallel call creates a fresh one.
  static void forget_after_fork() noexcept {
    thread_pool* old = current().exchange(nullptr, std::memory_order_acq_rel);
    if (old == nullptr) return;
    old->next_set_aside_ = set_aside();
    set_aside() = old;
  }

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
      std::thread t([this, id, gen] { worker_loop(id, gen); });
      std::lock_guard<std::mutex> lk(m_);
      workers_.push_back(std::move(t));
    }
  }

  void work(int slot) noexcept {
    for (;;) {
      const std::int64_t t = next_.fetch_add(1);
      if (t >= n_tasks_) break;
      try {
        (*job_)(t, slot);
      } catch (...) {
        next_.store(n_tasks_);  // no new task starts
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void worker_loop(int id, std::uint64_t seen) {
    in_task() = true;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
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
  mutable std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  std::function<void(std::int64_t, int)>* job_ = nullptr;
  std::int64_t n_tasks_ = 0;
  std::atomic<std::int64_t> next_{0};
  int active_workers_ = 0;
  int finished_workers_ = 0;
  std::uint64_t generation_ = 0;
  std::exception_ptr error_;  ///< the first exception a task of the current job threw
  thread_pool* next_set_aside_ = nullptr;
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
