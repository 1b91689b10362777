# Included by attnkitConfig.cmake (find_package) and by CMakeLists.txt when attnkit
# is a subproject: tells the consumer at configure time when its compiler flags
# stop below AVX2 on x86, where attnkit's compile-time SIMD path is SSE2 and
# several times slower. Flags added later per target (target_compile_options(app
# PRIVATE -march=native)) are not visible here, hence a status line, not a
# warning. -DATTNKIT_NO_ARCH_WARNING=ON silences it.
if(CMAKE_CXX_COMPILER_LOADED AND NOT ATTNKIT_NO_ARCH_WARNING
   AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86|x86)$")
  include(CheckCXXSourceCompiles)
  set(_attnkit_quiet "${CMAKE_REQUIRED_QUIET}")  # the consumer's setting, restored below
  set(CMAKE_REQUIRED_QUIET ON)
  check_cxx_source_compiles("#if !defined(__AVX2__)\n#error below AVX2\n#endif\nint main() { return 0; }\n"
                            ATTNKIT_CXX_FLAGS_HAVE_AVX2)
  set(CMAKE_REQUIRED_QUIET "${_attnkit_quiet}")
  unset(_attnkit_quiet)
  if(NOT ATTNKIT_CXX_FLAGS_HAVE_AVX2)
    message(STATUS "attnkit: CMAKE_CXX_FLAGS target x86 below AVX2: unless your targets add -march=native "
                   "(or x86-64-v3/v4), attention() runs on SSE2, several times slower. Check with "
                   "attnkit::simd::arch_name<>(); run-time dispatch: attnkit/dispatch/runtime.hpp. "
                   "Silence: -DATTNKIT_NO_ARCH_WARNING=ON")
  endif()
endif()
