// When the next purge of deleted sessions may start. A purge compacts the deleted ranges with blob
// garbage collection forced, which rewrites every live blob that shares a blob file with a deleted
// one: in practice most live data, so its cost grows with what the store holds, not with what was
// deleted. A fixed interval therefore spends a growing share of the CPU on purges as the store
// fills; this rule also caps that share.
//
//   absl::Time next = NextPurgeAt(started, took, absl::Seconds(10), 0.1);
//   // A 4 s purge that started at 0 allows the next at max(0 + 10 s, 4 s + 36 s) = 40 s.
//
// Pure and thread-safe.
#ifndef NEXUSKV_STORE_INTERNAL_PURGE_PACING_H_
#define NEXUSKV_STORE_INTERNAL_PURGE_PACING_H_

#include "absl/time/time.h"

namespace nexuskv::store::internal {

// The earliest start of the purge after one that started at `started` and took `took`: at least
// `min_interval` after `started`, and late enough that purges take at most `max_share` of the wall
// time (an idle wait of took x (1 / max_share - 1) after it ends). `max_share` >= 1 (or <= 0)
// leaves only the interval.
absl::Time NextPurgeAt(absl::Time started, absl::Duration took, absl::Duration min_interval,
                       double max_share);

}  // namespace nexuskv::store::internal

#endif  // NEXUSKV_STORE_INTERNAL_PURGE_PACING_H_
