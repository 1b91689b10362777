#pragma once
/// \file
/// Sparse attention: a key-selection pattern wrapped around an inner quadratic
/// policy (softmax by default, or sigmoid). The pattern's allowed set is
/// intersected with every mask of the options (causal, window, bool mask, key
/// lengths); the inner policy then runs over the surviving keys only (softmax
/// renormalises over them).
///
/// Conventions shared by the static patterns: `allowed(i, j, Lq, Lk)` gets the query
/// index i, the key index j, the call's Lq and the batch's valid key length Lk
/// (key_lengths[b] or k.seq). Unless stated otherwise a pattern works on the query
/// *position* p = i + Lk − Lq (bottom-right alignment, the same Δ as options.window),
/// so for self-attention (Lq == Lk) p = i and for decoding (Lq = 1) the query sits
/// after the cache. Queries whose p falls outside [0, Lk) see nothing from
/// position-based patterns that need a grid (neighbourhoods).
#include <algorithm>
#include <concepts>
#include <string>

#include "../core/checked.hpp"
#include "../core/error.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "family.hpp"
#include "softmax.hpp"

namespace attnkit {
namespace pattern {

namespace detail {
/// 1-D neighbourhood test on a line of L positions (NATTEN semantics): positions are
/// split by residue p mod dilation into groups; within its group of Lg positions a
/// query at group index g sees the `kernel` consecutive group members starting at
/// clamp(g − kernel/2, 0, Lg − kernel) (the window shifts at borders so that every
/// query sees exactly `kernel` keys; all Lg of them if Lg < kernel).
constexpr bool neighbor_1d(index_t p, index_t j, index_t L, index_t kernel, index_t dilation) noexcept {
  if (p < 0 || p >= L || j < 0 || j >= L || kernel <= 0 || dilation <= 0) return false;
  if ((p - j) % dilation != 0) return false;
  const index_t r = p % dilation;
  const index_t Lg = attnkit::detail::ceil_div(L - r, dilation);  // no L − r + dilation − 1: dilation may be huge
  const index_t g = p / dilation, jg = j / dilation;
  if (Lg <= kernel) return true;
  const index_t start = std::clamp<index_t>(g - kernel / 2, 0, Lg - kernel);
  return jg >= start && jg < start + kernel;
}
}  // namespace detail

/// Local window around p: p − left ≤ j ≤ p + right (FlashAttention convention: the
/// window holds left + right + 1 keys); −1 = unbounded on that side. Default right
/// = 0: a causal local window of left + 1 keys.
struct sliding_window {
  index_t left = -1;
  index_t right = 0;
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    const index_t p = i + Lk - Lq;  // the sides may be up to INT64_MAX: bounds saturate
    return (left < 0 || j >= attnkit::detail::sat_sub(p, left)) && (right < 0 || j <= attnkit::detail::sat_add(p, right));
  }
};

/// Dilated window (Longformer): keys at distance 0, d, 2d, …, window·d on each side
/// of p (d = dilation): (p − j) mod d == 0 and |p − j| ≤ window·d. Interior queries
/// see 2·window + 1 keys; combine with options.causal for the one-sided form
/// (window + 1 keys).
struct dilated_window {
  index_t window = 0;
  index_t dilation = 1;
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    const index_t p = i + Lk - Lq, dist = p > j ? p - j : j - p;
    return dilation > 0 && dist % dilation == 0 && dist <= attnkit::detail::sat_mul(window, dilation);
  }
};

/// StreamingLLM: the first `sinks` keys plus the `window` most recent keys up to and
/// including p. Inherently causal: j ≤ p and (j < sinks or p − j < window).
struct sink_window {
  index_t sinks = 4;
  index_t window = 256;
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    const index_t p = i + Lk - Lq;
    return j <= p && (j < sinks || p - j < window);
  }
};

/// Explicit block layout: row-major bool [num_q_blocks, num_k_blocks], shared by all
/// batches and heads, true = query block attends key block. Uses the query *index* i
/// (not p): query i is in block i / block_q, key j in block j / block_k; the layout
/// must cover ceil(Lq/block_q) × ceil(k.seq/block_k) blocks and outlive the call.
struct block_sparse {
  const bool* layout = nullptr;
  index_t block_q = 64;
  index_t block_k = 64;
  index_t num_q_blocks = 0;
  index_t num_k_blocks = 0;
  constexpr bool allowed(index_t i, index_t j, index_t, index_t) const noexcept {
    const index_t qb = i / block_q, kb = j / block_k;
    return qb < num_q_blocks && kb < num_k_blocks && layout[qb * num_k_blocks + kb];
  }
};

