// Conversions between the store's records (store/records.proto) and the contract's messages.
//
//   store::SegmentRecord record = SegmentRecordOf(segment.header, segment.layers, absl::Now());
//   v1::SessionInfo info = SessionInfoOf(session);
//   *info.add_turns() = TurnInfoOf(record);  // TurnInfo.fits is the caller's to fill
//
// Pure functions; thread-safe.
#ifndef NEXUSKV_SERVICE_RECORDS_H_
#define NEXUSKV_SERVICE_RECORDS_H_

#include <vector>

#include "absl/time/time.h"
#include "nexuskv/v1/kv_memory.pb.h"
#include "store/store.h"

namespace nexuskv::service {

// The record of a validated segment appended at `now`; raw_bytes counts every tensor byte.
store::SegmentRecord SegmentRecordOf(const nexuskv::v1::SegmentHeader& header,
                                     const std::vector<store::LayerTensors>& layers,
                                     absl::Time now);

// SessionInfo without its turns.
nexuskv::v1::SessionInfo SessionInfoOf(const store::SessionRecord& record);

// TurnInfo without its fits.
nexuskv::v1::TurnInfo TurnInfoOf(const store::SegmentRecord& record);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_RECORDS_H_
