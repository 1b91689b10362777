# attnkit_add_mpi_test(NAME name RANKS n TARGET target [ARGS ...]): a ctest test that
# runs `target` under mpiexec with n ranks on this machine. Open MPI refuses more
# ranks than cores without --oversubscribe, and refuses root without the two
# OMPI_ALLOW_RUN_AS_ROOT* variables (CI containers run as root); both are set here.
if(NOT DEFINED ATTNKIT_MPIEXEC_EXTRA_FLAGS)
  execute_process(COMMAND "${MPIEXEC_EXECUTABLE}" --version OUTPUT_VARIABLE _attnkit_mpiexec_version ERROR_QUIET)
  set(_attnkit_oversubscribe "")
  if(_attnkit_mpiexec_version MATCHES "Open MPI|OpenRTE")
    set(_attnkit_oversubscribe "--oversubscribe")
  endif()
  set(ATTNKIT_MPIEXEC_EXTRA_FLAGS "${_attnkit_oversubscribe}" CACHE STRING
      "Extra mpiexec flags of attnkit's MPI tests (Open MPI: --oversubscribe)")
endif()

function(attnkit_add_mpi_test)
  cmake_parse_arguments(T "" "NAME;RANKS;TARGET" "ARGS" ${ARGN})
  add_test(NAME ${T_NAME}
           COMMAND "${MPIEXEC_EXECUTABLE}" ${MPIEXEC_NUMPROC_FLAG} ${T_RANKS} ${ATTNKIT_MPIEXEC_EXTRA_FLAGS}
                   ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${T_TARGET}> ${MPIEXEC_POSTFLAGS} ${T_ARGS})
  # One thread per rank: the ranks already share this machine's cores. Under ASan,
  # LeakSanitizer would report Open MPI's own allocations (libmpi and its unloaded
  # plugins; no suppression can name them), so leaks are not checked here — the ring's
  # own code runs under LeakSanitizer in test_ring_plan; memory errors and UB still abort.
  set_tests_properties(${T_NAME} PROPERTIES
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;ATTNKIT_NUM_THREADS=1;ASAN_OPTIONS=detect_leaks=0"
    PROCESSORS ${T_RANKS} TIMEOUT 600)
endfunction()
