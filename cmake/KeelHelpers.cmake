# Helpers shared by keel's own targets. Nothing here leaks into users' targets: warnings are
# PRIVATE, and sanitizers are only switched on when keel is built with KEEL_SANITIZE.

# keel's warning set, applied PRIVATE so users' builds never inherit -Werror.
function(keel_set_warnings target)
  # -Wmissing-field-initializers (part of -Wextra) fires on every designated initializer that
  # leaves a field at its default, which is how keel's options structs are meant to be written.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror
                                           -Wno-missing-field-initializers)
endfunction()

# keel_add_library(<name> sources...) defines keel_<name> with alias keel::<name>.
function(keel_add_library name)
  set(target keel_${name})
  add_library(${target} STATIC ${ARGN})
  add_library(keel::${name} ALIAS ${target})
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${name} OUTPUT_NAME keel_${name}
                                             POSITION_INDEPENDENT_CODE ON)
  target_compile_features(${target} PUBLIC cxx_std_20)
  target_include_directories(${target} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${PROJECT_SOURCE_DIR}/src)
  keel_set_warnings(${target})
endfunction()

# Sanitizers apply to everything in the build (tests included) so that instrumented and
# uninstrumented code never mix in one binary.
function(keel_enable_sanitizers list)
  if(list STREQUAL "")
    return()
  endif()
  if(NOT list MATCHES "^(address,undefined|undefined,address|address|undefined|thread)$")
    message(FATAL_ERROR "KEEL_SANITIZE must be address,undefined or thread, got '${list}'")
  endif()
  add_compile_options(-fsanitize=${list} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${list})
endfunction()
