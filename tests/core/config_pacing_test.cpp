// A pool's `storm_control` and `rebalance` sections: defaults, every field,
// and what is rejected.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace apilb {
namespace {

using namespace std::chrono_literals;

std::string with_pool_lines(const std::string& lines) {
    return "listeners:\n"
           "  - {name: apiserver, address: \"0.0.0.0:6443\", pool: cp}\n"
           "pools:\n"
           "  - name: cp\n"
           "    backends:\n"
           "      - {name: a, address: \"192.0.2.1:6443\"}\n" +
           lines;
}

std::string errors_of(const std::string& text) {
    try {
        parse_config(text, "test.yaml");
    } catch (const config_load_error& e) {
        std::string s;
        for (const auto& err : e.errors()) s += err.to_string() + "\n";
        return s;
    }
    ADD_FAILURE() << "expected the config to be rejected:\n" << text;
    return {};
}

#define EXPECT_CONTAINS(haystack, needle) \
    EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "in: " << (haystack)

TEST(PacingConfig, OffByDefault) {
    auto c = parse_config(with_pool_lines(""), "t");
    EXPECT_EQ(c->pools[0].storm_control.new_per_second, 0u);
    EXPECT_FALSE(c->pools[0].rebalance.enabled);
    EXPECT_EQ(c->pools[0].rebalance.max_closes_per_second, 10u);
    EXPECT_DOUBLE_EQ(c->pools[0].rebalance.tolerance, 0.2);
}

TEST(PacingConfig, EveryFieldIsRead) {
    auto c = parse_config(
        with_pool_lines("    storm_control: {new_per_second: 500, burst: 25, max_connecting: 7, queue: 300, "
                        "queue_timeout: 2s}\n"
                        "    rebalance: {enabled: true, max_closes_per_second: 40, "
                        "tolerance: 0.15}\n"),
        "t");
    const auto& p = c->pools[0];
    EXPECT_EQ(p.storm_control.new_per_second, 500u);
    EXPECT_EQ(p.storm_control.burst, 25u);
    EXPECT_EQ(p.storm_control.max_connecting, 7u);
    EXPECT_EQ(p.storm_control.queue, 300u);
    EXPECT_EQ(p.storm_control.queue_timeout, 2s);
    EXPECT_TRUE(p.rebalance.enabled);
    EXPECT_EQ(p.rebalance.max_closes_per_second, 40u);
    EXPECT_DOUBLE_EQ(p.rebalance.tolerance, 0.15);
}

TEST(PacingConfig, BurstDefaultsToATenthOfASecond) {
    auto c = parse_config(with_pool_lines("    storm_control: {new_per_second: 500}\n"), "t");
    EXPECT_EQ(c->pools[0].storm_control.burst, 50u);
    c = parse_config(with_pool_lines("    storm_control: {new_per_second: 5}\n"), "t");
    EXPECT_EQ(c->pools[0].storm_control.burst, 1u);
}

TEST(PacingConfig, BadValuesNameTheLineTheKeyAndWhatWasExpected) {
    EXPECT_CONTAINS(errors_of(with_pool_lines("    rebalance: {tolerance: 1.5}\n")),
                    "test.yaml:7:28: pools[0].rebalance.tolerance: expected a fraction in 0.01..1");
    EXPECT_CONTAINS(errors_of(with_pool_lines("    rebalance: {tolerance: 20%}\n")), "found '20%'");
    EXPECT_CONTAINS(errors_of(with_pool_lines("    rebalance: {max_closes_per_second: 0}\n")),
                    "pools[0].rebalance.max_closes_per_second");
    EXPECT_CONTAINS(errors_of(with_pool_lines("    storm_control: {queue_timeout: 0s}\n")),
                    "pools[0].storm_control.queue_timeout");
    EXPECT_CONTAINS(errors_of(with_pool_lines("    storm_control: {rate: 5}\n")), "pools[0].storm_control.rate");
}

}  // namespace
}  // namespace apilb
