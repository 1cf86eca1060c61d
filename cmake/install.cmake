# Installation: `cmake --install build --prefix P` puts under P
#   bin/pathkernel                        the CLI
#   lib/libpathkernel.so.0 (.so), .a      the library, shared (SONAME libpathkernel.so.0) and static
#   lib/pathkernel/libpathkernel-mpi.so   the MPI module (when MPI was found)
#   include/pathkernel.h                  the one public header
#   lib/pkgconfig/pathkernel.pc           for pkg-config (--static: the dependencies of the .a)
#   lib/cmake/pathkernel/                 for find_package(pathkernel): pathkernel::pathkernel
#                                         (shared), pathkernel::pathkernel_static
#   share/pathkernel/digits.csv.gz        the embedded data of `pathkernel demo`
# (lib is CMAKE_INSTALL_LIBDIR: lib/x86_64-linux-gnu under the prefix /usr.)
include(CMakePackageConfigHelpers)

# The OpenMP build of OpenBLAS lives outside the linker's default path: keep
# the directories linked from (not the build tree) as the installed RUNPATH,
# so that the installed programs load that OpenBLAS and not the alternative
# that /usr/lib/<arch>/libopenblas.so.0 happens to point to.
set_target_properties(pathkernel pathkernel_cli PROPERTIES INSTALL_RPATH_USE_LINK_PATH TRUE)
if(TARGET pathkernel-mpi)
  set_target_properties(pathkernel-mpi PROPERTIES INSTALL_RPATH_USE_LINK_PATH TRUE)
endif()

install(TARGETS pathkernel pathkernel_static EXPORT pathkernelTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/include/pathkernel.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS pathkernel_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/data/digits.csv.gz DESTINATION ${CMAKE_INSTALL_DATADIR}/pathkernel)

# CMake package: find_package(pathkernel) then
# target_link_libraries(app pathkernel::pathkernel).
set(PK_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/pathkernel)
install(EXPORT pathkernelTargets NAMESPACE pathkernel:: DESTINATION ${PK_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/pathkernelConfig.cmake.in
  ${PROJECT_BINARY_DIR}/pathkernelConfig.cmake INSTALL_DESTINATION ${PK_CMAKE_DIR})
# SONAME 0: every 0.x release is meant to be compatible with the earlier ones.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/pathkernelConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/pathkernelConfig.cmake ${PROJECT_BINARY_DIR}/pathkernelConfigVersion.cmake
  DESTINATION ${PK_CMAKE_DIR})

# pkg-config: `cc app.c $(pkg-config --cflags --libs pathkernel)`. The shared
# library carries its dependencies, so Libs is -lpathkernel alone; linking
# the static one needs them all (pkg-config --static), and they are listed as
# plain -l flags in Libs.private rather than as Requires.private, so that
# `pkg-config --cflags` does not ask for the .pc files of libraries whose
# headers a user never includes.
function(pk_pc_flags out)
  set(flags "")
  foreach(lib ${ARGN})
    if(lib MATCHES "^-")
      list(APPEND flags ${lib})
    elseif(IS_ABSOLUTE "${lib}")
      get_filename_component(dir "${lib}" DIRECTORY)
      get_filename_component(name "${lib}" NAME)
      string(REGEX REPLACE "^lib(.*)\\.(so|a)(\\..*)?$" "\\1" name "${name}")
      list(FIND CMAKE_C_IMPLICIT_LINK_DIRECTORIES "${dir}" implicit)
      if(implicit EQUAL -1)
        list(APPEND flags "-L${dir}")
      endif()
      list(APPEND flags "-l${name}")
    elseif(lib)
      list(APPEND flags "-l${lib}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES flags)
  string(REPLACE ";" " " flags "${flags}")
  set(${out} "${flags}" PARENT_SCOPE)
endfunction()
pk_pc_flags(PK_PC_LIBS_PRIVATE ${OPENBLAS_LIB} ${CJSON_LIB} ${ISAL_LIB} ${PNG_LIBRARIES} ${ZLIB_LIBRARIES}
            ${OpenMP_C_LIB_NAMES} ${MVEC_LIB} m)
set(PK_PC_LIBS_SANITIZE "")
if(PK_SANITIZE)
  set(PK_PC_LIBS_SANITIZE " -fsanitize=address,undefined")
endif()
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    set(PK_PC_${dir} "${CMAKE_INSTALL_${dir}}")
  else()
    set(PK_PC_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
  endif()
endforeach()
# Everything but the prefix now; the prefix when installing, which is when
# `cmake --install --prefix P` says what it is. Written straight into the
# destination (DESTDIR honoured, listed in install_manifest.txt), nothing in
# the build tree, so that two installs at once cannot mix their prefixes.
set(PK_PC_PREFIX "@PK_PC_PREFIX@")
configure_file(${PROJECT_SOURCE_DIR}/cmake/pathkernel.pc.in ${PROJECT_BINARY_DIR}/pathkernel.pc.in @ONLY)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(PK_PC_FILE "${CMAKE_INSTALL_LIBDIR}/pkgconfig/pathkernel.pc")
else()
  set(PK_PC_FILE "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig/pathkernel.pc")
endif()
install(CODE "
  file(READ \"${PROJECT_BINARY_DIR}/pathkernel.pc.in\" pk_pc)
  get_filename_component(pk_prefix \"\${CMAKE_INSTALL_PREFIX}\" ABSOLUTE)
  string(REPLACE \"@PK_PC_PREFIX@\" \"\${pk_prefix}\" pk_pc \"\${pk_pc}\")
  set(pk_pc_file \"${PK_PC_FILE}\")
  message(STATUS \"Installing: \$ENV{DESTDIR}\${pk_pc_file}\")
  file(WRITE \"\$ENV{DESTDIR}\${pk_pc_file}\" \"\${pk_pc}\")
  list(APPEND CMAKE_INSTALL_MANIFEST_FILES \"\${pk_pc_file}\")
")
