#include "apilb/core/maglev.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace apilb {
namespace {

/// maglev_backend holds string_views: `names` must outlive the result.
std::vector<maglev_backend> pool(const std::vector<std::string>& names, std::vector<std::uint32_t> weights = {}) {
    std::vector<maglev_backend> v;
    for (std::size_t i = 0; i < names.size(); ++i) {
        v.push_back({.name = names[i], .weight = weights.empty() ? 1u : weights[i]});
    }
    return v;
}

/// The table as backend names, slot by slot.
std::vector<std::string_view> by_name(const maglev_table& t, const std::vector<maglev_backend>& b) {
    std::vector<std::string_view> v;
    v.reserve(t.size());
    for (auto e : t.entries()) v.push_back(b[e].name);
    return v;
}

std::vector<std::uint64_t> random_keys(std::size_t n) {
    std::mt19937_64 rng(2016);
    std::vector<std::uint64_t> keys(n);
    for (auto& k : keys) k = stable_hash(std::to_string(rng()));
    return keys;
}

const std::vector<std::string> names = {"cp-1", "cp-2", "cp-3", "cp-4", "cp-5"};

TEST(Maglev, SizeMustBePrime) {
    auto b = pool(names);
    EXPECT_THROW(maglev_table::build(b, 65536), std::invalid_argument);
    EXPECT_THROW(maglev_table::build(b, 3), std::invalid_argument);
    EXPECT_NO_THROW(maglev_table::build(b, 7));
    EXPECT_TRUE(is_prime(65537));
    EXPECT_FALSE(is_prime(65535));
}

TEST(Maglev, EveryBackendGetsAnEqualShare) {
    auto b = pool(names);
    auto t = maglev_table::build(b);
    std::map<std::uint32_t, int> count;
    for (auto e : t.entries()) ++count[e];
    ASSERT_EQ(count.size(), names.size());
    for (auto& [i, n] : count) EXPECT_NEAR(n, 65537 / 5, 2) << names[i];
}

TEST(Maglev, WeightsAreHonoured) {
    const std::vector<std::string> abc = {"a", "b", "c"};
    auto b = pool(abc, {1, 2, 4});
    auto t = maglev_table::build(b);
    std::map<std::uint32_t, double> share;
    for (auto e : t.entries()) share[e] += 1.0 / t.size();
    EXPECT_NEAR(share[0], 1.0 / 7, 0.005);
    EXPECT_NEAR(share[1], 2.0 / 7, 0.005);
    EXPECT_NEAR(share[2], 4.0 / 7, 0.005);
}

TEST(Maglev, OrderInTheConfigDoesNotMatter) {
    // Two balancers whose files list the pool differently must send every
    // client to the same apiserver, or a VIP failover moves every watch.
    const std::vector<std::string> order1 = {"cp-1", "cp-2", "cp-3", "cp-4"};
    const std::vector<std::string> order2 = {"cp-4", "cp-2", "cp-1", "cp-3"};
    auto b1 = pool(order1, {1, 2, 1, 3});
    auto b2 = pool(order2, {3, 2, 1, 1});
    EXPECT_EQ(by_name(maglev_table::build(b1), b1), by_name(maglev_table::build(b2), b2));
}

TEST(Maglev, TheTableDependsOnlyOnNamesAndWeights) {
    // The same input always builds the same table: two processes, two hosts.
    auto b = pool(names);
    EXPECT_EQ(maglev_table::build(b).entries(), maglev_table::build(b).entries());
    // Pinned: a change to the hash or the fill loop would move every client
    // of every deployed pair at upgrade time, so it must be deliberate.
    auto small = maglev_table::build(b, 13);
    std::string got;
    for (auto e : small.entries()) got += std::to_string(e);
    EXPECT_EQ(got, "1100202231434");
    EXPECT_EQ(stable_hash("cp-1"), 0xe95ea198a18a0f23ULL);
}

TEST(Maglev, RemovingOneBackendMovesOnlyItsKeys) {
    const auto keys = random_keys(100000);
    for (std::size_t n : {3u, 5u}) {
        std::vector<std::string> all(names.begin(), names.begin() + static_cast<long>(n));
        auto full = pool(all);
        auto t_full = maglev_table::build(full);
        for (std::size_t removed = 0; removed < n; ++removed) {
            std::vector<std::string> rest = all;
            rest.erase(rest.begin() + static_cast<long>(removed));
            auto less = pool(rest);
            auto t_less = maglev_table::build(less);
            std::size_t moved = 0, moved_from_others = 0;
            for (auto k : keys) {
                const auto before = full[t_full.lookup(k)].name;
                const auto after = less[t_less.lookup(k)].name;
                if (before != after) {
                    ++moved;
                    if (before != all[removed]) ++moved_from_others;
                }
            }
            const double share = static_cast<double>(moved) / keys.size();
            SCOPED_TRACE("n=" + std::to_string(n) + " removed " + all[removed]);
            EXPECT_LE(share, 1.0 / n + 0.02);
            // Maglev trades a little stability for balance: a few keys of
            // other backends move too, but only a few.
            EXPECT_LE(static_cast<double>(moved_from_others) / keys.size(), 0.02);
            // Adding it back restores the original mapping exactly.
            auto again = maglev_table::build(full);
            EXPECT_EQ(again.entries(), t_full.entries());
        }
    }
}

TEST(Maglev, AKeyWhoseBackendIsDownMovesToItsOwnNextChoiceAlone) {
    auto b = pool(names);
    auto t = maglev_table::build(b);
    const auto keys = random_keys(100000);
    const std::uint32_t down = 2;
    std::map<std::uint32_t, int> landed;
    auto choose = [&](std::uint64_t k, bool with_down) {
        for (std::uint32_t attempt = 0;; ++attempt) {
            const auto c = t.lookup(k, attempt);
            if (!with_down || c != down) return c;
        }
    };
    std::size_t moved = 0;
    for (auto k : keys) {
        const auto before = choose(k, false);
        const auto after = choose(k, true);
        if (before != after) {
            ++moved;
            EXPECT_EQ(before, down) << "only the down backend's clients may move";
            ++landed[after];
        }
        // Stable: the same key always picks the same fallback.
        EXPECT_EQ(after, choose(k, true));
    }
    EXPECT_NEAR(static_cast<double>(moved) / keys.size(), 0.2, 0.01);
    // The moved keys spread over the four others rather than piling on one.
    ASSERT_EQ(landed.size(), 4u);
    for (auto& [i, n] : landed) EXPECT_NEAR(static_cast<double>(n) / moved, 0.25, 0.03) << names[i];
}

TEST(Maglev, BuildTimeForAControlPlanePool) {
    // Not a timed assertion: the figure is printed for the record.
    const std::vector<std::string> seven = {"cp-1", "cp-2", "cp-3", "cp-4", "cp-5", "cp-6", "cp-7"};
    auto b = pool(seven);
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int rounds = 20;
    std::uint64_t sink = 0;
    for (int i = 0; i < rounds; ++i) sink += maglev_table::build(b).entries()[i];
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    std::printf("maglev: 65537 entries, 7 backends: %.0f us per build (%llu)\n",
                static_cast<double>(us.count()) / rounds, static_cast<unsigned long long>(sink % 2));
    SUCCEED();
}

}  // namespace
}  // namespace apilb
