# One compile-fail check (run by ctest): compiles SOURCE with COMPILER in syntax-only
# mode and passes only if the compile fails, its output matches the source's
# `// expect: REGEX` line, and it reports exactly one error.
#   cmake -DCOMPILER=g++ -DSOURCE=case.cpp -DINCLUDES=dir1|dir2 -P check.cmake
cmake_minimum_required(VERSION 3.21)
file(STRINGS "${SOURCE}" _expect LIMIT_COUNT 1 REGEX "^// expect: ")
if(NOT _expect)
  message(FATAL_ERROR "${SOURCE}: first line must be `// expect: REGEX`")
endif()
string(REGEX REPLACE "^// expect: " "" _expect "${_expect}")
string(REPLACE "|" ";" _dirs "${INCLUDES}")
set(_args "")
foreach(_d IN LISTS _dirs)
  list(APPEND _args "-I${_d}")
endforeach()
execute_process(COMMAND "${COMPILER}" -std=c++20 -fsyntax-only -DATTNKIT_NO_ARCH_WARNING ${_args} "${SOURCE}"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
if(_rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must be rejected")
endif()
if(NOT _out MATCHES "${_expect}")
  message(FATAL_ERROR "${SOURCE}: the compiler's output lacks `${_expect}`:\n${_out}")
endif()
string(REGEX MATCHALL "error:" _errors "${_out}")
list(LENGTH _errors _n)
if(NOT _n EQUAL 1)
  message(FATAL_ERROR "${SOURCE}: ${_n} errors, expected exactly one:\n${_out}")
endif()
message(STATUS "rejected as expected: ${_expect}")
