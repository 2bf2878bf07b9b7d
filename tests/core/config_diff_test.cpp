#include "apilb/core/config_diff.hpp"

#include <gtest/gtest.h>

#include <string>

namespace apilb {
namespace {

std::string base_yaml(const std::string& backends, const std::string& extra_listener = {},
                      const std::string& top = {}) {
    return "workers: 2\n"
           "listeners:\n"
           "  - {name: front, address: \"127.0.0.1:6443\", pool: p}\n" +
           extra_listener +
           "pools:\n"
           "  - name: p\n"
           "    balance: round-robin\n"
           "    backends:\n" +
           backends + top;
}

const std::string two_backends =
    "      - {name: a, address: \"127.0.0.2:6443\"}\n"
    "      - {name: b, address: \"127.0.0.3:6443\"}\n";

TEST(ConfigDiff, IdenticalConfigsHaveNoChanges) {
    auto a = parse_config(base_yaml(two_backends), "a.yaml");
    auto b = parse_config(base_yaml(two_backends), "b.yaml");
    const auto d = diff_configs(*a, *b);
    EXPECT_TRUE(d.empty());
    EXPECT_TRUE(d.restart_only.empty());
    EXPECT_EQ(d.summary(), "no changes");
}

TEST(ConfigDiff, BackendIdentityIsPoolNameAndAddress) {
    auto a = parse_config(base_yaml(two_backends), "a.yaml");
    // b moves to another address: a different backend. c is new. a gets a weight and drain.
    auto b = parse_config(base_yaml("      - {name: a, address: \"127.0.0.2:6443\", weight: 3, drain: true}\n"
                                    "      - {name: b, address: \"127.0.0.4:6443\"}\n"
                                    "      - {name: c, address: \"127.0.0.5:6443\"}\n"),
                          "b.yaml");
    EXPECT_TRUE(same_backend(a->pools[0], a->pools[0].backends[0], b->pools[0], b->pools[0].backends[0]));
    EXPECT_FALSE(same_backend(a->pools[0], a->pools[0].backends[1], b->pools[0], b->pools[0].backends[1]));
    EXPECT_TRUE(b->pools[0].backends[0].drain);
    const auto d = diff_configs(*a, *b);
    EXPECT_EQ(d.backends_added, (std::vector<std::string>{"p/b@127.0.0.4:6443", "p/c@127.0.0.5:6443"}));
    EXPECT_EQ(d.backends_removed, (std::vector<std::string>{"p/b@127.0.0.3:6443"}));
    EXPECT_EQ(d.backends_changed, (std::vector<std::string>{"p/a weight 1->3 drain on"}));
    EXPECT_FALSE(d.empty());
}

TEST(ConfigDiff, ListenerIdentityIsTheAddress) {
    auto a = parse_config(base_yaml(two_backends, "  - {name: old, address: \"127.0.0.1:7000\", pool: p}\n"), "a");
    auto b = parse_config(
        base_yaml(two_backends, "  - {name: new, address: \"127.0.0.1:7001\", pool: p, backlog: 16}\n"), "b");
    const auto d = diff_configs(*a, *b);
    EXPECT_EQ(d.listeners_added, (std::vector<std::string>{"new@127.0.0.1:7001"}));
    EXPECT_EQ(d.listeners_removed, (std::vector<std::string>{"old@127.0.0.1:7000"}));
    EXPECT_TRUE(d.listeners_changed.empty());
    EXPECT_TRUE(same_listener(a->listeners[0], b->listeners[0]));
    EXPECT_NE(d.summary().find("listeners added [new@127.0.0.1:7001] removed [old@127.0.0.1:7000]"), std::string::npos)
        << d.summary();
}

TEST(ConfigDiff, RestartOnlySettingsAreReportedAndKept) {
    auto a = parse_config(base_yaml(two_backends), "a");
    auto b = parse_config(base_yaml(two_backends, {},
                                    "timeouts: {idle: 5m, reload_drain: 2s, write_stall: 5s}\n"
                                    "limits: {max_connections: 10}\n"
                                    "relay: {mode: copy}\n"),
                          "b");
    EXPECT_EQ(b->timeouts.reload_drain, std::chrono::seconds(2));
    const auto d = diff_configs(*a, *b);
    EXPECT_EQ(d.settings_changed, (std::vector<std::string>{"timeouts"}));
    EXPECT_EQ(d.restart_only, (std::vector<std::string>{"relay", "limits.max_connections 16384->10", "timeouts.idle",
                                                        "timeouts.write_stall"}));
    const config kept = keep_restart_only(*a, *b);
    EXPECT_EQ(kept.relay.mode, a->relay.mode);
    EXPECT_EQ(kept.limits.max_connections, 16384u);
    EXPECT_EQ(kept.timeouts.idle, a->timeouts.idle);
    EXPECT_EQ(kept.timeouts.write_stall, a->timeouts.write_stall);
    EXPECT_EQ(kept.timeouts.reload_drain, std::chrono::seconds(2));  // applied
    EXPECT_TRUE(diff_configs(*a, kept).restart_only.empty());
}

TEST(ConfigDiff, AdminEndpointChangesWaitForRestart) {
    auto a = parse_config(base_yaml(two_backends, {}, "admin: {address: \"127.0.0.1:6445\"}\n"), "a");
    auto b = parse_config(base_yaml(two_backends, {}, "admin: {address: \"127.0.0.1:7000\"}\n"), "b");
    EXPECT_EQ(diff_configs(*a, *b).restart_only, (std::vector<std::string>{"admin"}));
    EXPECT_EQ(keep_restart_only(*a, *b).admin->address.port, 6445);
    EXPECT_TRUE(diff_configs(*a, *a).restart_only.empty());
}

TEST(ConfigAdmin, DefaultsAndTheLoopbackRule) {
    auto c = parse_config(base_yaml(two_backends, {}, "admin: {}\n"), "c");
    ASSERT_TRUE(c->admin);
    EXPECT_EQ(c->admin->address.to_string(), "127.0.0.1:6445");
    EXPECT_FALSE(parse_config(base_yaml(two_backends), "none")->admin);
    try {
        parse_config(base_yaml(two_backends, {}, "admin:\n  address: \"192.0.2.1:6445\"\n"), "open.yaml");
        ADD_FAILURE() << "a non-loopback admin address without a token was accepted";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        EXPECT_EQ(e.errors()[0].key_path, "admin.address");
        EXPECT_NE(e.errors()[0].message.find("token_file"), std::string::npos) << e.errors()[0].message;
        EXPECT_GT(e.errors()[0].line, 0) << e.errors()[0].to_string();
    }
}

TEST(ConfigDiff, PoolSettingsChangesAreNamed) {
    auto a = parse_config(base_yaml(two_backends), "a");
    std::string yaml = base_yaml(two_backends);
    yaml.replace(yaml.find("round-robin"), 11, "least-connections");
    auto b = parse_config(yaml, "b");
    const auto d = diff_configs(*a, *b);
    EXPECT_EQ(d.pools_changed, (std::vector<std::string>{"p (balance round-robin->least-connections)"}));
}

TEST(ConfigDiff, DrainMustBeABoolean) {
    try {
        parse_config(base_yaml("      - {name: a, address: \"127.0.0.2:6443\", drain: maybe}\n"), "x.yaml");
        FAIL() << "accepted drain: maybe";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        EXPECT_NE(e.errors()[0].to_string().find("pools[0].backends[0].drain"), std::string::npos)
            << e.errors()[0].to_string();
    }
}

}  // namespace
}  // namespace apilb
