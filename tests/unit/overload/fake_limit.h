// A LimitAlgorithm for tests: records every sample and returns a limit the test sets.
#pragma once

#include <vector>

#include "keel/overload/limit_algorithm.h"

namespace keel_test {

class FakeLimit final : public keel::overload::LimitAlgorithm {
 public:
  // `samples` (optional) must outlive the algorithm; the limit becomes `*next` on each update
  // when `next` is set.
  FakeLimit(int limit, std::vector<keel::overload::LimitSample>* samples = nullptr,
            const int* next = nullptr)
      : limit_(limit), samples_(samples), next_(next) {}
  const char* name() const override { return "fake"; }
  int limit() const override { return limit_; }
  int Update(const keel::overload::LimitSample& s) override {
    if (samples_ != nullptr) samples_->push_back(s);
    if (next_ != nullptr) limit_ = *next_;
    return limit_;
  }
  keel::overload::RttEstimates Rtt() const override { return {}; }

 private:
  int limit_;
  std::vector<keel::overload::LimitSample>* samples_;
  const int* next_;
};

}  // namespace keel_test
