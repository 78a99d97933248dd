#include <pqxx/version>

#include <string>

#include "keel/version.h"

namespace keel::postgres {

std::string PqxxVersion() { return PQXX_VERSION; }

}  // namespace keel::postgres
