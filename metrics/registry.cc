#include "metrics/registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nexuskv::metrics {
namespace {

bool IsNameChar(char c, bool first, bool allow_colon) {
  const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  const bool digit = c >= '0' && c <= '9';
  return letter || (allow_colon && c == ':') || (!first && digit);
}

bool IsValidName(std::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, allow_colon)) return false;
  }
  return true;
}

// Shortest text that parses back to the same double; Prometheus' spellings of the specials.
std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

// Escapes backslash and newline (HELP text); with quotes, also the double quote (label values).
std::string Escape(std::string_view text, bool quotes) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quotes && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

// {a="x",b="y"}, with `extra` (already formatted, e.g. le="0.5") last; empty when there are no
// labels at all.
std::string LabelSet(const std::vector<std::string>& names, const std::vector<std::string>& values,
                     std::string_view extra = {}) {
  std::vector<std::string> pairs;
  for (size_t i = 0; i < names.size(); ++i) {
    pairs.push_back(absl::StrCat(names[i], "=\"", Escape(values[i], /*quotes=*/true), "\""));
  }
  if (!extra.empty()) pairs.emplace_back(extra);
  if (pairs.empty()) return "";
  return absl::StrCat("{", absl::StrJoin(pairs, ","), "}");
}

}  // namespace

