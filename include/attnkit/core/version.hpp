#pragma once
/// \file
/// attnkit version, parsed by CMake from this header (one source of truth).
///
/// \code
///   #include <attnkit/core/version.hpp>
///   static_assert(ATTNKIT_VERSION >= 100);           // at least 0.1.0
///   std::puts(attnkit::version());                  // "0.1.0"
/// \endcode
#define ATTNKIT_VERSION_MAJOR 0
#define ATTNKIT_VERSION_MINOR 1
#define ATTNKIT_VERSION_PATCH 0

#define ATTNKIT_DETAIL_STRINGIFY2(x) #x
#define ATTNKIT_DETAIL_STRINGIFY(x) ATTNKIT_DETAIL_STRINGIFY2(x)
/// "MAJOR.MINOR.PATCH", a string literal built from the three macros above.
#define ATTNKIT_VERSION_STRING                                                                   \
  ATTNKIT_DETAIL_STRINGIFY(ATTNKIT_VERSION_MAJOR) "." ATTNKIT_DETAIL_STRINGIFY(ATTNKIT_VERSION_MINOR) "." \
      ATTNKIT_DETAIL_STRINGIFY(ATTNKIT_VERSION_PATCH)
/// One comparable number: MAJOR·10000 + MINOR·100 + PATCH (0.1.0 → 100).
#define ATTNKIT_VERSION (ATTNKIT_VERSION_MAJOR * 10000 + ATTNKIT_VERSION_MINOR * 100 + ATTNKIT_VERSION_PATCH)

namespace attnkit {
inline constexpr int version_major = ATTNKIT_VERSION_MAJOR;
inline constexpr int version_minor = ATTNKIT_VERSION_MINOR;
inline constexpr int version_patch = ATTNKIT_VERSION_PATCH;

/// The version of the headers this translation unit was compiled with, "MAJOR.MINOR.PATCH".
constexpr const char* version() noexcept { return ATTNKIT_VERSION_STRING; }
}  // namespace attnkit
