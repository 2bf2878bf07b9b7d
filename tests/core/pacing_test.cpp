#include "apilb/core/pacing.hpp"

#include <gtest/gtest.h>

#include <numeric>

namespace apilb {
namespace {

constexpr std::int64_t ms = 1'000'000;

TEST(Gcra, ABurstGoesAtOnceThenOneTurnPerInterval) {
    // 100 per second (10 ms apart), burst 5: five clients arriving together
    // go at once, the sixth waits 10 ms, the seventh 20 ms.
    std::int64_t tat = 0;
    const std::int64_t now = 1000 * ms;
    std::vector<std::int64_t> delays;
    for (int i = 0; i < 7; ++i) {
        auto slot = gcra_reserve(tat, now, 10 * ms, 5, 1000 * ms);
        ASSERT_TRUE(slot);
        tat = slot->new_tat;
        delays.push_back(slot->delay_ns);
    }
    EXPECT_EQ(delays, (std::vector<std::int64_t>{0, 0, 0, 0, 0, 10 * ms, 20 * ms}));
}

TEST(Gcra, NeverMoreThanTheRateOverAnyWindowAfterTheBurst) {
    // 2000 clients at once, 500 per second, burst 10: the last one goes after
    // about 4 s, and in every 1 s window at most 500 + 10 start.
    std::int64_t tat = 0;
    const std::int64_t now = 5000 * ms;
    std::vector<std::int64_t> starts;
    for (int i = 0; i < 2000; ++i) {
        auto slot = gcra_reserve(tat, now, 2 * ms, 10, 10'000 * ms);
        ASSERT_TRUE(slot);
        tat = slot->new_tat;
        starts.push_back(now + slot->delay_ns);
    }
    EXPECT_NEAR(static_cast<double>(starts.back() - now) / ms, 3980.0, 1.0);
    std::size_t lo = 0;
    for (std::size_t hi = 0; hi < starts.size(); ++hi) {
        while (starts[hi] - starts[lo] >= 1000 * ms) ++lo;
        ASSERT_LE(hi - lo + 1, 510u) << "window ending at start " << hi;
    }
}

TEST(Gcra, RefusesATurnBeyondTheLongestWaitAndReservesNothing) {
    std::int64_t tat = 0;
    const std::int64_t now = 1000 * ms;
    for (int i = 0; i < 3; ++i) tat = gcra_reserve(tat, now, 100 * ms, 1, 250 * ms)->new_tat;
    // Turns at +0, +100, +200 ms; the next would wait 300 ms > 250 ms.
    EXPECT_FALSE(gcra_reserve(tat, now, 100 * ms, 1, 250 * ms));
    // Later, it fits again.
    auto later = gcra_reserve(tat, now + 100 * ms, 100 * ms, 1, 250 * ms);
    ASSERT_TRUE(later);
    EXPECT_EQ(later->delay_ns, 200 * ms);
}

TEST(Gcra, AnIdleBackendStartsWithAFullBurst) {
    auto slot = gcra_reserve(/*tat=*/500 * ms, /*now=*/10'000 * ms, 10 * ms, 3, 0);
    ASSERT_TRUE(slot);
    EXPECT_EQ(slot->delay_ns, 0);
    EXPECT_EQ(slot->new_tat, 10'010 * ms);
}

TEST(RebalancePlan, AReturningBackendGetsItsShareFromTheOthers) {
    // 300 sessions on two of three equal backends after the third restarted.
    const backend_share b[] = {{150, 1, true}, {150, 1, true}, {0, 1, true}};
    EXPECT_EQ(rebalance_plan(b, 0.2), (std::vector<std::uint32_t>{50, 50, 0}));
}

TEST(RebalancePlan, WithinToleranceNothingMoves) {
    const backend_share b[] = {{110, 1, true}, {105, 1, true}, {85, 1, true}};
    EXPECT_EQ(rebalance_plan(b, 0.2), (std::vector<std::uint32_t>{0, 0, 0}));
}

TEST(RebalancePlan, WeightsSetTheShares) {
    // Weights 1:2:1, 200 sessions: shares 50, 100, 50.
    const backend_share b[] = {{100, 1, true}, {100, 2, true}, {0, 1, true}};
    EXPECT_EQ(rebalance_plan(b, 0.2), (std::vector<std::uint32_t>{50, 0, 0}));
}

TEST(RebalancePlan, UnhealthyOrDrainedBackendsNeitherGiveNorTake) {
    const backend_share b[] = {{150, 1, true}, {150, 1, false}, {0, 1, true}};
    EXPECT_EQ(rebalance_plan(b, 0.2), (std::vector<std::uint32_t>{75, 0, 0}));
    const backend_share all_down[] = {{10, 1, false}, {0, 1, false}};
    EXPECT_EQ(rebalance_plan(all_down, 0.2), (std::vector<std::uint32_t>{0, 0}));
}

TEST(RebalancePlan, AFewSessionsAreNeverChurned) {
    const backend_share b[] = {{2, 1, true}, {1, 1, true}, {0, 1, true}};
    EXPECT_EQ(rebalance_plan(b, 0.2), (std::vector<std::uint32_t>{1, 0, 0}));
    const backend_share one[] = {{1, 1, true}, {0, 1, true}};
    EXPECT_EQ(rebalance_plan(one, 0.2), (std::vector<std::uint32_t>{0, 0}));
}

}  // namespace
}  // namespace apilb
