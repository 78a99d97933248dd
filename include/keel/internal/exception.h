// keel/internal/exception.h: how keel describes an exception it caught from user code (a task, a
// hook, a listener) at the boundary where it turns it into a Status or a counted drop. Not part of
// keel's API.
//
// Thread safety: pure functions.
//
//   try { hook(); } catch (...) {
//     return absl::InternalError(StrCat("pool \"db\": the create hook threw ",
//                                       DescribeException(std::current_exception())));
//   }
#pragma once

#include <exception>
#include <string>

namespace keel::internal {

// "std::runtime_error-like exception: <what()>" is not portable to spell, so: "an exception:
// <what()>" for a std::exception, "a non-standard exception" for anything else (an int, a user
// type), "no exception" for a null pointer.
std::string DescribeException(std::exception_ptr thrown);

}  // namespace keel::internal
