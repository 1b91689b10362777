# Included after find_package(xsimd) by the build tree (CMakeLists.txt) and by the
# installed attnkitConfig.cmake, so both behave the same.
#
# Debian 12's libxsimd-dev (8.1.0) exports INTERFACE_LINK_LIBRARIES "xtl" although the
# package does not depend on xtl and the headers need it only with
# XSIMD_ENABLE_XTL_COMPLEX: without a target named xtl every link line gets -lxtl
# and fails. Use the real xtl when it is installed, else an empty placeholder.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_attnkit_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if("xtl" IN_LIST _attnkit_xsimd_links)
    find_package(xtl CONFIG QUIET)
    if(NOT TARGET xtl)
      add_library(xtl INTERFACE IMPORTED GLOBAL)
    endif()
  endif()
  unset(_attnkit_xsimd_links)
endif()

