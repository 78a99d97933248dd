#include "keel/internal/validate.h"

#include "keel/internal/format.h"

namespace keel::internal {

std::string OptionsOf::Field(std::string_view field) const {
  if (named_) return StrCat(type_, " \"", name_, "\": ", field);
  return StrCat(type_, ".", field);
}

absl::Status OptionsOf::Nest(const absl::Status& status) const {
  if (status.ok()) return status;
  return absl::Status(status.code(), Field(FromAbsl(status.message())));
}

absl::Status InvalidOption(const OptionsOf& of, std::string_view field, std::string_view rule,
                           std::string_view got) {
  return absl::InvalidArgumentError(StrCat(of.Field(field), " must be ", rule, ", got ", got));
}

absl::Status InvalidOption(const OptionsOf& of, std::string_view field, std::string_view rule,
                           std::chrono::nanoseconds got) {
  return InvalidOption(of, field, rule, FormatDuration(got));
}

absl::Status RequirePositive(const OptionsOf& of, std::string_view field,
                             std::chrono::nanoseconds value) {
  if (value > std::chrono::nanoseconds::zero()) return absl::OkStatus();
  return InvalidOption(of, field, "> 0", value);
}

absl::Status RequireNonNegative(const OptionsOf& of, std::string_view field,
                                std::chrono::nanoseconds value) {
  if (value >= std::chrono::nanoseconds::zero()) return absl::OkStatus();
  return InvalidOption(of, field, ">= 0", value);
}

absl::Status RequireFraction(const OptionsOf& of, std::string_view field, double value) {
  if (value > 0.0 && value <= 1.0) return absl::OkStatus();  // false for NaN too
  return InvalidOption(of, field, "in (0, 1]", value);
}

absl::Status RequireSet(const OptionsOf& of, std::string_view field, bool set) {
  if (set) return absl::OkStatus();
  return absl::InvalidArgumentError(StrCat(of.Field(field), " must be set"));
}

}  // namespace keel::internal
