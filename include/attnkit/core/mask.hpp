#pragma once
/// \file
/// Analytic mask descriptors. Causal alignment, the local window and per-batch
/// key lengths each allow a contiguous key interval for a query row, so their
/// intersection is one interval [lo, hi): kernels classify whole tiles from it
/// (empty / full / partial) instead of scanning an element mask.
#include <algorithm>
#include <cmath>

#include "checked.hpp"
#include "options.hpp"
#include "tensor_view.hpp"

namespace attnkit {

/// Half-open key interval [lo, hi) visible to one query row.
struct key_range {
  index_t lo = 0;
  index_t hi = 0;
  constexpr index_t size() const noexcept { return hi > lo ? hi - lo : 0; }
  constexpr bool contains(index_t j) const noexcept { return j >= lo && j < hi; }
};

/// Per-(batch) facts the analytic mask needs: the batch's real key length and the
/// offset Δ between query row i and the key it is aligned with (i + Δ).
struct batch_keys {
  index_t lk = 0;     ///< valid keys of this batch (key_lengths[b] or Lk)
  index_t delta = 0;  ///< lk − Lq, or positions.query − positions.key when set
  /// Δ of the causal test: 0 for top-left alignment without positions, else delta.
  index_t causal_delta = 0;
};

/// The one place Δ is computed: every kernel, the decode path and the oracle take it
/// from here (options.positions is validated, so the subtraction cannot overflow).
inline batch_keys keys_of_batch(const options& opt, index_t b, index_t q_len, index_t k_len) noexcept {
  const index_t lk = opt.key_lengths.empty() ? k_len : opt.key_lengths[static_cast<std::size_t>(b)];
  const index_t delta = opt.positions ? opt.positions->query - opt.positions->key : lk - q_len;
  return {lk, delta, opt.causal == causal::top_left && !opt.positions ? 0 : delta};
}

/// Keys allowed to query row i by causal alignment, window and key length. The
/// window sides may be anything up to INT64_MAX (a natural "unbounded"), so the
/// bounds saturate instead of wrapping (core/checked.hpp). An empty range is
/// returned as [lo, lo) with lo inside [0, lk].
inline key_range analytic_range(const options& opt, batch_keys bk, index_t i) noexcept {
  const index_t p = i + bk.delta;  // the query's position (|Δ| validated: no overflow)
  index_t lo = 0, hi = bk.lk;      // key length
  if (opt.causal != causal::none) hi = std::min(hi, i + bk.causal_delta + 1);
  if (opt.window.left >= 0) lo = std::max(lo, detail::sat_sub(p, opt.window.left));
  if (opt.window.right >= 0) hi = std::min(hi, detail::sat_add(detail::sat_add(p, opt.window.right), 1));
  lo = std::min(lo, bk.lk);  // positions can put the window past the last key
  if (hi < lo) hi = lo;
  return {lo, hi};
}

/// True when the call has element-wise logit modifiers that an interval cannot
/// express (boolean mask, bias, ALiBi, soft-capping): kernels then take the
/// element path on every visited tile.
inline bool has_elementwise_terms(const options& opt) noexcept {
  return opt.mask.data != nullptr || opt.bias.data != nullptr || !opt.alibi_slopes.empty() || opt.softcap > 0.0f;
}

/// Broadcast-aware element access for mask / bias views (extent 1 = broadcast).
template <class T>
inline const T* broadcast_row(const tensor_view<const T>& m, index_t b, index_t h, index_t i) noexcept {
  return m.row(m.extent[0] == 1 ? 0 : b, m.extent[1] == 1 ? 0 : h, m.extent[2] == 1 ? 0 : i);
}

}  // namespace attnkit
