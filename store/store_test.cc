// Store tests for appending and reading segments: turn rules, durability across reopen,
// checksums and concurrency. Fits, deletion and listing: store_session_test.cc.
#include "store/store.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "store/store_test_util.h"

namespace nexuskv::store::testing {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

const SessionKey kKey{.tenant = "tenant-a", .session_id = "s1"};

void ExpectAllTensorsEqual(Store& store, const SessionKey& key,
                           const std::vector<TestSegment>& segments) {
  for (const TestSegment& segment : segments) {
    const uint32_t turn = segment.record.turn();
    for (uint32_t layer = 0; layer < segment.layers.size(); ++layer) {
      const LayerTensors& want = segment.layers[layer];
      for (auto [kind, bytes] :
           {std::pair{TensorKind::kKeys, &want.keys}, std::pair{TensorKind::kValues, &want.values},
            std::pair{TensorKind::kProbeQueries, &want.probe_queries}}) {
        absl::StatusOr<std::string> got = store.ReadTensor(key, turn, layer, kind);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_TRUE(*got == *bytes)
            << "turn " << turn << " layer " << layer << " " << TensorKindName(kind);
        // The same bytes where RocksDB read them, without the copy into a string.
        absl::StatusOr<StoredTensor> pinned = store.PinTensor(key, turn, layer, kind);
        ASSERT_TRUE(pinned.ok()) << pinned.status();
        EXPECT_TRUE(pinned->bytes() == *bytes)
            << "pinned: turn " << turn << " layer " << layer << " " << TensorKindName(kind);
      }
    }
  }
}

TEST_F(StoreTest, AppendsTurnsAndReadsEveryTensorBackBitIdentical) {
  const std::vector<TestSegment> segments = {
      MakeSegment(0, 10, 5, 2, 1), MakeSegment(1, 15, 7, 0, 2), MakeSegment(2, 22, 3, 3, 3)};
  uint64_t raw_bytes = 0;
  for (const TestSegment& segment : segments) {
    absl::StatusOr<AppendOutcome> out = Append(kKey, segment);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_FALSE(out->already_stored);
    EXPECT_EQ(out->session.num_turns(), segment.record.turn() + 1);
    for (const LayerTensors& l : segment.layers) {
      raw_bytes += l.keys.size() + l.values.size() + l.probe_queries.size();
    }
  }
  ExpectAllTensorsEqual(*store_, kKey, segments);
  // P = 0: the probe tensor reads as empty, not NotFound.
  absl::StatusOr<std::string> no_probes = store_->ReadTensor(kKey, 1, 0, TensorKind::kProbeQueries);
  ASSERT_TRUE(no_probes.ok()) << no_probes.status();
  EXPECT_EQ(*no_probes, "");

  absl::StatusOr<SessionRecord> session = store_->GetSession(kKey);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->session_id(), "s1");
  EXPECT_TRUE(MessageDifferencer::Equals(session->model(), Spec()));
  EXPECT_EQ(session->num_turns(), 3u);
  EXPECT_EQ(session->total_tokens(), 15u);
  EXPECT_EQ(session->next_position(), 25u);
  EXPECT_EQ(session->raw_bytes(), raw_bytes);
  EXPECT_EQ(session->compressed_bytes(), 0u);
  EXPECT_GT(session->create_time_unix_ms(), 0);
  EXPECT_GE(session->update_time_unix_ms(), session->create_time_unix_ms());

