#include "store/store.h"

#include "store/internal/rocksdb_store.h"

namespace nexuskv::store {

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const Options& options) {
  return internal::RocksDbStore::Open(options);
}

StoredTensor::StoredTensor(std::string bytes) {
  auto owned = std::make_shared<const std::string>(std::move(bytes));
  bytes_ = *owned;
  owner_ = std::move(owned);
}

absl::StatusOr<StoredTensor> Store::PinTensor(const SessionKey& key, uint32_t turn, uint32_t layer,
                                              TensorKind kind) {
  absl::StatusOr<std::string> read = ReadTensor(key, turn, layer, kind);
  if (!read.ok()) return read.status();
  return StoredTensor(*std::move(read));
}

absl::StatusOr<bool> Store::HasFit(const SessionKey& key, uint32_t turn, std::string_view method) {
  for (const uint32_t layer : {kFitSummaryLayer, uint32_t{0}}) {
    absl::StatusOr<std::optional<std::string>> stored = GetFit(key, turn, method, layer);
    if (!stored.ok()) return stored.status();
    if (stored->has_value()) return true;
  }
  return false;
}

}  // namespace nexuskv::store
