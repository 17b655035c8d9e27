// Corruption over the wire: a flipped byte in a stored tensor of a stopped server's data dir is
// detected when the server reads it back: GetCache answers DATA_LOSS, never the damaged bytes, the
// server logs store_corruption, and every other turn and session is still served intact.
//
// Two ways of damaging a tensor:
//   - RewrittenValue: the tensor's value is changed through RocksDB itself (a valid RocksDB
//     record whose payload no longer matches nexuskv's XXH3 trailer);
//   - FlippedBlobFileByte: one byte of the tensor is flipped inside its blob file on disk (bit
//     rot under RocksDB, caught by the blob record's CRC or by the trailer).
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "store/key_codec.h"
#include "tests/crash/turns.h"
#include "tests/integration/server_process.h"

namespace nexuskv::testing {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSeed = 20260128;
constexpr uint32_t kTokens = 64;  // 8 KiB per tensor: above the store's 4 KiB blob threshold.
constexpr uint32_t kTurns = 3;
constexpr uint32_t kDamagedTurn = 1;
constexpr uint32_t kDamagedLayer = 2;

// The data dir opened directly, with the column families the store creates (store/internal/
// rocksdb_store.cc): blob files for segments and nexus.
class RawDb {
 public:
  static std::unique_ptr<RawDb> Open(const std::string& path) {
    rocksdb::ColumnFamilyOptions records;
    rocksdb::ColumnFamilyOptions blobs;
    blobs.enable_blob_files = true;
    blobs.min_blob_size = 4096;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {"default", records}, {"sessions", records}, {"segments", blobs}, {"nexus", blobs}};
    auto raw = std::unique_ptr<RawDb>(new RawDb);
    rocksdb::DB* db = nullptr;
    const rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(), path, cfs, &raw->cfs_, &db);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return nullptr;
    raw->db_.reset(db);
    return raw;
  }
  ~RawDb() {
    for (auto* cf : cfs_) db_->DestroyColumnFamilyHandle(cf);
    EXPECT_TRUE(db_->Close().ok());
  }
  rocksdb::DB* db() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* segments() { return cfs_[2]; }

 private:
  RawDb() = default;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
};

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = ServerProcess::Start({.extra_flags = {"--sync_writes=true"}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto client = server_->Connect();
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
    for (const std::string session : {"victim", "bystander"}) {
      uint64_t position = 0;
      for (uint32_t t = 0; t < kTurns; ++t) {
        TurnBytes turn = MakeTurnBytes(SmallSpec(), kSeed, session, t, position, kTokens);
        position += kTokens;
        auto ack = client_->AppendTurn(turn.View(SmallSpec()));
        ASSERT_TRUE(ack.ok()) << ack.status();
        digests_[session].push_back(Digest(SmallSpec(), turn));
        if (session == std::string("victim")) victim_.push_back(std::move(turn));
      }
    }
    // Background fits are stored too, so budgeted methods have what they need.
    for (int i = 0; i < 100; ++i) {
      auto info = client_->GetSession("victim");
      if (info.ok() && info->compressed_bytes() > 0) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_TRUE(server_->Stop().ok());
  }

  void TearDown() override {
    if (HasFailure() && server_) std::cerr << "server log:\n" << server_->LogTail() << "\n";
  }

  // The damaged tensor: values of kDamagedLayer of kDamagedTurn of "victim" (tenant "default":
  // the server runs without authentication).
  const std::string& DamagedBytes() const { return victim_[kDamagedTurn].values[kDamagedLayer]; }
  std::string DamagedKey() const {
    return store::EncodeTensorKey("default", "victim", kDamagedTurn, kDamagedLayer,
                                  store::TensorKind::kValues);
  }

  // After the damage: restart, then check what every read returns.
  void ExpectDetectedOnRead() {
    ASSERT_TRUE(server_->Restart().ok());
    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    auto stub = v1::KvMemory::NewStub(channel);
    const size_t log_before = server_->LogTail(1 << 30).size();

    // FULL and a budgeted method over the damaged turn: DATA_LOSS, and no layer at or after the
    // damaged one arrives (the ones before it are intact).
    for (v1::Method method : {v1::FULL, v1::H2O}) {
      SCOPED_TRACE(v1::Method_Name(method));
      v1::GetCacheRequest request;
      request.set_session_id("victim");
      request.set_method(method);
      if (method != v1::FULL) request.mutable_budget()->set_keep_ratio(0.5);
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      auto reader = stub->GetCache(&context, request);
      v1::GetCacheResponse message;
      std::vector<v1::CacheLayer> layers;
      while (reader->Read(&message)) {
        if (message.has_layer()) layers.push_back(message.layer());
      }
      const grpc::Status status = reader->Finish();
      EXPECT_EQ(status.error_code(), grpc::DATA_LOSS) << status.error_message();
      std::string text = status.error_message();
      std::transform(text.begin(), text.end(), text.begin(),
                     [](unsigned char c) { return std::tolower(c); });
      EXPECT_THAT(text, HasSubstr("corrupt"));
      for (const v1::CacheLayer& layer : layers) {
        EXPECT_LT(layer.layer(), kDamagedLayer) << "a layer at or after the damage was served";
        EXPECT_EQ(layer.values().find(std::string_view(DamagedBytes()).substr(0, 256)),
                  std::string::npos);
      }
    }
    // The damage is logged.
    const std::string log = server_->LogTail(1 << 30).substr(log_before);
    EXPECT_THAT(log, HasSubstr("event=store_corruption"));
    EXPECT_THAT(log, HasSubstr("values of turn 1, layer 2 of session"));

    // Everything else is intact: the other turns of the victim, the other session, metadata.
    for (uint32_t t : {0u, 2u}) {
      v1::GetCacheRequest request;
      request.set_session_id("victim");
      request.set_method(v1::FULL);
      request.set_first_turn(t);
      request.set_last_turn(t);
      auto cache = client_->GetCache(request);
      ASSERT_TRUE(cache.ok()) << "turn " << t << ": " << cache.status();
      EXPECT_EQ(CompareFull(SmallSpec(), *cache, {digests_["victim"][t]}), "") << "turn " << t;
    }
    v1::GetCacheRequest request;
    request.set_session_id("bystander");
    request.set_method(v1::FULL);
    auto cache = client_->GetCache(request);
    ASSERT_TRUE(cache.ok()) << cache.status();
    EXPECT_EQ(CompareFull(SmallSpec(), *cache, digests_["bystander"]), "");
    auto info = client_->GetSession("victim");
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->num_turns(), kTurns);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<client::Client> client_;
  std::vector<TurnBytes> victim_;
  std::map<std::string, std::vector<TurnDigest>> digests_;
};

TEST_F(CorruptionTest, RewrittenValueIsDataLoss) {
  {
    std::unique_ptr<RawDb> db = RawDb::Open(server_->data_dir());
    ASSERT_NE(db, nullptr);
    std::string value;
    ASSERT_TRUE(db->db()->Get(rocksdb::ReadOptions(), db->segments(), DamagedKey(), &value).ok());
    ASSERT_EQ(value.size(), DamagedBytes().size() + store::kChecksumBytes);
    ASSERT_EQ(value.substr(0, DamagedBytes().size()), DamagedBytes());
    value[value.size() / 2] ^= 0x10;  // One bit of one element; still a finite float16.
    rocksdb::WriteOptions sync;
    sync.sync = true;
    ASSERT_TRUE(db->db()->Put(sync, db->segments(), DamagedKey(), value).ok());
  }
  ExpectDetectedOnRead();
}

TEST_F(CorruptionTest, FlippedBlobFileByteIsDataLoss) {
  {
    // Move the tensors from the WAL into blob files, as a long-running server's flushes would.
    std::unique_ptr<RawDb> db = RawDb::Open(server_->data_dir());
    ASSERT_NE(db, nullptr);
    ASSERT_TRUE(db->db()->Flush(rocksdb::FlushOptions(), db->segments()).ok());
  }
  bool flipped = false;
  for (const auto& entry : std::filesystem::directory_iterator(server_->data_dir())) {
    if (entry.path().extension() != ".blob") continue;
    std::fstream file(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find(DamagedBytes());
    if (at == std::string::npos) continue;
    file.clear();
    file.seekp(static_cast<std::streamoff>(at + DamagedBytes().size() / 2));
    file.put(static_cast<char>(bytes[at + DamagedBytes().size() / 2] ^ 0x10));
    ASSERT_TRUE(file.good());
    flipped = true;
  }
  ASSERT_TRUE(flipped) << "the damaged tensor's bytes were not found in any blob file of "
                       << server_->data_dir();
  ExpectDetectedOnRead();
}

}  // namespace
}  // namespace nexuskv::testing
