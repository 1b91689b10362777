// The version string: ATTNKIT_VERSION_STRING and attnkit::version() agree with the
// three number macros and with the version CMake parsed from the same header
// (PROJECT_VERSION, passed in as ATTNKIT_TEST_CMAKE_VERSION).
#include <catch2/catch.hpp>

#include <attnkit/core/version.hpp>

#include <string>
#include <string_view>

TEST_CASE("version string matches the version numbers and CMake's project version", "[version]") {
  const std::string parts = std::to_string(ATTNKIT_VERSION_MAJOR) + "." + std::to_string(ATTNKIT_VERSION_MINOR) + "." +
                            std::to_string(ATTNKIT_VERSION_PATCH);
  CHECK(std::string(ATTNKIT_VERSION_STRING) == parts);
  CHECK(std::string(attnkit::version()) == parts);
  CHECK(std::string(attnkit::version()) == ATTNKIT_TEST_CMAKE_VERSION);
  CHECK(ATTNKIT_VERSION == ATTNKIT_VERSION_MAJOR * 10000 + ATTNKIT_VERSION_MINOR * 100 + ATTNKIT_VERSION_PATCH);
  CHECK(attnkit::version_major == ATTNKIT_VERSION_MAJOR);
}

// Usable at compile time: the macro is a string literal, version() is constexpr.
static_assert(sizeof(ATTNKIT_VERSION_STRING) >= 6, "at least \"0.0.0\"");
static_assert(std::string_view(attnkit::version()) == ATTNKIT_VERSION_STRING);
