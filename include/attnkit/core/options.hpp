#pragma once
/// \file
/// Everything about an attention call that is not the variant itself: scale,
/// masks, alignment, threads, optional outputs. Aggregate with defaults, so
/// `attnkit::options opt; opt.causal = attnkit::causal::bottom_right;` reads well.
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>

#include "tensor_view.hpp"

namespace attnkit {

class workspace;

/// Causal alignment; the two differ when Lq != Lk (Δ = Lk − Lq). With
/// options.positions set both mean "key position <= query position".
enum class causal : std::uint8_t {
  none,          ///< every key visible
  top_left,      ///< key j visible to query i iff j <= i (PyTorch is_causal)
  bottom_right,  ///< key j visible iff j <= i + Δ (FlashAttention, KV-cache decoding)
};

/// Local window in the FlashAttention convention: key j visible to query i iff
/// i + Δ − left <= j <= i + Δ + right, Δ = Lk − Lq. −1 means unbounded.
struct window {
  index_t left = -1;
  index_t right = -1;
  constexpr bool active() const noexcept { return left >= 0 || right >= 0; }
};

/// Global positions of a call's first query row and first key (a block of a longer
/// sequence: chunked prefill, context-parallel ring attention). Query row i sits at
/// position `query + i`, key j at `key + j`. When set, Δ = query − key replaces the
/// alignment's Δ everywhere: either causal alignment allows key j iff
/// key + j <= query + i, the window is taken around the query position and ALiBi
/// uses the position distance |(query + i) − (key + j)|. |Δ| must not exceed
/// max_position_delta. Softmax and sigmoid only (sparse, permutation and
/// kernelised policies reject it).
struct positions {
  index_t query = 0;
  index_t key = 0;
};

/// Largest |positions.query − positions.key| accepted (2^61): i + Δ ± a window then
/// stays far inside int64 for any tensor extent.
inline constexpr index_t max_position_delta = index_t{1} << 61;

/// What a query row with no visible key produces.
enum class masked_rows : std::uint8_t {
  zero,  ///< output 0, LSE −inf (FlashAttention, PyTorch >= 2.5). Default.
  nan,   ///< output NaN, LSE −inf (plain softmax of an all −inf row).
};

/// Dropout on the attention weights (training): after normalisation and before
/// P·V, each weight p_ij is kept with probability 1 − p and scaled by 1/(1 − p)
/// (PyTorch / FlashAttention semantics). The keep decision of element (b, h, i, j)
/// is a pure function of (seed, offset, b, h, i, j) through Philox-4x32-10
/// (core/dropout.hpp): no mask is stored, the forward and the backward draw the same
/// mask, and any thread count gives the same one. Advance `offset` (or change `seed`)
/// between calls that must drop differently. p = 0: off. Quadratic-family policies
/// only (kernelised ones have no weight matrix and reject it).
struct dropout {
  float p = 0.0f;  ///< drop probability, in [0, 1)
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  constexpr bool active() const noexcept { return p != 0.0f; }
};

/// Options of one attention call. All fields have safe defaults.
struct options {
  /// Logit scale τ; unset = 1/sqrt(D) for softmax/sigmoid (linear-family policies
  /// document their own default).
  std::optional<double> scale{};
  attnkit::causal causal = attnkit::causal::none;
  attnkit::window window{};
  /// Mask, nonzero = attend (a bool or std::uint8_t view); [B|1, Hq|1, Lq|1, Lk];
  /// data == nullptr: none.
  mask_view mask{};
  /// Additive bias added to the scaled logits; [B|1, Hq|1, Lq|1, Lk]; nullptr: none.
  bias_view bias{};
  /// Per-batch valid key count (padding): keys j >= key_lengths[b] are masked, and
  /// bottom-right alignment uses key_lengths[b] as Lk for that batch. Empty: none.
  std::span<const std::int64_t> key_lengths{};
  /// ALiBi: per query head slope m_h; adds −m_h·|i + Δ − j| to the logit. Empty: none.
  std::span<const float> alibi_slopes{};
  /// Attention sinks (gpt-oss): per query head extra logit that takes probability
  /// mass but carries no value. Softmax only. Empty: none.
  std::span<const float> sinks{};
  /// Logit soft-capping c·tanh(s/c) applied to τ·q·k before bias/ALiBi; 0 = off.
  float softcap = 0.0f;
  attnkit::masked_rows masked_rows = attnkit::masked_rows::zero;
  /// Global positions of this call's first query row and key; unset: the alignment's
  /// Δ (see attnkit::positions).
  std::optional<attnkit::positions> positions{};
  /// Dropout on the attention weights (see attnkit::dropout); p = 0: none.
  attnkit::dropout dropout{};
  /// Worker threads; 0 = ATTNKIT_NUM_THREADS or the hardware concurrency.
  int num_threads = 0;
  /// Optional output: log-sum-exp of each row's logits, contiguous [B, Hq, Lq] floats
  /// (natural log). Softmax family only. nullptr: not written.
  float* lse = nullptr;
  /// Scratch memory for the call (parallel/workspace.hpp); nullptr: one leased from
  /// the library's pool. A workspace serves one call at a time.
  attnkit::workspace* workspace = nullptr;
};

/// The logit scale τ of a call: options.scale, else 1/sqrt(D).
inline double resolved_scale(const options& opt, index_t head_dim) noexcept {
  return opt.scale ? *opt.scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace attnkit
