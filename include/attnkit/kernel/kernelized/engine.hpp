#pragma once
/// \file
/// How a kernelised policy plugs into the kernelised skeletons (forward, backward,
/// entropy diagnostic): its engine, `kernelized_engine<P>`, specialised beside the
/// policy's adapter (linear.hpp for linear<F> with any feature map, log_normal.hpp
/// for LLN). The skeletons only talk to this interface, never to a concrete policy:
///
///   static constexpr const char* name;                      // "linear attention", ...
///   static void check(const P&, const problem_shape&, const options&);
///       // the policy's own fields and the options it accepts, before anything is written
///   template <class Arch, class KV, class Body>
///   static void with_features(const P&, const problem_shape&, q, k, const options&, workspace&, Body&&);
///       // resolves the call's query and key feature maps (resolved_feature, skeleton.hpp)
///       // and its kernelized_params, then calls body(fq, fk, params)
///   static double kernel_share(const P&);   // the kernelised part's weight in the output
///   static bool block_diagonal(const P&);   // plus (1 − share) × block-diagonal softmax (LLN+Diag)
#include "../../policy/family.hpp"
#include "skeleton.hpp"

namespace attnkit::detail {

/// Specialised for each kernelised policy; the primary template is never defined.
template <class P>
struct kernelized_engine;

/// True when P has a kernelised engine.
template <class P>
concept has_kernelized_engine = requires { kernelized_engine<P>::name; };

/// The engine of P, with a message when there is none.
template <class P>
constexpr bool check_kernelized_policy() {
  static_assert(has_kernelized_engine<P>,
                "attnkit: no kernelised engine for this policy. The kernelised family is open through its feature "
                "map: write a map (policy/feature_map.hpp) and use attnkit::linear{your_map{}}");
  return true;
}

}  // namespace attnkit::detail
