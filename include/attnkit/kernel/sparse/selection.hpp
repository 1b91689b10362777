#pragma once
/// \file
/// The extension point of data-dependent patterns: `selection<P>::run` is the
/// kernel of a pattern that looks at the scores to choose keys (pattern::top_k,
/// pattern::flex_prefill specialise it in their own headers). Static patterns do
/// not need one: their hooks drive the generic adapter (sparse/pattern_keys.hpp).
namespace attnkit::detail {

/// Specialise for a data-dependent pattern P with
///   template <class Arch, class Inner, class Obs, class KV>
///   static void run(const sparse<P, Inner>&, const problem_shape&, q, k, v, out,
///                   const options&, Obs&, workspace&);
template <class P>
struct selection;

}  // namespace attnkit::detail
