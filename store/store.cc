#include "store/store.h"

#include "store/internal/rocksdb_store.h"

namespace nexuskv::store {

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const Options& options) {
  return internal::RocksDbStore::Open(options);
}

}  // namespace nexuskv::store
