// attnkit::precompiled: the explicit instantiations that attnkit/precompiled.hpp
// declares extern, for this library's simd::default_arch.
#include <attnkit/precompiled.hpp>

#ifndef ATTNKIT_PRECOMPILED
#error "attnkit::precompiled is built with ATTNKIT_PRECOMPILED defined (src/CMakeLists.txt)"
#endif

#define ATTNKIT_DETAIL_DEFINE_PAIR(POLICY, KV) ATTNKIT_PRECOMPILED_ATTENTION(, POLICY, KV)
ATTNKIT_PRECOMPILED_PAIRS(ATTNKIT_DETAIL_DEFINE_PAIR)

#define ATTNKIT_DETAIL_DEFINE_HALF(T, OUT) ATTNKIT_PRECOMPILED_HALF_ATTENTION(, T, OUT)
ATTNKIT_PRECOMPILED_HALF(ATTNKIT_DETAIL_DEFINE_HALF)
