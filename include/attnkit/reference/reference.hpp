#pragma once
/// \file
/// The float64 reference oracle: naive implementations of every variant, the test
/// oracle of every kernel (and a readable statement of the semantics). Opt-in — the
/// umbrella attnkit.hpp does not include it, since it materialises Lq × Lk logits.
///
/// \code
///   auto r = attnkit::reference::attention(attnkit::softmax{}, q, k, v, out, opt);
///   double H = r.entropy[r.row(b, h, i)];
///   attnkit::reference::attention_backward(attnkit::softmax{}, q, k, v, out, lse, dout, dq, dk, dv, opt);
/// \endcode
#include "analysis.hpp"
#include "backward.hpp"
#include "common.hpp"
#include "kernelized.hpp"
#include "quadratic.hpp"
