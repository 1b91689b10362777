#pragma once
/// \file
/// The end of a row: normalisation, attention sinks, the masked-row policy, LSE
/// and the observer's row report — shared by prefill and decode.
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "../../core/options.hpp"
#include "../../core/validate.hpp"
#include "../../observe/observer.hpp"
#include "../../simd/microkernel.hpp"
#include "units.hpp"

namespace attnkit::detail {

/// Instrumentation extras of one row, in log2 units, handed to finalize_row.
struct row_extras {
  float first = neg_inf;          ///< logit of key 0 (log2 units)
  const float* topk = nullptr;    ///< K largest logits, descending (log2 units)
  int k = 0;
};

/// Converts a row's instrumentation extras to natural-log units (from units of
/// `unit`, see logit_unit) into `buf` (at least ex.k floats).
inline void report_extras(row_state& st, const row_extras& ex, float unit, float* buf) {
  const double to_natural = 1.0 / static_cast<double>(unit);
  st.first_logit = ex.first == neg_inf ? -std::numeric_limits<double>::infinity()
                                       : static_cast<double>(ex.first) * to_natural;
  int n = 0;
  for (; n < ex.k && ex.topk[n] != neg_inf; ++n) buf[n] = static_cast<float>(ex.topk[n] * to_natural);
  st.top_k = n ? buf : nullptr;
  st.top_k_count = n;
}

/// Writes one finished row: normalisation, sinks, masked-row policy, LSE, observer.
/// (m, l, t) is the row's streaming state in the kernel's logit units: softmax's
/// running maximum, denominator and entropy sum (log2 units); otherwise l is the
/// row's weight sum (kept for normalization::sum and for the entropy observer) and
/// t = Σ w log w. `o` is the unnormalised accumulator; `buf` a scratch of ex.k floats.
template <class Arch, class Pol, class Obs>
void finalize_row(const problem_shape& sh, const options& opt, const tensor_view<float>& out, Obs& obs, index_t b,
                  index_t h, index_t i, float m, float l, float t, index_t count, const float* o,
                  const row_extras& ex = {}, float* buf = nullptr) {
  const index_t Dv = sh.value_dim;
  float* dst = out.row(b, h, i);
  const float fill = opt.masked_rows == masked_rows::nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
  [[maybe_unused]] row_state st;
  st.batch = b;
  st.head = h;
  st.row = i;
  st.allowed = count;
  if constexpr (online_softmax<Pol>) {
    // A sink adds 2^(sink − m) to the denominator only.
    const float sink = opt.sinks.empty() ? neg_inf : opt.sinks[static_cast<std::size_t>(h)] * log2e;
    const bool empty = m == neg_inf, has_sink = sink != neg_inf;
    // Without a sink m_all = m, and the exp2(0) = 1 factors are skipped (same bits).
    const float m_all = has_sink ? std::max(m, sink) : m;  // row max including the sink
    const float l_all = has_sink ? (empty ? 0.0f : l * std::exp2(m - m_all)) + std::exp2(sink - m_all)
                                 : (empty ? 0.0f : l);
    if (empty) {
      for (index_t d = 0; d < Dv; ++d) dst[d] = fill;
    } else {
      const float rescale = has_sink ? std::exp2(m - m_all) / l_all : 1.0f / l_all;
      simd::scale_copy<Arch>(o, rescale, dst, Dv);
    }
    if (opt.lse) {
      const float lse = m_all == neg_inf ? neg_inf : (m_all + std::log2(l_all)) * ln2;
      opt.lse[(b * sh.q_heads + h) * sh.q_len + i] = lse;
    }
    if constexpr (Obs::enabled) {
      st.max = static_cast<double>(m) * std::numbers::ln2;
      st.sum = l;
      st.tsum = static_cast<double>(t) * std::numbers::ln2;
      st.sink_logit_mass = (sink == neg_inf || empty) ? 0.0 : std::exp2(static_cast<double>(sink) - m);
    }
  } else {
    if constexpr (keeps_row_sum<Pol>) {
      // ℓ1-normalised rows: a row without weight (no visible key, or weights that
      // are all 0) has nothing to divide and follows masked_rows; NaN stays NaN.
      if (l == 0.0f)
        for (index_t d = 0; d < Dv; ++d) dst[d] = fill;
      else
        simd::scale_copy<Arch>(o, 1.0f / l, dst, Dv);
    } else {
      std::memcpy(dst, o, static_cast<std::size_t>(Dv) * sizeof(float));
    }
    if constexpr (Obs::enabled) {  // l = row mass, t = Σ w log w (natural log), max unused
      st.normalized = false;
      st.max = 0.0;
      st.sum = l;
      st.tsum = t;
    }
  }
  if constexpr (Obs::enabled) {
    report_extras(st, ex, logit_unit<Pol>, buf);
    obs.on_row(st);
  } else {
    (void)t, (void)obs, (void)ex, (void)buf;
  }
}

}  // namespace attnkit::detail
