# Consumer smoke test, run by ctest as `cmake -DMODE=... -P run.cmake`.
#   MODE=find_package      install BINARY_DIR into WORK_DIR/prefix, then build
#                          tests/package/find_package against it with find_package(attnkit)
#   MODE=add_subdirectory  build tests/package/add_subdirectory, which vendors SOURCE_DIR
# Both configure, build and run the consumer's own ctest.
cmake_minimum_required(VERSION 3.21)
foreach(v MODE SOURCE_DIR BINARY_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run.cmake: -D${v}=... missing")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test (${MODE}): ${what} failed (exit ${rc})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(configure_args -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=${CONFIG}
                   -DEXPECT_EIGEN=${EXPECT_EIGEN} -DEXPECT_MPI=${EXPECT_MPI})
if(LAUNCHER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()

if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  run_step("cmake --install" "${CMAKE_COMMAND}" --install "${BINARY_DIR}" --prefix "${prefix}" --config ${CONFIG})
  foreach(f include/attnkit/attnkit.hpp share/cmake/attnkit/attnkitConfig.cmake
            share/cmake/attnkit/attnkitConfigVersion.cmake share/cmake/attnkit/attnkitTargets.cmake
            share/pkgconfig/attnkit.pc)
    if(NOT EXISTS "${prefix}/${f}")
      message(FATAL_ERROR "package test: ${f} not installed under ${prefix}")
    endif()
  endforeach()
  # The pkg-config file must resolve (when pkg-config is there to ask).
  find_program(PKG_CONFIG pkg-config)
  if(PKG_CONFIG)
    set(ENV{PKG_CONFIG_PATH} "${prefix}/share/pkgconfig")
    execute_process(COMMAND "${PKG_CONFIG}" --cflags attnkit RESULT_VARIABLE rc OUTPUT_VARIABLE cflags
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    string(REGEX MATCH "-I([^ ]+)" _ "${cflags}")
    if(NOT rc EQUAL 0 OR NOT EXISTS "${CMAKE_MATCH_1}/attnkit/attnkit.hpp")
      message(FATAL_ERROR "package test: pkg-config --cflags attnkit gave '${cflags}' (exit ${rc})")
    endif()
    message(STATUS "pkg-config --cflags attnkit: ${cflags}")
  endif()
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}")
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND configure_args "-DATTNKIT_SOURCE_DIR=${SOURCE_DIR}")
else()
  message(FATAL_ERROR "run.cmake: unknown MODE '${MODE}'")
endif()

run_step("configure" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/package/${MODE}" -B "${WORK_DIR}/build" ${configure_args})
run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build" --config ${CONFIG})
run_step("run" "${CMAKE_CTEST_COMMAND}" --test-dir "${WORK_DIR}/build" -C ${CONFIG} --output-on-failure)
