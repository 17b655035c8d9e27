// Store tests for whole sessions: fits, deletion, listing and tenant isolation.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store.h"
#include "store/store_test_util.h"

namespace nexuskv::store::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const SessionKey kKey{.tenant = "tenant-a", .session_id = "s1"};

uint64_t CompressedBytes(Store& store, const SessionKey& key) {
  return store.GetSession(key).value().compressed_bytes();
}

TEST_F(StoreTest, FitsPutGetReplaceAndAccounting) {
  AppendTurns(kKey, 2);
  const uint64_t raw = store_->GetSession(kKey).value().raw_bytes();
  ASSERT_TRUE(store_->PutFit(kKey, 0, "sonic", {"aaaa", std::string(300, 'b'), ""}).ok());
  EXPECT_EQ(CompressedBytes(*store_, kKey), 304u);
  EXPECT_EQ(store_->GetFit(kKey, 0, "sonic", 0).value(), "aaaa");
  EXPECT_EQ(store_->GetFit(kKey, 0, "sonic", 1).value(), std::string(300, 'b'));
  EXPECT_EQ(store_->GetFit(kKey, 0, "sonic", 2).value(), "");

  // Replacing un-counts the old fit; another method or turn adds to it.
  ASSERT_TRUE(store_->PutFit(kKey, 0, "sonic", {"x", "yy", "zzz"}).ok());
  EXPECT_EQ(CompressedBytes(*store_, kKey), 6u);
  EXPECT_EQ(store_->GetFit(kKey, 0, "sonic", 1).value(), "yy");
  ASSERT_TRUE(store_->PutFit(kKey, 0, "h2o", {"1", "2", "3"}).ok());
  ASSERT_TRUE(store_->PutFit(kKey, 1, "sonic", {"1234", "", ""}).ok());
  EXPECT_EQ(CompressedBytes(*store_, kKey), 13u);
  EXPECT_EQ(store_->GetFit(kKey, 0, "h2o", 2).value(), "3");
  EXPECT_EQ(store_->GetFit(kKey, 0, "sonic", 2).value(), "zzz");
  EXPECT_EQ(store_->GetSession(kKey).value().raw_bytes(), raw);

  // Never stored: nullopt, not an error.
  absl::StatusOr<std::optional<std::string>> missing = store_->GetFit(kKey, 1, "h2o", 0);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
  EXPECT_FALSE(store_->GetFit(kKey, 0, "sonic", 3).value().has_value());

  Reopen();
  EXPECT_EQ(store_->GetFit(kKey, 0, "sonic", 0).value(), "x");
  EXPECT_EQ(CompressedBytes(*store_, kKey), 13u);
}

