#include "store/internal/purge_pacing.h"

#include <algorithm>

namespace nexuskv::store::internal {

absl::Time NextPurgeAt(absl::Time started, absl::Duration took, absl::Duration min_interval,
                       double max_share) {
  const absl::Time by_interval = started + min_interval;
  if (max_share <= 0.0 || max_share >= 1.0) return by_interval;
  const absl::Duration idle = took * (1.0 / max_share - 1.0);
  return std::max(by_interval, started + took + idle);
}

}  // namespace nexuskv::store::internal
