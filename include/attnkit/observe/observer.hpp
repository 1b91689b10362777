#pragma once
/// \file
/// The instrumentation interface. Kernels report each finished query row to an
/// observer with the statistics they already hold in their streaming state. The
/// default null_observer has `enabled = false`; every hook is behind
/// `if constexpr`, so without an observer no instrumentation code is generated.
#include <concepts>
#include <type_traits>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"

namespace attnkit {

/// Final state of one query row, natural-log units.
///
/// Softmax family, logits s_j over the n allowed keys, m = max_j s_j:
///   sum = l = Σ_j e^{s_j − m},  tsum = t = Σ_j e^{s_j − m}(s_j − m)
/// so LSE = m + log l and the softmax entropy is H = log l − t/l (no cancellation:
/// both terms are ≥ 0). A sink logit adds `sink_logit_mass` = e^{sink − m} to the
/// denominator only.
/// Unnormalised family (sigmoid), weights w_j ≥ 0:
///   sum = Σ_j w_j (the row mass),  tsum = Σ_j w_j log w_j, max = 0
/// so the entropy of the row-normalised weights is H = log(sum) − tsum/sum.
struct row_state {
  index_t batch = 0, head = 0, row = 0;
  bool normalized = true;  ///< softmax family (true) or unnormalised weights (false)
  double max = 0;          ///< m; −inf for a row with no visible key
  double sum = 0;          ///< l (or the row mass)
  double tsum = 0;         ///< t (or Σ w log w); filled when wants_entropy
  index_t allowed = 0;     ///< n_i, keys the row may see
  double sink_logit_mass = 0;  ///< e^{sink − m} when options.sinks is used, else 0
  /// Logit of key 0 (scaled, masked → −inf; filled when wants_first_logit):
  /// the first-token ("attention sink") probability is e^{first_logit − LSE}.
  double first_logit = 0;
  /// The row's `top_k_count` largest logits, descending (filled when top_k() > 0).
  const float* top_k = nullptr;
  int top_k_count = 0;
};

/// An observer type: `static constexpr bool enabled`. When enabled it also has
///   static constexpr bool wants_entropy, wants_first_logit;
///   int top_k() const;                                     // 0: no top-k tracking
///   void begin(const problem_shape&, const options&);      // before the kernel runs
///   void on_row(const row_state&);                         // concurrently, distinct rows
///   void end();                                            // after the kernel ran
template <class O>
concept observer = requires {
  { std::remove_cvref_t<O>::enabled } -> std::convertible_to<bool>;
};

/// The default observer: records nothing and costs nothing.
struct null_observer {
  static constexpr bool enabled = false;
  static constexpr bool wants_entropy = false;
  static constexpr bool wants_first_logit = false;
  int top_k() const noexcept { return 0; }
  void begin(const problem_shape&, const options&) noexcept {}
  void on_row(const row_state&) const noexcept {}
  void end() noexcept {}
};

}  // namespace attnkit
