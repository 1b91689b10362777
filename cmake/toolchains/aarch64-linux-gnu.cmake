# Cross-compiling attnkit's tests for aarch64 Linux (NEON) on an x86-64 Debian host,
# run under qemu-user (scripts/test.sh --neon):
#
#   cmake -S . -B build-neon --toolchain cmake/toolchains/aarch64-linux-gnu.cmake ...
#
# Debian 12 packages: g++-aarch64-linux-gnu (compiler, aarch64 glibc and libstdc++)
# and qemu-user (qemu-aarch64). attnkit is header-only and so are its test
# dependencies (xsimd, Catch2, Eigen): the host's arch-independent headers in
# /usr/include serve the cross compiler too (it searches /usr/include after its own
# sysroot), so no aarch64 -dev package (multiarch) is needed. MPI and Google
# Benchmark are libraries: a cross build turns them off (ATTNKIT_WITH_MPI=OFF,
# ATTNKIT_BUILD_BENCH=OFF).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ATTNKIT_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ATTNKIT_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ATTNKIT_CROSS_TRIPLE}-g++)

# ctest (and add_test commands) run the aarch64 executables through qemu, with the
# cross toolchain's loader and shared libraries (libstdc++, libc) as its root.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;/usr/${ATTNKIT_CROSS_TRIPLE}")

# Programs are the host's; headers and CMake packages may be the host's
# arch-independent ones (see above); libraries must come from the cross sysroot.
set(CMAKE_FIND_ROOT_PATH /usr/${ATTNKIT_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# xsimd's CMake package lives under the host's multiarch directory
# (/usr/lib/x86_64-linux-gnu/cmake/xsimd), which a cross find_package does not
# search (it looks under lib/aarch64-linux-gnu); its targets only name headers.
if(NOT DEFINED xsimd_DIR)
  file(GLOB _attnkit_xsimd_dirs LIST_DIRECTORIES true /usr/lib/*-linux-gnu*/cmake/xsimd /usr/lib/cmake/xsimd /usr/share/cmake/xsimd)
  if(_attnkit_xsimd_dirs)
    list(GET _attnkit_xsimd_dirs 0 _attnkit_xsimd_dir)
    set(xsimd_DIR "${_attnkit_xsimd_dir}" CACHE PATH "xsimd's CMake package (arch-independent headers)")
  endif()
endif()