  absl::StatusOr<std::vector<SegmentRecord>> records = store_->ListSegments(kKey);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 3u);
  for (uint32_t turn = 0; turn < 3; ++turn) {
    const SegmentRecord& got = (*records)[turn];
    EXPECT_EQ(got.turn(), turn);
    EXPECT_EQ(got.num_tokens(), segments[turn].record.num_tokens());
    EXPECT_EQ(got.first_position(), segments[turn].record.first_position());
    EXPECT_EQ(got.role(), segments[turn].record.role());
    EXPECT_EQ(got.num_probe_queries(), segments[turn].record.num_probe_queries());
    EXPECT_EQ(got.layer_digests_size(), static_cast<int>(kLayers));
  }
  EXPECT_EQ(store_->ReadTensor(kKey, 3, 0, TensorKind::kKeys).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadTensor(kKey, 0, kLayers, TensorKind::kKeys).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->PinTensor(kKey, 3, 0, TensorKind::kKeys).status(),
            store_->ReadTensor(kKey, 3, 0, TensorKind::kKeys).status());
  // Flushed to blob files, the pinned read holds RocksDB's buffer: still the same bytes.
  Reopen();
  ExpectAllTensorsEqual(*store_, kKey, segments);
  EXPECT_EQ(store_->GetSession({"tenant-a", "nope"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListSegments({"tenant-a", "nope"}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, TurnsPast255KeepTheirOrder) {
  std::vector<TestSegment> segments;
  for (uint32_t turn = 0; turn < 260; ++turn) {
    segments.push_back(MakeSegment(turn, turn, 1, 0, turn));
    ASSERT_TRUE(Append(kKey, segments.back()).ok()) << turn;
  }
  absl::StatusOr<std::vector<SegmentRecord>> records = store_->ListSegments(kKey);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 260u);
  for (uint32_t turn = 0; turn < 260; ++turn) EXPECT_EQ((*records)[turn].turn(), turn);
}

TEST_F(StoreTest, IdenticalResendIsAlreadyStoredAndChangesNothing) {
  const std::vector<TestSegment> segments = AppendTurns(kKey, 2);
  absl::StatusOr<SessionRecord> before = store_->GetSession(kKey);
  ASSERT_TRUE(before.ok()) << before.status();
  for (const TestSegment& segment : segments) {
    absl::StatusOr<AppendOutcome> again = Append(kKey, segment);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->already_stored);
    EXPECT_TRUE(MessageDifferencer::Equals(again->session, *before));
  }
  absl::StatusOr<SessionRecord> after = store_->GetSession(kKey);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*after, *before));
  ExpectAllTensorsEqual(*store_, kKey, segments);
}

TEST_F(StoreTest, DifferentPayloadForAStoredTurnIsAlreadyExists) {
  const std::vector<TestSegment> segments = AppendTurns(kKey, 2);
  TestSegment changed_bytes = segments[0];
  changed_bytes.layers[2].values[5] ^= 1;
  absl::Status status = Append(kKey, changed_bytes).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("turn 0 of session \"s1\" is already stored with "
                        "different content"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("layer 2"));

  TestSegment changed_role = segments[1];
  changed_role.record.set_role(nexuskv::v1::ROLE_TOOL);
  EXPECT_EQ(Append(kKey, changed_role).status().code(), absl::StatusCode::kAlreadyExists);
  TestSegment changed_probes = segments[1];
  changed_probes.record.set_num_probe_queries(1);
  EXPECT_EQ(Append(kKey, changed_probes).status().code(), absl::StatusCode::kAlreadyExists);

  ExpectAllTensorsEqual(*store_, kKey, segments);
  absl::StatusOr<SessionRecord> session = store_->GetSession(kKey);
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->num_turns(), 2u);
}

TEST_F(StoreTest, TurnGapIsFailedPreconditionAndWritesNothing) {
  absl::Status first = Append(kKey, MakeSegment(1, 0, 4, 0, 1)).status();
  EXPECT_EQ(first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(first.message()), HasSubstr("expects turn 0 next"));
  EXPECT_EQ(store_->GetSession(kKey).status().code(), absl::StatusCode::kNotFound);

  AppendTurns(kKey, 1);
  EXPECT_EQ(Append(kKey, MakeSegment(2, 4, 4, 0, 2)).status().message(),
            "session \"s1\" expects turn 1 next (it has 1 turn); got turn 2");
  AppendTurns(kKey, 3);
  absl::Status gap = Append(kKey, MakeSegment(5, 12, 4, 0, 9)).status();
  EXPECT_EQ(gap.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gap.message(), "session \"s1\" expects turn 3 next (it has 3 turns); got turn 5");
  EXPECT_EQ(store_->ReadTensor(kKey, 5, 0, TensorKind::kKeys).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, FirstPositionGapIsFailedPrecondition) {
  AppendTurns(kKey, 2);  // Positions 0..7.
  absl::Status status = Append(kKey, MakeSegment(2, 9, 4, 0, 1)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("must start at position 8"));
  EXPECT_TRUE(Append(kKey, MakeSegment(2, 8, 4, 0, 1)).ok());
}

TEST_F(StoreTest, FirstTurnMayStartMidContext) {
  absl::StatusOr<AppendOutcome> out = Append(kKey, MakeSegment(0, 1000, 4, 0, 1));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->session.next_position(), 1004u);
}

