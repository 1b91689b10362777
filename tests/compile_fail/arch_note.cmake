# Builds below AVX2 on x86 must tell the user (issue #27 item 4), and only those:
#  - compiling <attnkit/simd/arch.hpp> for -march=x86-64 prints the attnkit note,
#    also under -Werror without failing; -DATTNKIT_NO_ARCH_WARNING and
#    -march=x86-64-v3 print nothing;
#  - configuring a consumer (arch_message/) without -march prints the status line;
#    with -march=x86-64-v3 in CMAKE_CXX_FLAGS, or -DATTNKIT_NO_ARCH_WARNING=ON, it does not.
#   cmake -DCOMPILER=g++ -DSOURCE_DIR=<attnkit> -DINCLUDES=dir1|dir2 -DWORK_DIR=<dir> -DGENERATOR=Ninja -P arch_note.cmake
cmake_minimum_required(VERSION 3.21)
set(_note "attnkit: compiling for x86 below AVX2")
set(_status "attnkit: CMAKE_CXX_FLAGS target x86 below AVX2")
string(REPLACE "|" ";" _dirs "${INCLUDES}")
set(_args "")
foreach(_d IN LISTS _dirs)
  list(APPEND _args "-I${_d}")
endforeach()
file(MAKE_DIRECTORY "${WORK_DIR}")
file(WRITE "${WORK_DIR}/arch_note.cpp" "#include <attnkit/simd/arch.hpp>\nint main() { return attnkit::simd::arch_name<>()[0] == 0; }\n")

function(compile expect_note)
  execute_process(COMMAND "${COMPILER}" -std=c++20 -fsyntax-only -Wall -Werror ${_args} ${ARGN} "${WORK_DIR}/arch_note.cpp"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "compile with ${ARGN} failed (the note must not break -Werror):\n${out}")
  endif()
  string(FIND "${out}" "${_note}" at)
  if(expect_note AND at EQUAL -1)
    message(FATAL_ERROR "compile with ${ARGN}: no '${_note}' note:\n${out}")
  elseif(NOT expect_note AND NOT at EQUAL -1)
    message(FATAL_ERROR "compile with ${ARGN}: unexpected note:\n${out}")
  endif()
endfunction()
compile(TRUE -march=x86-64)
compile(FALSE -march=x86-64 -DATTNKIT_NO_ARCH_WARNING)
compile(FALSE -march=x86-64-v3)

function(configure expect_status name)
  file(REMOVE_RECURSE "${WORK_DIR}/${name}")
  execute_process(COMMAND "${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_LIST_DIR}/arch_message" -B "${WORK_DIR}/${name}"
                          -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${COMPILER}" "-DATTNKIT_SOURCE_DIR=${SOURCE_DIR}" ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "configure ${name} failed:\n${out}")
  endif()
  string(FIND "${out}" "${_status}" at)
  if(expect_status AND at EQUAL -1)
    message(FATAL_ERROR "configure ${name}: no '${_status}' line:\n${out}")
  elseif(NOT expect_status AND NOT at EQUAL -1)
    message(FATAL_ERROR "configure ${name}: unexpected status line:\n${out}")
  endif()
endfunction()
configure(TRUE baseline "-DCMAKE_CXX_FLAGS=-march=x86-64")
configure(FALSE v3 "-DCMAKE_CXX_FLAGS=-march=x86-64-v3")
configure(FALSE silenced "-DCMAKE_CXX_FLAGS=-march=x86-64" -DATTNKIT_NO_ARCH_WARNING=ON)
message(STATUS "arch notes: as expected")
