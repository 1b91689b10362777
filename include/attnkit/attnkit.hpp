#pragma once
/// \file
/// Umbrella header: the whole public API except Eigen interop
/// (attnkit/interop/eigen.hpp), which is opt-in so that Eigen stays optional.
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/mask.hpp"
#include "core/options.hpp"
#include "core/tensor_view.hpp"
#include "core/validate.hpp"
#include "core/version.hpp"
#include "kernel/dispatch.hpp"
#include "kernel/merge.hpp"
#include "kernel/varlen.hpp"
#include "observe/observer.hpp"
#include "parallel/thread_pool.hpp"
#include "policy/family.hpp"
#include "policy/linear.hpp"
#include "policy/log_normal.hpp"
#include "policy/sigmoid.hpp"
#include "policy/softmax.hpp"
#include "policy/sparse.hpp"
#include "policy/stochastic_permutation.hpp"
#include "simd/arch.hpp"