TEST_F(StoreTest, SpecMismatchIsFailedPrecondition) {
  const std::vector<TestSegment> segments = AppendTurns(kKey, 1);
  nexuskv::v1::ModelSpec other = Spec();
  other.set_num_kv_heads(8);
  absl::Status next = Append(kKey, MakeSegment(1, 4, 4, 0, 1), other).status();
  EXPECT_EQ(next.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(next.message()),
              HasSubstr("model spec differs from the session's: num_kv_heads 8 vs 2"));
  other = Spec();
  other.set_dtype(nexuskv::v1::DTYPE_BFLOAT16);
  absl::Status resend = Append(kKey, segments[0], other).status();
  EXPECT_EQ(resend.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(resend.message()), HasSubstr("dtype DTYPE_BFLOAT16 vs DTYPE_FLOAT16"));
}

TEST_F(StoreTest, WrongLayerCountOrBadIdIsInvalidArgument) {
  TestSegment segment = MakeSegment(0, 0, 4, 0, 1);
  segment.layers.pop_back();
  EXPECT_EQ(Append(kKey, segment).status().code(), absl::StatusCode::kInvalidArgument);
  const TestSegment good = MakeSegment(0, 0, 4, 0, 1);
  for (const SessionKey& bad : {SessionKey{"", "s"}, SessionKey{"t", ""}, SessionKey{"t", "a/b"},
                                SessionKey{"t", std::string(129, 'x')}}) {
    EXPECT_EQ(Append(bad, good).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->GetSession(bad).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->ReadTensor(bad, 0, 0, TensorKind::kKeys).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(StoreTest, ReopenFindsEverythingAndContinues) {
  std::vector<TestSegment> segments = AppendTurns(kKey, 3);
  Reopen();
  ExpectAllTensorsEqual(*store_, kKey, segments);
  absl::StatusOr<SessionRecord> session = store_->GetSession(kKey);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->num_turns(), 3u);
  EXPECT_TRUE(Append(kKey, segments[1]).value().already_stored);
  segments.push_back(MakeSegment(3, 12, 4, 2, 77));
  ASSERT_TRUE(Append(kKey, segments.back()).ok());
  Reopen();
  ExpectAllTensorsEqual(*store_, kKey, segments);
}

TEST_F(StoreTest, OpeningAnOpenStoreIsFailedPrecondition) {
  absl::StatusOr<std::unique_ptr<Store>> second = Store::Open(options_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(dir_));
}

TEST_F(StoreTest, PathThatIsAFileIsInvalidArgument) {
  const std::string file = dir_ + "/a-file";
  { std::ofstream(file) << "x"; }
  Options options = options_;
  options.path = file;
  EXPECT_EQ(Store::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.path = "";
  EXPECT_EQ(Store::Open(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// Rewrites one stored value through a direct RocksDB open of the store's database.
void FlipStoredByte(const std::string& path, const std::string& cf_name, const std::string& key,
                    size_t byte) {
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const char* name : {"default", "sessions", "segments", "nexus"}) {
    rocksdb::ColumnFamilyOptions cf_options;
    cf_options.enable_blob_files = std::string(name) == "segments" || std::string(name) == "nexus";
    cfs.emplace_back(name, cf_options);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), path, cfs, &handles, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::ColumnFamilyHandle* cf = handles[cf_name == "segments" ? 2 : 3];
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), cf, key, &value).ok());
  ASSERT_LT(byte, value.size());
  value[byte] ^= 0x40;
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), cf, key, value).ok());
  for (rocksdb::ColumnFamilyHandle* handle : handles) db->DestroyColumnFamilyHandle(handle);
  ASSERT_TRUE(db->Close().ok());
}

