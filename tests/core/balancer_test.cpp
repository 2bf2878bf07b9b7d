#include "apilb/core/balancer.hpp"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace apilb {
namespace {

std::vector<backend_load> loads(std::initializer_list<std::uint32_t> weights) {
    std::vector<backend_load> v;
    for (auto w : weights) v.push_back({.weight = w, .active = 0, .available = true});
    return v;
}

TEST(RoundRobin, EqualWeightsRotateEvenly) {
    auto l = loads({1, 1, 1});
    balancer_state st(l.size());
    std::vector<std::size_t> picks;
    for (int i = 0; i < 6; ++i) picks.push_back(*st.choose(balance_policy::round_robin, l));
    EXPECT_EQ(picks, (std::vector<std::size_t>{0, 1, 2, 0, 1, 2}));
}

TEST(RoundRobin, WeightsAreHonouredAndInterleaved) {
    auto l = loads({5, 1, 1});
    balancer_state st(l.size());
    std::map<std::size_t, int> count;
    std::vector<std::size_t> first7;
    for (int i = 0; i < 700; ++i) {
        auto p = *st.choose(balance_policy::round_robin, l);
        ++count[p];
        if (i < 7) first7.push_back(p);
    }
    EXPECT_EQ(count[0], 500);
    EXPECT_EQ(count[1], 100);
    EXPECT_EQ(count[2], 100);
    // Smooth WRR: the heavy backend never gets all five in a row.
    EXPECT_EQ(first7, (std::vector<std::size_t>{0, 0, 1, 0, 2, 0, 0}));
}

TEST(RoundRobin, SkipsUnavailableBackends) {
    auto l = loads({1, 1, 1});
    l[1].available = false;
    balancer_state st(l.size());
    for (int i = 0; i < 10; ++i) EXPECT_NE(*st.choose(balance_policy::round_robin, l), 1u);
}

TEST(RoundRobin, NoneAvailableGivesNothing) {
    auto l = loads({1, 2});
    for (auto& b : l) b.available = false;
    balancer_state st(l.size());
    EXPECT_FALSE(st.choose(balance_policy::round_robin, l).has_value());
}

TEST(LeastConnections, PicksFewestActive) {
    auto l = loads({1, 1, 1});
    l[0].active = 5;
    l[1].active = 2;
    l[2].active = 7;
    balancer_state st(l.size());
    EXPECT_EQ(*st.choose(balance_policy::least_connections, l), 1u);
}

TEST(LeastConnections, ActivePerWeight) {
    auto l = loads({4, 1});
    l[0].active = 6;  // 1.5 per unit of weight
    l[1].active = 2;  // 2 per unit
    balancer_state st(l.size());
    EXPECT_EQ(*st.choose(balance_policy::least_connections, l), 0u);
}

TEST(LeastConnections, TiesRotate) {
    auto l = loads({1, 1, 1});
    balancer_state st(l.size());
    std::vector<std::size_t> picks;
    for (int i = 0; i < 3; ++i) picks.push_back(*st.choose(balance_policy::least_connections, l));
    EXPECT_EQ(picks, (std::vector<std::size_t>{0, 1, 2}));
}

TEST(LeastConnections, SimulatedSessionsSpreadEvenly) {
    auto l = loads({1, 1, 1});
    balancer_state st(l.size());
    for (int i = 0; i < 300; ++i) ++l[*st.choose(balance_policy::least_connections, l)].active;
    for (auto& b : l) EXPECT_EQ(b.active, 100u);
}

TEST(LeastConnections, SkipsUnavailable) {
    auto l = loads({1, 1});
    l[0].available = false;
    l[1].active = 100;
    balancer_state st(l.size());
    EXPECT_EQ(*st.choose(balance_policy::least_connections, l), 1u);
}

TEST(LeastConnections, LightWeightHoldsBackAnEmptyBackend) {
    // Slow start: a recovered backend at 10% of its weight with no session
    // must not take every new session until it catches up.
    auto l = loads({1000, 1000, 100});
    l[0].active = 10;
    l[1].active = 10;
    balancer_state st(l.size());
    EXPECT_EQ(*st.choose(balance_policy::least_connections, l), 2u) << "(0+1)/100 < (10+1)/1000";
    l[2].active = 1;
    EXPECT_NE(*st.choose(balance_policy::least_connections, l), 2u) << "(1+1)/100 > (10+1)/1000";
}

TEST(HealthTiers, OnlyTheBestAvailableTierIsChosenFrom) {
    for (auto policy : {balance_policy::round_robin, balance_policy::least_connections}) {
        auto l = loads({1, 1, 1});
        l[0].tier = 2;  // unhealthy
        l[1].tier = 1;  // suspect
        l[2].tier = 0;  // healthy
        l[2].active = 50;
        balancer_state st(l.size());
        for (int i = 0; i < 5; ++i) EXPECT_EQ(*st.choose(policy, l), 2u);
        l[2].available = false;  // tried already
        EXPECT_EQ(*st.choose(policy, l), 1u) << "then the suspect one";
        l[1].available = false;
        EXPECT_EQ(*st.choose(policy, l), 0u) << "then the unhealthy one (try-all)";
        l[0].available = false;
        EXPECT_FALSE(st.choose(policy, l).has_value());
    }
}

TEST(HealthTiers, RoundRobinRotatesWithinTheTier) {
    auto l = loads({1, 1, 1, 1});
    l[3].tier = 2;
    balancer_state st(l.size());
    std::map<std::size_t, int> count;
    for (int i = 0; i < 30; ++i) ++count[*st.choose(balance_policy::round_robin, l)];
    EXPECT_EQ(count[0], 10);
    EXPECT_EQ(count[1], 10);
    EXPECT_EQ(count[2], 10);
    EXPECT_EQ(count[3], 0);
}

}  // namespace
}  // namespace apilb
