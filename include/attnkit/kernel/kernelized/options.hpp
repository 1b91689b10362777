#pragma once
/// \file
/// Validation of a kernelised call, shared by the forward, the backward, the
/// recurrent form and the entropy diagnostic (each runs it before writing anything).
#include <string>

#include "../../core/error.hpp"
#include "../../core/options.hpp"
#include "../../core/validate.hpp"

namespace attnkit::detail {

/// Options the kernelised family understands: causal (prefix), key_lengths, scale
/// (FAVOR+), threads. Everything element-wise is rejected, as in the reference.
inline void check_kernelized_options(const options& opt, const char* what) {
  const std::string w = std::string("not used with ") + what;
  if (opt.window.active()) fail("options.window", "", "unbounded (" + w + ")", "a window");
  if (opt.mask.data) fail("options.mask", "", "none (" + w + ")", "a mask");
  if (opt.bias.data) fail("options.bias", "", "none (" + w + ")", "a bias");
  if (!opt.alibi_slopes.empty()) fail("options.alibi_slopes", "", "empty (" + w + ")", opt.alibi_slopes.size());
  if (opt.softcap > 0.0f) fail("options.softcap", "", "0 (" + w + ")", opt.softcap);
  if (!opt.sinks.empty()) fail("options.sinks", "", "empty (" + w + ")", opt.sinks.size());
  if (opt.lse) fail("options.lse", "", "nullptr (" + w + ")", "a pointer");
  reject_positions(opt, what);
}

}  // namespace attnkit::detail
