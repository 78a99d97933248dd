#include "keel/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fmt/format.h"
#include "keel/internal/strings.h"

namespace keel {
namespace {

bool IsMetricNameChar(char c, bool first) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

bool IsLabelNameChar(char c, bool first) { return c != ':' && IsMetricNameChar(c, first); }

absl::Status ValidateName(std::string_view name, MetricsRegistry::Type type) {
  if (name.empty()) return absl::InvalidArgumentError("metric name must not be empty");
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsMetricNameChar(name[i], i == 0)) {
      return absl::InvalidArgumentError(internal::StrCat(
          "metric name \"", name, "\" must match [a-zA-Z_:][a-zA-Z0-9_:]*, bad character at ", i));
    }
  }
  const bool total = name.size() > 6 && name.ends_with("_total");
  if (type == MetricsRegistry::Type::kCounter && !total) {
    return absl::InvalidArgumentError(
        internal::StrCat("counter name \"", name, "\" must end in \"_total\""));
  }
  if (type != MetricsRegistry::Type::kCounter && name.ends_with("_total")) {
    return absl::InvalidArgumentError(
        internal::StrCat("metric name \"", name, "\" ends in \"_total\" but is not a counter"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLabels(std::string_view metric, const Labels& labels,
                            MetricsRegistry::Type type) {
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& label = labels[i].first;
    bool ok = !label.empty() && !label.starts_with("__");
    for (size_t j = 0; ok && j < label.size(); ++j) ok = IsLabelNameChar(label[j], j == 0);
    if (!ok) {
      return absl::InvalidArgumentError(
          internal::StrCat("metric \"", metric, "\": label name \"", label,
                           "\" must match [a-zA-Z_][a-zA-Z0-9_]* and not start with \"__\""));
    }
    if (type == MetricsRegistry::Type::kHistogram && label == "le") {
      return absl::InvalidArgumentError(
          internal::StrCat("histogram \"", metric, "\" may not use the label \"le\""));
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j].first == label) {
        return absl::InvalidArgumentError(
            internal::StrCat("metric \"", metric, "\": label \"", label, "\" given twice"));
      }
    }
  }
  return absl::OkStatus();
}

// Escapes per the text format: label values escape \ " and newline; help escapes \ and newline.
void AppendEscaped(std::string& out, std::string_view text, bool quote) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// Renders `{a="1",b="2"}` (sorted by label name) without the braces, for use as the series key.
std::string RenderLabels(Labels labels) {
  std::sort(labels.begin(), labels.end());
  std::string out;
  for (const auto& [name, value] : labels) {
    if (!out.empty()) out += ',';
    out += name;
    out += "=\"";
    AppendEscaped(out, value, /*quote=*/true);
    out += '"';
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void AppendSample(std::string& out, std::string_view name, std::string_view labels,
                  std::string_view extra_label, std::string_view value) {
  out += name;
  if (!labels.empty() || !extra_label.empty()) {
    out += '{';
    out += labels;
    if (!labels.empty() && !extra_label.empty()) out += ',';
    out += extra_label;
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

const char* TypeName(MetricsRegistry::Type type) {
  switch (type) {
    case MetricsRegistry::Type::kCounter:
      return "counter";
    case MetricsRegistry::Type::kGauge:
      return "gauge";
    case MetricsRegistry::Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // upper_bound finds the first bound > value; "le" buckets include equality, so step back when
  // the previous bound equals value. lower_bound gives exactly that: first bound >= value.
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Snap() const {
  Snapshot snap;
  snap.bounds = bounds_;
  snap.cumulative.reserve(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    snap.cumulative.push_back(running);
  }
  snap.count = running;
  snap.sum = sum_.load(std::memory_order_relaxed);
  return snap;
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

struct MetricsRegistry::Series {
  std::string labels;  // rendered, sorted, without braces
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
  std::function<double()> callback;
};

struct MetricsRegistry::Family {
  std::string help;
  Type type;
  std::vector<double> bounds;  // histograms only
  std::map<std::string, std::unique_ptr<Series>, std::less<>> series;
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Registration& MetricsRegistry::Registration::operator=(
    Registration&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = std::exchange(other.registry_, nullptr);
    name_ = std::move(other.name_);
    key_ = std::move(other.key_);
  }
  return *this;
}

void MetricsRegistry::Registration::Reset() {
  if (registry_ != nullptr) std::exchange(registry_, nullptr)->Remove(name_, key_);
}

absl::StatusOr<MetricsRegistry::Series*> MetricsRegistry::FindOrAdd(
    std::string_view name, std::string_view help, Type type, const Labels& labels,
    const std::vector<double>* bounds, bool callback) {
  if (absl::Status s = ValidateName(name, type); !s.ok()) return s;
  if (absl::Status s = ValidateLabels(name, labels, type); !s.ok()) return s;
  if (bounds != nullptr) {
    for (size_t i = 0; i < bounds->size(); ++i) {
      if (!std::isfinite((*bounds)[i]) || (i > 0 && (*bounds)[i] <= (*bounds)[i - 1])) {
        return absl::InvalidArgumentError(internal::StrCat(
            "histogram \"", name, "\": bounds must be finite and strictly increasing"));
      }
    }
  }
  auto fit = families_.find(name);
  if (fit == families_.end()) {
    auto family = std::make_unique<Family>();
    family->help = std::string(help);
    family->type = type;
    if (bounds != nullptr) family->bounds = *bounds;
    fit = families_.emplace(std::string(name), std::move(family)).first;
  }
  Family& family = *fit->second;
  if (family.type != type) {
    return absl::InvalidArgumentError(internal::StrCat(
        "metric \"", name, "\" is already a ", TypeName(family.type), ", not a ", TypeName(type)));
  }
  if (bounds != nullptr && family.bounds != *bounds) {
    return absl::InvalidArgumentError(
        internal::StrCat("histogram \"", name, "\" is already registered with other bounds"));
  }
  std::string key = RenderLabels(labels);
  auto sit = family.series.find(key);
  if (sit != family.series.end()) {
    if (callback || sit->second->callback) {
      return absl::AlreadyExistsError(
          internal::StrCat("metric \"", name, "{", key, "}\" is already registered"));
    }
    return sit->second.get();
  }
  auto series = std::make_unique<Series>();
  series->labels = key;
  if (!callback) {
    switch (type) {
      case Type::kCounter:
        series->counter = std::make_unique<Counter>();
        break;
      case Type::kGauge:
        series->gauge = std::make_unique<Gauge>();
        break;
      case Type::kHistogram:
        series->histogram = std::make_unique<Histogram>(family.bounds);
        break;
    }
  }
  return family.series.emplace(std::move(key), std::move(series)).first->second.get();
}

absl::StatusOr<Counter*> MetricsRegistry::AddCounter(std::string_view name, std::string_view help,
                                                     const Labels& labels) {
  MutexLock lock(mu_);
  absl::StatusOr<Series*> s = FindOrAdd(name, help, Type::kCounter, labels, nullptr, false);
  if (!s.ok()) return s.status();
  return (*s)->counter.get();
}

absl::StatusOr<Gauge*> MetricsRegistry::AddGauge(std::string_view name, std::string_view help,
                                                 const Labels& labels) {
  MutexLock lock(mu_);
  absl::StatusOr<Series*> s = FindOrAdd(name, help, Type::kGauge, labels, nullptr, false);
  if (!s.ok()) return s.status();
  return (*s)->gauge.get();
}

absl::StatusOr<Histogram*> MetricsRegistry::AddHistogram(std::string_view name,
                                                         std::string_view help,
                                                         std::vector<double> bounds,
                                                         const Labels& labels) {
  MutexLock lock(mu_);
  absl::StatusOr<Series*> s = FindOrAdd(name, help, Type::kHistogram, labels, &bounds, false);
  if (!s.ok()) return s.status();
  return (*s)->histogram.get();
}

absl::StatusOr<MetricsRegistry::Registration> MetricsRegistry::AddCallback(
    std::string_view name, std::string_view help, Type type, const Labels& labels,
    std::function<double()> read) {
  if (!read) {
    return absl::InvalidArgumentError(internal::StrCat("metric \"", name, "\": callback is empty"));
  }
  MutexLock lock(mu_);
  absl::StatusOr<Series*> s = FindOrAdd(name, help, type, labels, nullptr, true);
  if (!s.ok()) return s.status();
  (*s)->callback = std::move(read);
  return Registration(this, std::string(name), (*s)->labels);
}

absl::StatusOr<MetricsRegistry::Registration> MetricsRegistry::AddCounterCallback(
    std::string_view name, std::string_view help, const Labels& labels,
    std::function<double()> read) {
  return AddCallback(name, help, Type::kCounter, labels, std::move(read));
}

absl::StatusOr<MetricsRegistry::Registration> MetricsRegistry::AddGaugeCallback(
    std::string_view name, std::string_view help, const Labels& labels,
    std::function<double()> read) {
  return AddCallback(name, help, Type::kGauge, labels, std::move(read));
}

void MetricsRegistry::Remove(const std::string& name, const std::string& key) {
  MutexLock lock(mu_);
  auto fit = families_.find(name);
  if (fit == families_.end()) return;
  fit->second->series.erase(key);
  if (fit->second->series.empty()) families_.erase(fit);
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::string out;
  MutexLock lock(mu_);
  for (const auto& [name, family] : families_) {
    out += "# HELP ";
    out += name;
    out += ' ';
    AppendEscaped(out, family->help, /*quote=*/false);
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += TypeName(family->type);
    out += '\n';
    for (const auto& [key, series] : family->series) {
      if (series->callback) {
        AppendSample(out, name, key, "", FormatValue(series->callback()));
      } else if (series->counter) {
        AppendSample(out, name, key, "", internal::StrCat(series->counter->Value()));
      } else if (series->gauge) {
        AppendSample(out, name, key, "", FormatValue(series->gauge->Value()));
      } else if (series->histogram) {
        const Histogram::Snapshot snap = series->histogram->Snap();
        const std::string bucket = internal::StrCat(name, "_bucket");
        for (size_t i = 0; i < snap.bounds.size(); ++i) {
          AppendSample(out, bucket, key,
                       internal::StrCat("le=\"", FormatValue(snap.bounds[i]), "\""),
                       internal::StrCat(snap.cumulative[i]));
        }
        AppendSample(out, bucket, key, "le=\"+Inf\"", internal::StrCat(snap.count));
        AppendSample(out, internal::StrCat(name, "_sum"), key, "", FormatValue(snap.sum));
        AppendSample(out, internal::StrCat(name, "_count"), key, "", internal::StrCat(snap.count));
      }
    }
  }
  return out;
}

}  // namespace keel
