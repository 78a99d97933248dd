# Installs the keel build tree into a scratch prefix and builds tests/package/consumer against it.
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install ${KEEL_BINARY_DIR} --prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build -G ${CMAKE_GENERATOR}
    -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
run(${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${WORK_DIR}/prefix/${KEEL_LIBDIR}/pkgconfig
    pkg-config --exists --print-errors keel)
# The pkg-config route: compile and link the same consumer with flags from keel.pc alone.
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${WORK_DIR}/prefix/${KEEL_LIBDIR}/pkgconfig
          pkg-config --cflags --libs keel
  OUTPUT_VARIABLE pc_flags OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs keel failed")
endif()
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
run(c++ ${CONSUMER_SOURCE_DIR}/main.cc -o ${WORK_DIR}/consumer-pc ${pc_flags} -pthread)
run(${WORK_DIR}/consumer-pc)