TEST_F(StoreTest, PutFitRefusals) {
  AppendTurns(kKey, 1);
  EXPECT_EQ(store_->PutFit(kKey, 1, "sonic", {"a", "b", "c"}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->PutFit({"tenant-a", "nope"}, 0, "sonic", {"a", "b", "c"}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->PutFit(kKey, 0, "sonic", {"a"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PutFit(kKey, 0, "so nic", {"a", "b", "c"}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PutFit(kKey, 0, "", {"a", "b", "c"}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->GetFit(kKey, 0, "", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressedBytes(*store_, kKey), 0u);
  EXPECT_FALSE(store_->GetFit(kKey, 0, "sonic", 0).value().has_value());
}

TEST_F(StoreTest, DeleteRemovesEverythingOfTheSessionOnly) {
  AppendTurns(kKey, 3);
  ASSERT_TRUE(store_->PutFit(kKey, 2, "sonic", {"abc", "de", "f"}).ok());
  // Neighbours in key order must survive.
  const SessionKey before{"tenant-a", "s"}, after{"tenant-a", "s1-"}, longer{"tenant-a", "s10"};
  const SessionKey other_tenant{"tenant-b", "s1"};
  for (const SessionKey& key : {before, after, longer, other_tenant}) AppendTurns(key, 1, 5);
  const SessionRecord session = store_->GetSession(kKey).value();

  absl::StatusOr<DeleteOutcome> deleted = store_->DeleteSession(kKey);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted_turns, 3u);
  EXPECT_EQ(deleted->freed_bytes, session.raw_bytes() + 6);

  EXPECT_EQ(store_->GetSession(kKey).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListSegments(kKey).status().code(), absl::StatusCode::kNotFound);
  for (uint32_t turn = 0; turn < 3; ++turn) {
    for (TensorKind kind : {TensorKind::kKeys, TensorKind::kValues, TensorKind::kProbeQueries}) {
      EXPECT_EQ(store_->ReadTensor(kKey, turn, 0, kind).status().code(),
                absl::StatusCode::kNotFound);
    }
  }
  EXPECT_FALSE(store_->GetFit(kKey, 2, "sonic", 0).value().has_value());
  EXPECT_EQ(store_->DeleteSession(kKey).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->PutFit(kKey, 0, "sonic", {"a", "b", "c"}).code(), absl::StatusCode::kNotFound);

  for (const SessionKey& key : {before, after, longer, other_tenant}) {
    EXPECT_EQ(store_->GetSession(key).value().num_turns(), 1u) << key.session_id;
    EXPECT_TRUE(store_->ReadTensor(key, 0, 0, TensorKind::kKeys).ok()) << key.session_id;
  }
  // The id can be reused for a fresh session.
  absl::StatusOr<AppendOutcome> fresh = Append(kKey, MakeSegment(0, 0, 4, 0, 99));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_FALSE(fresh->already_stored);
  EXPECT_EQ(fresh->session.num_turns(), 1u);
  EXPECT_EQ(fresh->session.compressed_bytes(), 0u);
}

std::vector<std::string> Ids(const SessionPage& page) {
  std::vector<std::string> ids;
  for (const SessionRecord& session : page.sessions) ids.push_back(session.session_id());
  return ids;
}

TEST_F(StoreTest, ListSessionsPagesThroughAPrefix) {
  std::vector<std::string> want;
  for (int i = 24; i >= 0; --i) {
    const std::string id = absl::StrFormat("chat-%02d", i);
    AppendTurns({"tenant-a", id}, 2, i);  // Two turns: turn records must be skipped.
    want.push_back(id);
  }
  std::sort(want.begin(), want.end());
  for (const char* id : {"chat", "chas-9", "chat.x", "zzz", "a"}) AppendTurns({"tenant-a", id}, 1);

  std::vector<std::string> got;
  std::string token;
  int pages = 0;
  do {
    absl::StatusOr<SessionPage> page = store_->ListSessions("tenant-a", "chat-", token, 10);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_EQ(page->sessions.size(), pages < 2 ? 10u : 5u);
    for (const SessionRecord& session : page->sessions) {
      EXPECT_EQ(session.num_turns(), 2u);
      got.push_back(session.session_id());
    }
    token = page->next_page_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(got, want);

  // A page that ends exactly at the last match has no next page.
  absl::StatusOr<SessionPage> all = store_->ListSessions("tenant-a", "chat-", "", 25);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->sessions.size(), 25u);
  EXPECT_EQ(all->next_page_token, "");

  absl::StatusOr<SessionPage> everything = store_->ListSessions("tenant-a", "", "", 1000);
  ASSERT_TRUE(everything.ok()) << everything.status();
  EXPECT_EQ(everything->sessions.size(), 30u);
  EXPECT_EQ(everything->sessions.front().session_id(), "a");
  EXPECT_EQ(everything->sessions.back().session_id(), "zzz");

  absl::StatusOr<SessionPage> chat = store_->ListSessions("tenant-a", "chat", "chat-23", 10);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_THAT(Ids(*chat), ElementsAre("chat-24", "chat.x"));
  EXPECT_THAT(Ids(store_->ListSessions("tenant-a", "nothing", "", 10).value()), IsEmpty());
}

TEST_F(StoreTest, ListSessionsRefusesBadArguments) {
  absl::Status zero = store_->ListSessions("tenant-a", "", "", 0).status();
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(zero.message()), HasSubstr("page_size is 0; use 1..1000"));
  EXPECT_EQ(store_->ListSessions("tenant-a", "", "", 1001).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->ListSessions("", "", "", 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->ListSessions("tenant-a", "a/", "", 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status token = store_->ListSessions("tenant-a", "", std::string("x\0y", 3), 10).status();
  EXPECT_EQ(token.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(token.message()), HasSubstr("page_token"));
}

TEST_F(StoreTest, TenantsAreIsolated) {
  for (const char* id : {"s1", "s2", "s3"}) AppendTurns({"a", id}, 1);
  for (const char* tenant : {"b", "a.b", "aa", "A"}) {
    absl::StatusOr<SessionPage> page = store_->ListSessions(tenant, "", "", 100);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_THAT(Ids(*page), IsEmpty()) << tenant;
    EXPECT_EQ(store_->GetSession({tenant, "s1"}).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(store_->ReadTensor({tenant, "s1"}, 0, 0, TensorKind::kKeys).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(store_->DeleteSession({tenant, "s1"}).status().code(), absl::StatusCode::kNotFound);
  }
  // The same session id in another tenant is another session.
  const TestSegment other = MakeSegment(0, 50, 4, 0, 42);
  absl::StatusOr<AppendOutcome> b = Append({"b", "s1"}, other);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->already_stored);
  EXPECT_EQ(store_->ReadTensor({"b", "s1"}, 0, 1, TensorKind::kValues).value(),
            other.layers[1].values);
  EXPECT_EQ(store_->GetSession({"a", "s1"}).value().next_position(), 4u);
  EXPECT_THAT(Ids(store_->ListSessions("a", "", "", 100).value()), ElementsAre("s1", "s2", "s3"));
  EXPECT_THAT(Ids(store_->ListSessions("b", "", "", 100).value()), ElementsAre("s1"));
}

}  // namespace
}  // namespace nexuskv::store::testing