TEST_F(StoreTest, FlippedByteIsDataLoss) {
  const std::vector<TestSegment> segments = AppendTurns(kKey, 2);
  ASSERT_TRUE(store_->PutFit(kKey, 1, "sonic", {"fit0", "fit1", "fit2"}).ok());
  Close();
  FlipStoredByte(dir_, "segments",
                 EncodeTensorKey(kKey.tenant, kKey.session_id, 1, 2, TensorKind::kValues), 3);
  FlipStoredByte(dir_, "nexus", EncodeFitKey(kKey.tenant, kKey.session_id, 1, "sonic", 0), 1);
  Reopen();
  // Reopening flushed the WAL: the tensors now live in blob files, whose read path is under test.
  bool has_blob_file = false;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    has_blob_file |= entry.path().extension() == ".blob";
  }
  EXPECT_TRUE(has_blob_file);
  absl::Status status = store_->ReadTensor(kKey, 1, 2, TensorKind::kValues).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("checksum mismatch"));
  EXPECT_EQ(store_->PinTensor(kKey, 1, 2, TensorKind::kValues).status(), status);
  EXPECT_EQ(store_->GetFit(kKey, 1, "sonic", 0).status().code(), absl::StatusCode::kDataLoss);
  // Everything else is intact.
  EXPECT_EQ(store_->ReadTensor(kKey, 1, 2, TensorKind::kKeys).value(), segments[1].layers[2].keys);
  EXPECT_EQ(store_->GetFit(kKey, 1, "sonic", 1).value(), "fit1");
}

TEST_F(StoreTest, ConcurrentAppendsToDifferentSessions) {
  constexpr int kThreads = 6;
  constexpr uint32_t kTurns = 15;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const SessionKey key{"tenant-a", "session-" + std::to_string(t)};
      for (uint32_t turn = 0; turn < kTurns; ++turn) {
        if (!Append(key, MakeSegment(turn, 4 * turn, 4, 1, t * 100 + turn)).ok()) ++failures;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    const SessionKey key{"tenant-a", "session-" + std::to_string(t)};
    absl::StatusOr<SessionRecord> session = store_->GetSession(key);
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ(session->num_turns(), kTurns);
    EXPECT_EQ(session->next_position(), 4 * kTurns);
    EXPECT_EQ(store_->ReadTensor(key, kTurns - 1, 0, TensorKind::kKeys).value(),
              MakeSegment(kTurns - 1, 0, 4, 1, t * 100 + kTurns - 1).layers[0].keys);
  }
}

// Racing retries of the same turns: each turn is appended exactly once, the rest see it stored.
TEST_F(StoreTest, ConcurrentRetriesOfOneSessionAppendEachTurnOnce) {
  constexpr int kThreads = 4;
  constexpr uint32_t kTurns = 20;
  std::vector<TestSegment> segments;
  for (uint32_t turn = 0; turn < kTurns; ++turn) {
    segments.push_back(MakeSegment(turn, 4 * turn, 4, 0, turn));
  }
  std::atomic<int> appended{0}, already{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (const TestSegment& segment : segments) {
        absl::StatusOr<AppendOutcome> out = Append(kKey, segment);
        if (!out.ok()) {
          ++other;
        } else if (out->already_stored) {
          ++already;
        } else {
          ++appended;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  // Each thread sends its turns in order, so every call finds its turn next or already stored.
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(appended.load(), static_cast<int>(kTurns));
  EXPECT_EQ(already.load(), static_cast<int>((kThreads - 1) * kTurns));
  EXPECT_EQ(store_->GetSession(kKey).value().num_turns(), kTurns);
}

}  // namespace
}  // namespace nexuskv::store::testing
