#pragma once
/// \file
/// attnkit version, parsed by CMake from this header (one source of truth).
#define ATTNKIT_VERSION_MAJOR 0
#define ATTNKIT_VERSION_MINOR 1
#define ATTNKIT_VERSION_PATCH 0

namespace attnkit {
inline constexpr int version_major = ATTNKIT_VERSION_MAJOR;
inline constexpr int version_minor = ATTNKIT_VERSION_MINOR;
inline constexpr int version_patch = ATTNKIT_VERSION_PATCH;
}  // namespace attnkit
