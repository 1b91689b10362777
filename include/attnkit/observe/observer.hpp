#pragma once
/// \file
/// The instrumentation interface. Kernels call an observer at the end of each
/// query row with that row's streaming state; the default null_observer has
/// `enabled = false`, and every hook is guarded by `if constexpr`, so without an
/// observer the instrumentation code is not generated at all.
#include <concepts>
#include <type_traits>

#include "../core/tensor_view.hpp"

namespace attnkit {

/// Final streaming state of one softmax-family query row, in natural-log units.
/// With logits s_j over the n allowed keys and m = max_j s_j:
///   l = Σ_j e^{s_j − m},  t = Σ_j e^{s_j − m} (s_j − m)
/// so LSE = m + log l and the entropy of the row's softmax is H = log l − t/l.
struct row_state {
  index_t batch = 0, head = 0, row = 0;
  double max = 0;       ///< m (−inf for a row with no visible key)
  double sum = 0;       ///< l
  double tsum = 0;      ///< t (only filled when the observer asks for entropy)
  index_t allowed = 0;  ///< n_i, the number of keys the row may see
  double sink_logit_mass = 0;  ///< e^{sink − m} when options.sinks is used, else 0
};

/// An observer: a type with `static constexpr bool enabled` and, when enabled,
/// `wants_entropy` and `on_row(const row_state&)` (called concurrently from worker
/// threads for distinct rows; implementations write to per-row slots).
template <class O>
concept observer = requires {
  { std::remove_cvref_t<O>::enabled } -> std::convertible_to<bool>;
};

/// The default observer: records nothing and costs nothing.
struct null_observer {
  static constexpr bool enabled = false;
  static constexpr bool wants_entropy = false;
  void on_row(const row_state&) const noexcept {}
};

}  // namespace attnkit
