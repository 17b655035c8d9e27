// Structured logging: one logfmt line per event on stderr, safe from any thread.
//
//   nexuskv::Log(LogLevel::kInfo, "segment_appended", {{"session", id}, {"turn", turn}});
// prints
//   ts=2026-11-28T17:10:13.123Z level=info event=segment_appended session=s1 turn=3
//
// Values with spaces, quotes or '=' are quoted. Lines are written with a single write(2) so that
// concurrent events do not interleave.
#ifndef NEXUSKV_COMMON_LOG_H_
#define NEXUSKV_COMMON_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"

namespace nexuskv {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// One key=value field. Numbers and strings both convert implicitly.
class LogField {
 public:
  template <typename T>
  LogField(std::string_view key, const T& value) : key_(key), value_(absl::StrCat(value)) {}
  LogField(std::string_view key, std::string_view value) : key_(key), value_(value) {}
  LogField(std::string_view key, const std::string& value) : key_(key), value_(value) {}
  LogField(std::string_view key, const char* value) : key_(key), value_(value) {}
  LogField(std::string_view key, bool value) : key_(key), value_(value ? "true" : "false") {}

  std::string_view key() const { return key_; }
  const std::string& value() const { return value_; }

 private:
  std::string_view key_;
  std::string value_;
};

// An absl::StrJoin formatter for std::string_view elements (Debian's Abseil has its own
// absl::string_view, which StrJoin's default formatter expects).
inline void AppendView(std::string* out, std::string_view s) { out->append(s); }

// Events below this level are dropped. Default kInfo. Thread-safe.
void SetMinLogLevel(LogLevel level);

// Writes one event line. Thread-safe.
void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields = {});

}  // namespace nexuskv

#endif  // NEXUSKV_COMMON_LOG_H_
