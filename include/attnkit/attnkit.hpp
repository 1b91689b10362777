#pragma once
/// \file
/// Umbrella header: the whole public API except Eigen interop
/// (attnkit/interop/eigen.hpp), which is opt-in so that Eigen stays optional.
// GCC 12 reports -W(maybe-)uninitialized inside its own AVX-512 intrinsic headers
// (the unmasked forms pass an undefined vector as the unused merge source) once
// they are inlined into template code; the reports are false, so they are muted
// for attnkit's headers only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "api/kv_cache.hpp"
#include "core/backward_options.hpp"
#include "core/dropout.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/mask.hpp"
#include "core/options.hpp"
#include "core/quant.hpp"
#include "core/tensor_view.hpp"
#include "core/validate.hpp"
#include "core/validate_backward.hpp"
#include "core/version.hpp"
#include "kernel/backward.hpp"
#include "kernel/dispatch.hpp"
#include "kernel/gated.hpp"
#include "kernel/kernelized/entropy_diagnostic.hpp"
#include "kernel/kernelized/recurrent.hpp"
#include "kernel/merge.hpp"
#include "kernel/varlen.hpp"
#include "observe/entropy.hpp"
#include "observe/observer.hpp"
#include "observe/regularizer.hpp"
#include "parallel/thread_pool.hpp"
#include "parallel/workspace.hpp"
#include "policy/family.hpp"
#include "policy/linear.hpp"
#include "policy/log_normal.hpp"
#include "policy/sigmoid.hpp"
#include "policy/softmax.hpp"
#include "policy/sparse.hpp"
#include "policy/stochastic_permutation.hpp"
#include "policy/traits.hpp"
#include "simd/arch.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