/// 1-D neighbourhood attention (NATTEN) over the key sequence: query position p
/// sees exactly `kernel` keys with stride `dilation` (see detail::neighbor_1d; the
/// window shifts at the borders). For odd kernels the centred window has kernel/2
/// keys on each side; for even kernels kernel/2 before and kernel/2 − 1 after.
/// options.causal intersects (then border queries see fewer keys).
struct neighborhood_1d {
  index_t kernel = 7;
  index_t dilation = 1;
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    return detail::neighbor_1d(i + Lk - Lq, j, Lk, kernel, dilation);
  }
};

/// 2-D neighbourhood attention over a row-major height × width token grid (Lk must
/// equal height·width): token p = y·width + x sees the kernel_h × kernel_w keys
/// whose row is in the 1-D neighbourhood of y (along height) and whose column is in
/// the 1-D neighbourhood of x (along width), both with `dilation`.
struct neighborhood_2d {
  index_t height = 0;
  index_t width = 0;
  index_t kernel_h = 7;
  index_t kernel_w = 7;
  index_t dilation = 1;
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    const index_t p = i + Lk - Lq;
    index_t cells = 0;
    if (width <= 0 || height <= 0 || !attnkit::detail::checked_mul(height, width, cells)) return false;
    if (p < 0 || p >= cells || j < 0 || j >= cells) return false;
    return detail::neighbor_1d(p / width, j / width, height, kernel_h, dilation) &&
           detail::neighbor_1d(p % width, j % width, width, kernel_w, dilation);
  }
};

/// PowerAttention (Chen et al. 2025), inherently causal: with query block
/// qb = p / block and key block kb = j / block, d = qb − kb, key j is visible iff
/// j ≤ p and (d ≤ local or kb < sinks or d is a power of two). d = 0 (the diagonal
/// block) is always visible.
struct power_attention {
  index_t block = 64;
  index_t sinks = 1;
  index_t local = 1;
  constexpr bool allowed(index_t i, index_t j, index_t Lq, index_t Lk) const noexcept {
    const index_t p = i + Lk - Lq;
    if (j > p || j < 0) return false;
    const index_t d = p / block - j / block, kb = j / block;
    return d <= local || kb < sinks || (d & (d - 1)) == 0;
  }
};

/// Data-dependent: each query keeps the k keys with the largest final logits
/// (after softcap, bias and ALiBi) among the keys the options allow; ties go to the
/// smaller key index. Rows with ≤ k allowed keys keep all of them.
struct top_k {
  static constexpr bool data_dependent = true;
  index_t k = 64;
};

/// Data-dependent FlexPrefill-style block selection. Queries are grouped in blocks
/// of `block` rows (by query index), keys in blocks of `block` keys. For each query
/// block QB: q̄ = mean of its query vectors; for every candidate key block KB (one
/// that holds at least one key allowed by the options to some row of QB), k̄ = mean
/// of its valid keys (j < Lk); estimated logits ŝ = τ·q̄·k̄ and estimated mass
/// p̂ = softmax over candidates. Candidates are taken in descending p̂ (ties: smaller
/// block first) until the cumulative p̂ ≥ gamma, and at least min(min_budget,
/// #candidates) blocks. Every row of QB then sees the keys of the selected blocks
/// (intersected with the options' masks).
struct flex_prefill {
  static constexpr bool data_dependent = true;
  double gamma = 0.9;       ///< in [0, 1]
  index_t block = 64;       ///< > 0
  index_t min_budget = 1;  ///< minimum number of key blocks kept per query block (>= 0)
};

