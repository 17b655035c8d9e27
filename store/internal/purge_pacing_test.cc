#include "store/internal/purge_pacing.h"

#include "gtest/gtest.h"

namespace nexuskv::store::internal {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1000);

TEST(PurgePacingTest, AShortPurgeWaitsOnlyForTheInterval) {
  // 0.5 s at a 10% share asks for 4.5 s idle: the 10 s interval is the later bound.
  EXPECT_EQ(NextPurgeAt(kStart, absl::Milliseconds(500), absl::Seconds(10), 0.1),
            kStart + absl::Seconds(10));
}

TEST(PurgePacingTest, ALongPurgeWaitsUntilPurgesTakeTheirShare) {
  // 4 s at 10%: 36 s idle after it ends, so the next may start 40 s after this one started.
  EXPECT_EQ(NextPurgeAt(kStart, absl::Seconds(4), absl::Seconds(10), 0.1),
            kStart + absl::Seconds(40));
  // At 50%, as long idle as it ran.
  EXPECT_EQ(NextPurgeAt(kStart, absl::Seconds(30), absl::Seconds(10), 0.5),
            kStart + absl::Seconds(60));
}

TEST(PurgePacingTest, AShareOfOneOrNoneLeavesOnlyTheInterval) {
  for (double share : {1.0, 0.0, -1.0, 2.0}) {
    EXPECT_EQ(NextPurgeAt(kStart, absl::Seconds(100), absl::Seconds(10), share),
              kStart + absl::Seconds(10))
        << share;
  }
  EXPECT_EQ(NextPurgeAt(kStart, absl::Seconds(100), absl::ZeroDuration(), 1.0), kStart)
      << "interval 0 and no share: every delete purges";
}

}  // namespace
}  // namespace nexuskv::store::internal
