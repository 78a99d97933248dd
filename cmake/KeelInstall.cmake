# Install rules: headers, static libraries, an exported CMake package (keelConfig.cmake with
# find_dependency for each dependency of the libraries this build has) and a pkg-config file.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(KEEL_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/keel)

# Headers of the optional libraries are installed only with them, so a core-only install never
# offers a header that needs hiredis or libpqxx.
set(keel_header_excludes)
if(NOT KEEL_WITH_REDIS)
  list(APPEND keel_header_excludes PATTERN redis EXCLUDE)
endif()
if(NOT KEEL_WITH_POSTGRES)
  list(APPEND keel_header_excludes PATTERN postgres EXCLUDE)
endif()
install(DIRECTORY include/keel DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} ${keel_header_excludes})
install(FILES ${PROJECT_BINARY_DIR}/include/keel/config.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/keel)
install(TARGETS ${KEEL_LIBRARIES} keel_keel
        EXPORT keelTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT keelTargets NAMESPACE keel:: DESTINATION ${KEEL_CMAKE_DIR})

configure_package_config_file(cmake/keelConfig.cmake.in
  ${PROJECT_BINARY_DIR}/keelConfig.cmake INSTALL_DESTINATION ${KEEL_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/keelConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/keelConfig.cmake ${PROJECT_BINARY_DIR}/keelConfigVersion.cmake
        DESTINATION ${KEEL_CMAKE_DIR})

# keel.pc: every library this build has, with their pkg-config modules in Requires (the
# libraries are static, so a consumer links their dependencies too).
set(KEEL_PC_REQUIRES "fmt absl_status absl_statusor absl_strings absl_str_format")
string(APPEND KEEL_PC_REQUIRES " absl_synchronization absl_time absl_random_random absl_hash")
string(APPEND KEEL_PC_REQUIRES " absl_flat_hash_map absl_btree")
set(KEEL_PC_LIBS "-lkeel_core")
if(KEEL_WITH_REDIS)
  string(PREPEND KEEL_PC_REQUIRES "hiredis libcrypto ")
  string(PREPEND KEEL_PC_LIBS "-lkeel_redis ")
endif()
if(KEEL_WITH_POSTGRES)
  string(PREPEND KEEL_PC_REQUIRES "libpqxx libpq ")
  string(PREPEND KEEL_PC_LIBS "-lkeel_postgres ")
endif()
file(RELATIVE_PATH KEEL_PC_UP /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(cmake/keel.pc.in ${PROJECT_BINARY_DIR}/keel.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/keel.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
