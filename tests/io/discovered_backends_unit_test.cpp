// Discovery's set as a pool's backends: listed, terminating and leaving
// members, the grace period, and the pool config they make.
#include "apilb/control/discovered_backends.hpp"

#include <gtest/gtest.h>

namespace apilb {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

socket_address at(const std::string& ip) { return {.ip = ip, .port = 6443, .is_v6 = false}; }
discovered_endpoint listed(const std::string& ip) { return {.ip = ip, .port = 6443}; }

pool_config seed_pool() {
    pool_config p;
    p.name = "p";
    p.backends.push_back({.name = "seed", .address = at("10.0.0.1"), .weight = 3});
    p.connect_attempts = 1;
    p.connect_attempts_each = true;
    p.discovery = discovery_config{};
    return p;
}

TEST(DiscoveredBackends, TheSeedIsTheFirstSetAndKeepsItsNameWhenListed) {
    const pool_config file = seed_pool();
    const auto now = steady::now();
    auto members = merge_listing(seed_members(file), {listed("10.0.0.1"), listed("10.0.0.2")}, now);
    ASSERT_EQ(members.size(), 2u);
    const pool_config pool = discovered_pool(file, members);
    ASSERT_EQ(pool.backends.size(), 2u);
    EXPECT_EQ(pool.backends[0].name, "seed");
    EXPECT_EQ(pool.backends[0].weight, 3u);
    EXPECT_FALSE(pool.backends[0].discovered);
    EXPECT_EQ(pool.backends[1].name, "10.0.0.2:6443");
    EXPECT_TRUE(pool.backends[1].discovered);
    EXPECT_EQ(pool.connect_attempts, 2u);  // "each backend once" follows the set
}

TEST(DiscoveredBackends, AnyConditionButReadyServingAndNotTerminatingTakesNoNewSessions) {
    const auto now = steady::now();
    discovered_endpoint term = listed("10.0.0.2");
    term.terminating = true;
    term.ready = false;
    discovered_endpoint unready = listed("10.0.0.3");
    unready.ready = false;
    discovered_endpoint not_serving = listed("10.0.0.4");
    not_serving.serving = false;
    const auto members = merge_listing({}, {listed("10.0.0.1"), term, unready, not_serving}, now);
    ASSERT_EQ(members.size(), 4u);
    EXPECT_FALSE(members[0].terminating);
    EXPECT_TRUE(members[1].terminating);
    EXPECT_TRUE(members[2].terminating);
    EXPECT_TRUE(members[3].terminating);
    EXPECT_TRUE(discovered_pool(seed_pool(), members).backends[1].terminating);
}

TEST(DiscoveredBackends, OneThatLeavesStaysForTheGracePeriodWhileItPassesItsProbes) {
    const auto t0 = steady::now();
    auto members = merge_listing({}, {listed("10.0.0.1"), listed("10.0.0.2")}, t0);
    members = merge_listing(members, {listed("10.0.0.1")}, t0 + 1s);
    ASSERT_EQ(members.size(), 2u);
    ASSERT_TRUE(members[1].left_at);
    EXPECT_EQ(*members[1].left_at, t0 + 1s);
    EXPECT_TRUE(discovered_pool(seed_pool(), members).backends[1].leaving);
    EXPECT_EQ(next_grace_end(members, 10s), t0 + 11s);
    // A later list that still lacks it keeps the time it left.
    members = merge_listing(members, {listed("10.0.0.1")}, t0 + 5s);
    EXPECT_EQ(*members[1].left_at, t0 + 1s);

    auto passes = [](const socket_address&) { return true; };
    auto fails = [](const socket_address&) { return false; };
    EXPECT_EQ(drop_departed(members, 10s, t0 + 10s, passes).size(), 2u);
    EXPECT_EQ(drop_departed(members, 10s, t0 + 11s, passes).size(), 1u);  // grace over
    EXPECT_EQ(drop_departed(members, 10s, t0 + 2s, fails).size(), 1u);    // fails its probes: goes now
    EXPECT_EQ(drop_departed(members, 0s, t0 + 1s, passes).size(), 1u);    // no grace
    // Listed again: no longer leaving.
    members = merge_listing(members, {listed("10.0.0.1"), listed("10.0.0.2")}, t0 + 6s);
    EXPECT_FALSE(members[1].left_at);
    EXPECT_FALSE(next_grace_end(members, 10s));
}

TEST(DiscoveredBackends, AMaglevTableGrowsToHoldTheSet) {
    pool_config file = seed_pool();
    file.balance = balance_policy::maglev;
    file.maglev_table_size = 2;
    file.connect_attempts = 2;
    file.connect_attempts_each = false;
    const auto members = merge_listing(
        {}, {listed("10.0.0.1"), listed("10.0.0.2"), listed("10.0.0.3"), listed("10.0.0.4")}, steady::now());
    const pool_config pool = discovered_pool(file, members);
    EXPECT_EQ(pool.maglev_table_size, 5u);
    EXPECT_EQ(pool.connect_attempts, 2u);  // written in the file: kept
}

}  // namespace
}  // namespace apilb
