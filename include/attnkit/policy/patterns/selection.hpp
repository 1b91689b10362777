#pragma once
/// \file
/// Data-dependent key selection: top_k keys per query and FlexPrefill-style block
/// selection. Their kernels look at the scores before the attention pass
/// (kernel/sparse/top_k.hpp, kernel/sparse/flex_prefill.hpp); selections are
/// treated as constants of the call (no gradient flows through the choice).
#include <cmath>
#include <string>

#include "window.hpp"

namespace attnkit::pattern {

/// Each query keeps the k keys with the largest final logits (after softcap, bias
/// and ALiBi) among the keys the options allow; ties go to the smaller key index.
/// Rows with ≤ k allowed keys keep all of them.
struct top_k {
  static constexpr bool data_dependent = true;
  index_t k = 64;
  void check(const problem_shape&, const options&) const {
    if (k < 0) attnkit::detail::fail("pattern.k", "", ">= 0", k);
  }
};

/// FlexPrefill-style block selection. Queries are grouped in blocks of `block` rows
/// (by query index), keys in blocks of `block` keys. For each query block QB: q̄ = mean
/// of its query vectors; for every candidate key block KB (one that holds at least
/// one key allowed by the options to some row of QB), k̄ = mean of its valid keys
/// (j < Lk); estimated logits ŝ = τ·q̄·k̄ and estimated mass p̂ = softmax over
/// candidates. Candidates are taken in descending p̂ (ties: smaller block first)
/// until the cumulative p̂ ≥ gamma, and at least min(min_budget, #candidates) blocks.
/// Every row of QB then sees the keys of the selected blocks (intersected with the
/// options' masks). The selection is per (batch, head); `selection`, when set,
/// receives it as bool [B, Hq, ceil(Lq/block), ceil(Lk/block)] (reusable as a
/// per-head block_sparse layout of batch b).
struct flex_prefill {
  static constexpr bool data_dependent = true;
  double gamma = 0.9;
  index_t block = 64;
  index_t min_budget = 1;  ///< minimum number of key blocks kept per query block
  bool* selection = nullptr;

  void check(const problem_shape& sh, const options& opt) const {
    using attnkit::detail::fail;
    if (block <= 0) fail("pattern.block", "", "> 0", block);
    if (!(gamma >= 0.0 && gamma <= 1.0)) fail("pattern.gamma", "", "in [0, 1]", gamma);
    if (min_budget < 0) fail("pattern.min_budget", "", ">= 0", min_budget);
    // Candidate blocks come from the analytic masks; element masks would need an N² scan.
    if (opt.mask.data) fail("options.mask", "", "none with flex_prefill (candidates are found analytically)", "a mask");
    if (opt.bias.data) fail("options.bias", "", "none with flex_prefill (candidates are found analytically)", "a bias");
    (void)sh;
  }
};

}  // namespace attnkit::pattern
