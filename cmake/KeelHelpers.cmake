# Helpers shared by keel's own targets. Nothing here leaks into users' targets: warnings are
# PRIVATE, and sanitizers are only switched on when keel is built with KEEL_SANITIZE.

# keel_set_warnings(<target> [TEST]): keel's warning set, applied PRIVATE so users' builds never
# inherit -Werror. TEST marks tests, benchmarks and examples (code that is not shipped).
function(keel_set_warnings target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "TEST" "" "")
  # -Wmissing-field-initializers (part of -Wextra) fires on every designated initializer that
  # leaves a field at its default, which is how keel's options structs are meant to be written.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror
                                           -Wno-missing-field-initializers)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # clang checks the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations keel's mutex
    # members carry; under -Werror a member touched without its lock fails the build.
    target_compile_options(${target} PRIVATE -Wthread-safety)
  endif()
  if(arg_TEST AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
     AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    # GCC 12's -Wmaybe-uninitialized (enabled by -Wall, effective only when optimizing) reports
    # false positives inside libstdc++ and Catch2 code that tests instantiate (<regex>,
    # std::optional<std::string> in CHECK expressions) at -O2/-O3 and under ASan. The library
    # itself keeps the warning; it is off only for code that is not shipped.
    target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized)
  endif()
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
  if(list MATCHES "undefined" AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # clang 14's -fsanitize=function (in "undefined" for C++; GCC has no such check) fails to
    # compile coroutines: "Cannot represent a difference across sections", its prologue data
    # pointing across the split coroutine's sections.
    add_compile_options(-fno-sanitize=function)
  endif()
endfunction()

# keel_optional_dependency(<NAME> <what> <prefix> <pkg-config module>) defines the option
# KEEL_WITH_<NAME>: ON when the module is found, unless the user set it. Explicit ON without the
# module is an error; OFF (chosen or defaulted) is reported, so a missing library is never silent.
macro(keel_optional_dependency name what prefix module)
  if(NOT DEFINED KEEL_WITH_${name} OR KEEL_WITH_${name})
    pkg_check_modules(${prefix} QUIET IMPORTED_TARGET GLOBAL ${module})
  endif()
  if(DEFINED KEEL_WITH_${name} AND KEEL_WITH_${name} AND NOT ${prefix}_FOUND)
    message(FATAL_ERROR "KEEL_WITH_${name}=ON but ${what} was not found by pkg-config "
                        "(module ${module}; Debian: scripts/deps)")
  endif()
  option(KEEL_WITH_${name} "Build keel::${name} (needs ${what})" ${${prefix}_FOUND})
  if(NOT KEEL_WITH_${name})
    string(TOLOWER ${name} keel_lower_name)
    message(STATUS "keel: ${what} not found or KEEL_WITH_${name}=OFF: keel::${keel_lower_name} "
                   "and the tests, benchmarks and examples that need it are not built")
  endif()
endmacro()

# keel_drop_sources(<out-var> <sources...>): the sources this build can compile. A test,
# benchmark or example needs keel::redis when it lives under a redis* folder or includes
# keel/redis/ or hiredis; keel::postgres likewise for postgres folders, keel/postgres/ and pqxx.
function(keel_drop_sources out)
  set(kept)
  foreach(source ${ARGN})
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${source})
    file(STRINGS ${source} redis_includes REGEX "#include [<\"](keel/redis/|hiredis/)")
    file(STRINGS ${source} postgres_includes REGEX "#include [<\"](keel/postgres/|pqxx/|libpq)")
    if(NOT KEEL_WITH_REDIS AND (rel MATCHES "/redis[^/]*/" OR redis_includes))
      continue()
    endif()
    if(NOT KEEL_WITH_POSTGRES AND (rel MATCHES "/postgres[^/]*/" OR postgres_includes))
      continue()
    endif()
    list(APPEND kept ${source})
  endforeach()
  set(${out} ${kept} PARENT_SCOPE)
endfunction()
