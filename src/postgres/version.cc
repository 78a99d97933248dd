#include "keel/postgres/version.h"

#include <pqxx/version>
#include <string>

namespace keel::postgres {

std::string PqxxVersion() { return PQXX_VERSION; }

}  // namespace keel::postgres
