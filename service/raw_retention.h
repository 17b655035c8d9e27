// Raw retention (--raw_retention): when a turn's raw KV leaves the store once its SONIC ladder is
// stored. That is where the tier saves memory; the price is that only SONIC can serve the turn
// afterwards (FULL, the selection methods and keep_recent_turns on it are FAILED_PRECONDITION).
//
//   keep      never drop (the default)
//   drop      drop as soon as the turn's SONIC ladder is stored
//   DURATION  drop once the turn is older than DURATION ("90s", "12h", absl::ParseDuration)
// In every mode the newest keep_recent_turns turns of a session keep their raw KV, so a resumed
// conversation can still ask for its latest turn raw (GetCacheRequest.keep_recent_turns).
//
//   NEXUSKV_ASSIGN_OR_RETURN(RawRetention r, ParseRawRetention("6h"));
//   NEXUSKV_ASSIGN_OR_RETURN(uint32_t dropped, ApplyRawRetention(*store, key, r, absl::Now(),
//   "SONIC"));
//
// Enforcement: the core applies it to a session after each append and after each stored SONIC
// fit; for DURATION a core thread also sweeps every session each `sweep`.
// Thread-safe (the store serializes the drops).
#ifndef NEXUSKV_SERVICE_RAW_RETENTION_H_
#define NEXUSKV_SERVICE_RAW_RETENTION_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "store/store.h"

namespace nexuskv::service {

struct RawRetention {
  enum class Mode { kKeep, kDrop, kAfter };
  Mode mode = Mode::kKeep;
  absl::Duration after = absl::InfiniteDuration();  // kAfter only
  uint32_t keep_recent_turns = 1;
  absl::Duration sweep = absl::Seconds(60);  // kAfter only; <= 0: no sweeper thread

  // "keep", "drop" or the duration, as the flag takes it.
  std::string ToString() const;
};

// Parses the --raw_retention value. InvalidArgument (naming the flag) otherwise.
absl::StatusOr<RawRetention> ParseRawRetention(std::string_view text);

// Drops the raw KV of every turn of the session that the policy lets go and whose SONIC ladder is
// stored; returns how many turns it dropped. A turn without a ladder yet is skipped (its fit's
// completion applies the policy again). NotFound when the session is gone.
// `fit_method` names the method whose stored fit serves a turn without its raw KV
// (CompressorRegistry::ServesWithoutRaw).
absl::StatusOr<uint32_t> ApplyRawRetention(store::Store& store, const store::SessionKey& key,
                                           const RawRetention& policy, absl::Time now,
                                           std::string_view fit_method);

}  // namespace nexuskv::service

#endif  // NEXUSKV_SERVICE_RAW_RETENTION_H_
