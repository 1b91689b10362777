#pragma once
/// \file
/// Everything about an attention call that is not the variant itself: scale,
/// masks, alignment, threads, optional outputs. Aggregate with defaults, so
/// `attnkit::options opt; opt.causal = attnkit::causal::bottom_right;` reads well.
#include <cstdint>
#include <optional>
#include <span>

#include "tensor_view.hpp"

namespace attnkit {

/// Causal alignment; the two differ when Lq != Lk (Δ = Lk − Lq).
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

/// What a query row with no visible key produces.
enum class masked_rows : std::uint8_t {
  zero,  ///< output 0, LSE −inf (FlashAttention, PyTorch >= 2.5). Default.
  nan,   ///< output NaN, LSE −inf (plain softmax of an all −inf row).
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
  /// Worker threads; 0 = ATTNKIT_NUM_THREADS or the hardware concurrency.
  int num_threads = 0;
  /// Optional output: log-sum-exp of each row's logits, contiguous [B, Hq, Lq] floats
  /// (natural log). Softmax family only. nullptr: not written.
  float* lse = nullptr;
};

}  // namespace attnkit
