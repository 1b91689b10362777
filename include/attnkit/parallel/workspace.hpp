#pragma once
/// \file
/// Scratch memory of attention calls: packed K/V, per-worker buffers, cached
/// token orders. It belongs to the call, not to the thread, so that calls nest (an
/// observer may call attention()) and run from static destructors; it is kept
/// between calls, so a steady stream of calls neither allocates nor page-faults.
///
/// By default every call leases a workspace from a process-wide pool (a lock and
/// a pointer swap per call) and returns it when done. A caller that wants to own
/// the memory passes its own through options.workspace:
///
/// \code
///   attnkit::workspace ws;              // one per thread that issues calls
///   attnkit::options opt;
///   opt.workspace = &ws;
///   attnkit::attention(attnkit::softmax{}, q, k, v, out, opt);
///   std::size_t held = ws.bytes();      // memory kept for the next call
/// \endcode
///
/// A workspace serves one call at a time: a second call that finds it in use
/// throws invalid_argument_error (argument "options.workspace").
#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "../core/error.hpp"

namespace attnkit {

class workspace;

namespace detail {

/// A distinct address per type, across translation units (an inline variable).
template <class T>
inline constexpr char scratch_key = 0;

/// Objects of distinct types, created on first use and kept: the scratch of one
/// worker (or of the call as a whole). Types must be default-constructible; each
/// may report the memory it holds through a `bytes()` member.
class scratch_set {
 public:
  template <class T>
  T& get() {
    for (auto& e : entries_)
      if (e.key == &scratch_key<T>) return *static_cast<T*>(e.object.get());
    entries_.push_back(entry{&scratch_key<T>, owned(new T(), [](void* p) { delete static_cast<T*>(p); }),
                             [](const void* p) -> std::size_t {
                               if constexpr (requires(const T& t) { t.bytes(); })
                                 return static_cast<const T*>(p)->bytes();
                               else
                                 return sizeof(T);
                             }});
    return *static_cast<T*>(entries_.back().object.get());
  }
  /// The object of type T if one was created, else nullptr.
  template <class T>
  const T* find() const noexcept {
    for (const auto& e : entries_)
      if (e.key == &scratch_key<T>) return static_cast<const T*>(e.object.get());
    return nullptr;
  }
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& e : entries_) n += e.size(e.object.get());
    return n;
  }

 private:
  using owned = std::unique_ptr<void, void (*)(void*)>;
  struct entry {
    const void* key;
    owned object;
    std::size_t (*size)(const void*);
  };
  std::vector<entry> entries_;
};

}  // namespace detail

/// Scratch memory for attention calls (see the file comment). Not copyable.
class workspace {
 public:
  workspace() = default;
  workspace(const workspace&) = delete;
  workspace& operator=(const workspace&) = delete;

  /// Memory currently held (approximate: the sizes of the buffers it owns).
  std::size_t bytes() const {
    std::size_t n = shared_.bytes();
    for (const auto& s : slots_) n += s->bytes();
    return n;
  }
  /// Frees everything held (not while a call uses it).
  void release() {
    shared_ = detail::scratch_set{};
    slots_.clear();
  }

  // ---- used by the kernels (attnkit::detail); not part of the user contract ----
  /// Call-wide objects (packed K/V, decode partial states, cached orders).
  detail::scratch_set& shared() noexcept { return shared_; }
  /// The scratch of worker `slot` (0 ≤ slot < the count given to reserve_slots).
  detail::scratch_set& slot(int slot) noexcept { return *slots_[static_cast<std::size_t>(slot)]; }
  /// Makes slots 0 … n−1 exist; called by the calling thread before workers run.
  void reserve_slots(int n) {
    while (static_cast<int>(slots_.size()) < n) slots_.push_back(std::make_unique<detail::scratch_set>());
  }

 private:
  friend class workspace_lease;
  detail::scratch_set shared_;
  std::vector<std::unique_ptr<detail::scratch_set>> slots_;
  std::atomic<bool> in_use_{false};
};

namespace detail {

/// The process-wide pool of workspaces. Never destroyed (it is reachable from a
/// static pointer), so calls from static destructors and atexit handlers find it;
/// idle workspaces beyond `max_idle` are freed rather than kept.
class workspace_pool {
 public:
  static workspace_pool& instance() {
    static workspace_pool* pool = new workspace_pool;  // intentionally never deleted
    return *pool;
  }
  std::unique_ptr<workspace> take() {
    {
      std::lock_guard<std::mutex> lk(m_);
      if (!idle_.empty()) {
        auto ws = std::move(idle_.back());
        idle_.pop_back();
        return ws;
      }
    }
    return std::make_unique<workspace>();
  }
  void give_back(std::unique_ptr<workspace> ws) {
    std::lock_guard<std::mutex> lk(m_);
    if (idle_.size() < max_idle) idle_.push_back(std::move(ws));
  }
  /// Frees every idle workspace (e.g. after a burst of large calls).
  void trim() {
    std::vector<std::unique_ptr<workspace>> drop;
    std::lock_guard<std::mutex> lk(m_);
    drop.swap(idle_);
  }

 private:
  static constexpr std::size_t max_idle = 64;
  std::mutex m_;
  std::vector<std::unique_ptr<workspace>> idle_;
};

}  // namespace detail

/// The workspace of one call: the caller's (options.workspace) or one leased from
/// the pool, returned when the lease ends.
class workspace_lease {
 public:
  explicit workspace_lease(workspace* user) {
    if (user == nullptr) {
      owned_ = detail::workspace_pool::instance().take();
      ws_ = owned_.get();
    } else {
      ws_ = user;
    }
    bool idle = false;
    if (!ws_->in_use_.compare_exchange_strong(idle, true, std::memory_order_acquire))
      detail::fail("options.workspace", "", "a workspace no other call is using", "one in use by another call");
  }
  workspace_lease(const workspace_lease&) = delete;
  workspace_lease& operator=(const workspace_lease&) = delete;
  ~workspace_lease() {
    ws_->in_use_.store(false, std::memory_order_release);
    if (owned_) detail::workspace_pool::instance().give_back(std::move(owned_));
  }
  workspace& get() const noexcept { return *ws_; }

 private:
  workspace* ws_ = nullptr;
  std::unique_ptr<workspace> owned_;
};

/// Frees the idle workspaces of the process-wide pool (memory held for later calls).
inline void trim_workspaces() { detail::workspace_pool::instance().trim(); }

}  // namespace attnkit
