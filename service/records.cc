#include "service/records.h"

#include <algorithm>

namespace nexuskv::service {

namespace v1 = ::nexuskv::v1;

store::SegmentRecord SegmentRecordOf(const v1::SegmentHeader& h,
                                     const std::vector<store::LayerTensors>& layers,
                                     absl::Time now) {
  store::SegmentRecord record;
  record.set_turn(h.turn());
  record.set_num_tokens(h.num_tokens());
  record.set_first_position(h.first_position());
  record.set_role(h.role());
  record.set_num_probe_queries(h.num_probe_queries());
  record.set_ttl_seconds(h.ttl_seconds());
  *record.mutable_nexus_offsets() = h.nexus_offsets();
  *record.mutable_probe_offsets() = h.probe_offsets();
  record.set_has_token_scores(h.has_token_scores());
  record.set_append_time_unix_ms(absl::ToUnixMillis(now));
  uint64_t bytes = 0;
  for (const store::LayerTensors& l : layers) {
    bytes += l.keys.size() + l.values.size() + l.probe_queries.size() + l.token_scores.size();
  }
  record.set_raw_bytes(bytes);
  return record;
}

v1::SessionInfo SessionInfoOf(const store::SessionRecord& r) {
  v1::SessionInfo info;
  info.set_session_id(r.session_id());
  *info.mutable_model() = r.model();
  info.set_num_turns(r.num_turns());
  info.set_total_tokens(r.total_tokens());
  info.set_next_position(r.next_position());
  info.set_raw_bytes(r.raw_bytes());
  info.set_compressed_bytes(r.compressed_bytes());
  info.set_create_time_unix_ms(r.create_time_unix_ms());
  info.set_update_time_unix_ms(r.update_time_unix_ms());
  info.set_expire_time_unix_ms(r.expire_time_unix_ms());
  const uint64_t stored_raw = r.raw_bytes() - std::min(r.dropped_raw_bytes(), r.raw_bytes());
  info.set_stored_raw_bytes(stored_raw);
  info.set_stored_bytes(stored_raw + r.compressed_bytes());
  return info;
}

v1::TurnInfo TurnInfoOf(const store::SegmentRecord& s) {
  v1::TurnInfo t;
  t.set_turn(s.turn());
  t.set_role(s.role());
  t.set_num_tokens(s.num_tokens());
  t.set_first_position(s.first_position());
  t.set_num_probe_queries(s.num_probe_queries());
  t.set_raw_bytes(s.raw_bytes());
  t.set_raw_dropped(s.raw_dropped());
  return t;
}

}  // namespace nexuskv::service