/// Validates a pattern's own arguments against the call's shape and options; the
/// kernel and the oracle both call it, so they accept exactly the same calls (the
/// fuzz harness checks this). Throws invalid_argument_error naming the field. Every
/// size may be as large as INT64_MAX (a natural "unbounded"); only negative,
/// non-finite or inconsistent values are refused.
template <class P>
void check_arguments(const P& p, const problem_shape& sh, const options& opt) {
  using attnkit::detail::fail;
  using attnkit::detail::sat_mul;
  if constexpr (std::is_same_v<P, pattern::sliding_window>) {
    if (p.left < -1) fail("pattern.left", "", ">= -1 (-1 = unbounded)", p.left);
    if (p.right < -1) fail("pattern.right", "", ">= -1 (-1 = unbounded)", p.right);
  } else if constexpr (std::is_same_v<P, pattern::dilated_window>) {
    if (p.window < 0) fail("pattern.window", "", ">= 0", p.window);
    if (p.dilation <= 0) fail("pattern.dilation", "", "> 0", p.dilation);
  } else if constexpr (std::is_same_v<P, pattern::sink_window>) {
    if (p.sinks < 0) fail("pattern.sinks", "", ">= 0", p.sinks);
    if (p.window < 0) fail("pattern.window", "", ">= 0", p.window);
  } else if constexpr (std::is_same_v<P, pattern::block_sparse>) {
    if (p.block_q <= 0) fail("pattern.block_q", "", "> 0", p.block_q);
    if (p.block_k <= 0) fail("pattern.block_k", "", "> 0", p.block_k);
    if (p.layout == nullptr) fail("pattern.layout", "", "a non-null pointer", "nullptr");
    if (p.num_q_blocks < 0) fail("pattern.num_q_blocks", "", ">= 0", p.num_q_blocks);
    if (p.num_k_blocks < 0) fail("pattern.num_k_blocks", "", ">= 0", p.num_k_blocks);
    index_t cells = 0;  // the layout's size: its indices must not wrap
    if (!attnkit::detail::checked_mul(p.num_q_blocks, p.num_k_blocks, cells))
      fail("pattern.num_k_blocks", "", "num_q_blocks × num_k_blocks within 64 bits", p.num_k_blocks);
    if (sat_mul(p.num_q_blocks, p.block_q) < sh.q_len)
      fail("pattern.num_q_blocks", "", ">= ceil(Lq / block_q)", p.num_q_blocks);
    if (sat_mul(p.num_k_blocks, p.block_k) < sh.k_len)
      fail("pattern.num_k_blocks", "", ">= ceil(Lk / block_k)", p.num_k_blocks);
  } else if constexpr (std::is_same_v<P, pattern::neighborhood_1d>) {
    if (p.dilation <= 0) fail("pattern.dilation", "", "> 0", p.dilation);
    if (p.kernel <= 0) fail("pattern.kernel", "", "> 0", p.kernel);
  } else if constexpr (std::is_same_v<P, pattern::neighborhood_2d>) {
    if (p.height < 0) fail("pattern.height", "", ">= 0", p.height);
    if (p.width < 0) fail("pattern.width", "", ">= 0", p.width);
    index_t cells = 0;  // checked: {7, 7905747460161236412} would wrap to 36
    if (!attnkit::detail::checked_mul(p.height, p.width, cells))
      fail("pattern", "height*width", std::to_string(sh.k_len) + " (= k.seq)",
           std::to_string(p.height) + " × " + std::to_string(p.width) + " (past 64 bits)");
    if (cells != sh.k_len) fail("pattern", "height*width", std::to_string(sh.k_len) + " (= k.seq)", cells);
    if (p.dilation <= 0) fail("pattern.dilation", "", "> 0", p.dilation);
    if (p.kernel_h <= 0) fail("pattern.kernel_h", "", "> 0", p.kernel_h);
    if (p.kernel_w <= 0) fail("pattern.kernel_w", "", "> 0", p.kernel_w);
  } else if constexpr (std::is_same_v<P, pattern::power_attention>) {
    if (p.block <= 0) fail("pattern.block", "", "> 0", p.block);
    if (p.sinks < 0) fail("pattern.sinks", "", ">= 0", p.sinks);
    if (p.local < 0) fail("pattern.local", "", ">= 0", p.local);
  } else if constexpr (std::is_same_v<P, pattern::flex_prefill>) {
    if (!(p.gamma >= 0.0 && p.gamma <= 1.0)) fail("pattern.gamma", "", "in [0, 1] (a cumulative probability)", p.gamma);
    if (p.block <= 0) fail("pattern.block", "", "> 0", p.block);
    if (p.min_budget < 0) fail("pattern.min_budget", "", ">= 0", p.min_budget);
    // Candidate blocks come from the analytic masks; element masks would need an N² scan.
    if (opt.mask.data) fail("options.mask", "", "none with flex_prefill (candidates are found analytically)", "a mask");
    if (opt.bias.data) fail("options.bias", "", "none with flex_prefill (candidates are found analytically)", "a bias");
  } else if constexpr (std::is_same_v<P, pattern::top_k>) {
    if (p.k < 0) fail("pattern.k", "", ">= 0", p.k);
  }
  (void)sh, (void)opt;
}

/// A pattern decided by position alone: `allowed(i, j, Lq, Lk)`.
template <class P>
concept static_pattern = std::copyable<P> && requires(const P& p, index_t x) {
  { p.allowed(x, x, x, x) } -> std::convertible_to<bool>;
};

/// A pattern that looks at the data (scores) to select keys.
template <class P>
concept dynamic_pattern = std::copyable<P> && requires {
  requires P::data_dependent;
};

}  // namespace pattern

/// Sparse attention policy: `pattern` selects keys, `inner` (softmax or sigmoid)
/// turns the surviving logits into weights.
template <class Pattern, class Inner = softmax>
  requires(pattern::static_pattern<Pattern> || pattern::dynamic_pattern<Pattern>)
struct sparse {
  using family = attnkit::family::pattern;
  Pattern pattern;
  Inner inner{};
};

template <class Pattern>
sparse(Pattern) -> sparse<Pattern>;
template <class Pattern, class Inner>
sparse(Pattern, Inner) -> sparse<Pattern, Inner>;

}  // namespace attnkit
