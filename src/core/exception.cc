#include "keel/internal/exception.h"

namespace keel::internal {

std::string DescribeException(std::exception_ptr thrown) {
  if (thrown == nullptr) return "no exception";
  try {
    std::rethrow_exception(thrown);
  } catch (const std::exception& e) {
    return std::string("an exception: ") + e.what();
  } catch (...) {
    return "a non-standard exception";
  }
}

}  // namespace keel::internal