void Counter::Increment(double amount) {
  if (amount > 0) value_.fetch_add(amount, std::memory_order_relaxed);
}

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds), counts_(new std::atomic<uint64_t>[bounds->size() + 1]) {
  for (size_t i = 0; i <= bounds_->size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // The first bucket whose upper bound holds the value; past the last bound: +Inf.
  const size_t bucket =
      std::lower_bound(bounds_->begin(), bounds_->end(), value) - bounds_->begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_->size(); ++i) {
    total += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative.push_back(total);
  }
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

template <typename Series>
Series& Family<Series>::With(const std::vector<std::string>& values) {
  if (values.size() != num_labels_) {
    std::fprintf(stderr, "metrics: %s takes %zu label values, got %zu\n", name_.c_str(),
                 num_labels_, values.size());
    std::abort();
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Series>& series = series_[values];
  if (series == nullptr) {
    if constexpr (std::is_same_v<Series, Histogram>) {
      series = std::make_unique<Histogram>(&bounds_);
    } else {
      series = std::make_unique<Series>();
    }
  }
  return *series;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

struct Registry::Entry {
  std::string name;
  std::string help;
  std::string type;  // counter, gauge or histogram
  std::vector<std::string> label_names;
  std::variant<std::unique_ptr<CounterFamily>, std::unique_ptr<GaugeFamily>,
               std::unique_ptr<HistogramFamily>, std::function<std::vector<GaugeSample>()>>
      source;
};

Registry::Registry() = default;
Registry::~Registry() = default;

absl::Status Registry::Admit(std::string_view name, const std::vector<std::string>& label_names,
                             bool histogram) {
  if (!IsValidName(name, /*allow_colon=*/true)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric name \"", std::string(name), "\" is not [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  std::set<std::string_view> seen;
  for (const std::string& label : label_names) {
    if (!IsValidName(label, /*allow_colon=*/false) || label.rfind("__", 0) == 0 ||
        (histogram && label == "le") || !seen.insert(label).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label \"", label, "\" of metric ", std::string(name),
          " is not [a-zA-Z_][a-zA-Z0-9_]*, is reserved (__*, le on a histogram) or repeated"));
    }
  }
  for (const std::unique_ptr<Entry>& entry : entries_) {
    if (entry->name == name) {
      return absl::AlreadyExistsError(
          absl::StrCat("metric ", std::string(name), " is already registered"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CounterFamily*> Registry::AddCounter(std::string_view name, std::string_view help,
                                                    std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  if (absl::Status admitted = Admit(name, label_names, false); !admitted.ok()) return admitted;
  auto family =
      std::unique_ptr<CounterFamily>(new CounterFamily(std::string(name), label_names.size()));
  CounterFamily* out = family.get();
  entries_.push_back(std::make_unique<Entry>(Entry{std::string(name), std::string(help), "counter",
                                                   std::move(label_names), std::move(family)}));
  return out;
}

absl::StatusOr<GaugeFamily*> Registry::AddGauge(std::string_view name, std::string_view help,
                                                std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  if (absl::Status admitted = Admit(name, label_names, false); !admitted.ok()) return admitted;
  auto family =
      std::unique_ptr<GaugeFamily>(new GaugeFamily(std::string(name), label_names.size()));
  GaugeFamily* out = family.get();
  entries_.push_back(std::make_unique<Entry>(Entry{std::string(name), std::string(help), "gauge",
                                                   std::move(label_names), std::move(family)}));
  return out;
}

absl::StatusOr<HistogramFamily*> Registry::AddHistogram(std::string_view name,
                                                        std::string_view help,
                                                        std::vector<std::string> label_names,
                                                        std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  if (absl::Status admitted = Admit(name, label_names, true); !admitted.ok()) return admitted;
  bool increasing = !bounds.empty();
  for (size_t i = 0; i < bounds.size(); ++i) {
    increasing = increasing && std::isfinite(bounds[i]) && (i == 0 || bounds[i - 1] < bounds[i]);
  }
  if (!increasing) {
    return absl::InvalidArgumentError(absl::StrCat("the buckets of histogram ", std::string(name),
                                                   " must be finite and strictly increasing"));
  }
  auto family = std::unique_ptr<HistogramFamily>(
      new HistogramFamily(std::string(name), label_names.size(), std::move(bounds)));
  HistogramFamily* out = family.get();
  entries_.push_back(
      std::make_unique<Entry>(Entry{std::string(name), std::string(help), "histogram",
                                    std::move(label_names), std::move(family)}));
  return out;
}

absl::Status Registry::AddGaugeCallback(std::string_view name, std::string_view help,
                                        std::vector<std::string> label_names,
                                        std::function<std::vector<GaugeSample>()> collect) {
  absl::MutexLock lock(&mu_);
  if (absl::Status admitted = Admit(name, label_names, false); !admitted.ok()) return admitted;
  entries_.push_back(std::make_unique<Entry>(Entry{std::string(name), std::string(help), "gauge",
                                                   std::move(label_names), std::move(collect)}));
  return absl::OkStatus();
}

namespace {

// Appends one line per series of a counter or gauge family.
void AppendScalars(const std::string& name, const std::vector<std::string>& label_names,
                   const std::map<std::vector<std::string>, double>& values, std::string& out) {
  for (const auto& [label_values, value] : values) {
    absl::StrAppend(&out, name, LabelSet(label_names, label_values), " ", FormatValue(value), "\n");
  }
}

void AppendHistogram(const std::string& name, const std::vector<std::string>& label_names,
                     const std::vector<double>& bounds, const std::vector<std::string>& values,
                     const Histogram::Snapshot& snapshot, std::string& out) {
  for (size_t i = 0; i <= bounds.size(); ++i) {
    const std::string le =
        absl::StrCat("le=\"", i < bounds.size() ? FormatValue(bounds[i]) : "+Inf", "\"");
    absl::StrAppend(&out, name, "_bucket", LabelSet(label_names, values, le), " ",
                    snapshot.cumulative[i], "\n");
  }
  const std::string labels = LabelSet(label_names, values);
  absl::StrAppend(&out, name, "_sum", labels, " ", FormatValue(snapshot.sum), "\n");
  absl::StrAppend(&out, name, "_count", labels, " ", snapshot.cumulative.back(), "\n");
}

template <typename Series>
std::map<std::vector<std::string>, double> ReadScalars(
    const std::map<std::vector<std::string>, std::unique_ptr<Series>>& series) {
  std::map<std::vector<std::string>, double> values;
  for (const auto& [label_values, one] : series) values[label_values] = one->value();
  return values;
}

}  // namespace

std::string Registry::Exposition() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const std::unique_ptr<Entry>& entry : entries_) {
    absl::StrAppend(&out, "# HELP ", entry->name, " ", Escape(entry->help, /*quotes=*/false),
                    "\n# TYPE ", entry->name, " ", entry->type, "\n");
    if (const auto* counters = std::get_if<std::unique_ptr<CounterFamily>>(&entry->source)) {
      absl::MutexLock family_lock(&(*counters)->mu_);
      AppendScalars(entry->name, entry->label_names, ReadScalars((*counters)->series_), out);
    } else if (const auto* gauges = std::get_if<std::unique_ptr<GaugeFamily>>(&entry->source)) {
      absl::MutexLock family_lock(&(*gauges)->mu_);
      AppendScalars(entry->name, entry->label_names, ReadScalars((*gauges)->series_), out);
    } else if (const auto* histograms =
                   std::get_if<std::unique_ptr<HistogramFamily>>(&entry->source)) {
      const HistogramFamily& family = **histograms;
      absl::MutexLock family_lock(&family.mu_);
      for (const auto& [label_values, histogram] : family.series_) {
        AppendHistogram(entry->name, entry->label_names, family.bounds_, label_values,
                        histogram->Read(), out);
      }
    } else {
      const auto& collect = std::get<std::function<std::vector<GaugeSample>()>>(entry->source);
      std::map<std::vector<std::string>, double> values;
      for (GaugeSample& sample : collect()) {
        if (sample.label_values.size() != entry->label_names.size()) continue;
        values[std::move(sample.label_values)] = sample.value;
      }
      AppendScalars(entry->name, entry->label_names, values, out);
    }
  }
  return out;
}

}  // namespace nexuskv::metrics
