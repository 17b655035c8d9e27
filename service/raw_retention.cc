#include "service/raw_retention.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace nexuskv::service {

std::string RawRetention::ToString() const {
  switch (mode) {
    case Mode::kKeep:
      return "keep";
    case Mode::kDrop:
      return "drop";
    case Mode::kAfter:
      return absl::FormatDuration(after);
  }
  return "keep";
}

absl::StatusOr<RawRetention> ParseRawRetention(std::string_view text) {
  RawRetention r;
  if (text == "keep") return r;
  if (text == "drop") {
    r.mode = RawRetention::Mode::kDrop;
    return r;
  }
  absl::Duration d;
  if (absl::ParseDuration(std::string(text), &d) && d >= absl::ZeroDuration() &&
      d < absl::InfiniteDuration()) {
    r.mode = RawRetention::Mode::kAfter;
    r.after = d;
    return r;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--raw_retention=", std::string(text),
                   " is not keep, drop or a duration such as 90s or 12h"));
}

absl::StatusOr<uint32_t> ApplyRawRetention(store::Store& store, const store::SessionKey& key,
                                           const RawRetention& policy, absl::Time now,
                                           std::string_view fit_method) {
  if (policy.mode == RawRetention::Mode::kKeep) return 0u;
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<store::SegmentRecord> segments, store.ListSegments(key));
  const size_t keep = std::min<size_t>(policy.keep_recent_turns, segments.size());
  uint32_t dropped = 0;
  for (size_t t = 0; t + keep < segments.size(); ++t) {
    const store::SegmentRecord& s = segments[t];
    if (s.raw_dropped()) continue;
    if (policy.mode == RawRetention::Mode::kAfter &&
        absl::FromUnixMillis(s.append_time_unix_ms()) + policy.after > now) {
      continue;
    }
    absl::StatusOr<bool> done = store.DropRawTensors(key, s.turn(), fit_method);
    if (absl::IsFailedPrecondition(done.status())) continue;  // no ladder yet
    if (!done.ok()) return done.status();
    dropped += *done ? 1 : 0;
  }
  return dropped;
}

}  // namespace nexuskv::service
