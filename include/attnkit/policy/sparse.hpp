#pragma once
/// \file
/// Sparse attention: a key-set pattern (policy/pattern.hpp) wrapped around an inner
/// quadratic weight function (softmax by default, sigmoid, or a user's). The
/// pattern's allowed set is intersected with every mask of the options (causal,
/// window, bool mask, key lengths); the inner policy then runs over the surviving
/// keys only (softmax renormalises over them). Built-in patterns:
///   patterns/window.hpp        sliding_window, dilated_window, sink_window
///   patterns/block_sparse.hpp  block_sparse (one or per-head layouts), power_attention
///   patterns/neighborhood.hpp  neighborhood_1d, neighborhood_2d
///   patterns/selection.hpp     top_k, flex_prefill (data-dependent)
#include "pattern.hpp"
#include "patterns/block_sparse.hpp"
#include "patterns/neighborhood.hpp"
#include "patterns/selection.hpp"
#include "patterns/window.hpp"
#include "softmax.hpp"

namespace attnkit {
namespace pattern {

/// Validates a pattern's own arguments against the call's shape and options (its
/// `check` hook); the kernel and the oracle both call it, so they accept exactly
/// the same calls (the fuzz harness checks this). Throws invalid_argument_error
/// naming the field. Sizes may be as large as INT64_MAX (a natural "unbounded");
/// only negative, non-finite or inconsistent values are refused.
template <class P>
void check_arguments(const P& p, const problem_shape& sh, const options& opt) {
  attnkit::detail::pattern_hooks<P>::check(p, sh, opt);
}

}  // namespace pattern

/// Sparse attention policy: `pattern` selects keys, `inner` (a quadratic weight
/// function: softmax, sigmoid, ...) turns the surviving logits into weights.
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
