// What a valid file loads to: the duration and address parsers, the value
// types, every default and every field.
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "apilb/core/cpu_budget.hpp"
#include "config_test_util.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------- parse_duration

TEST(ParseDuration, AcceptsEachUnit) {
    EXPECT_EQ(parse_duration("250ms"), duration(250));
    EXPECT_EQ(parse_duration("2s"), duration(2s));
    EXPECT_EQ(parse_duration("5m"), duration(5min));
    EXPECT_EQ(parse_duration("1h"), duration(1h));
    EXPECT_EQ(parse_duration("0"), duration(0));
}

TEST(ParseDuration, AcceptsUnitsLargestFirst) {
    EXPECT_EQ(parse_duration("1m30s"), duration(90s));
    EXPECT_EQ(parse_duration("1h2m3s4ms"), duration(1h + 2min + 3s + 4ms));
    EXPECT_EQ(parse_duration("1h30s"), duration(1h + 30s));
    EXPECT_EQ(parse_duration("0s"), duration(0));
    EXPECT_EQ(parse_duration("0ms"), duration(0));
    EXPECT_EQ(parse_duration("90m"), duration(90min));
}

TEST(ParseDuration, RejectsBareNumbersOtherThanZero) {
    EXPECT_EQ(parse_duration("5"), std::nullopt);
    EXPECT_EQ(parse_duration("00"), std::nullopt);
    EXPECT_EQ(parse_duration("1m30"), std::nullopt);
}

TEST(ParseDuration, RejectsMalformedText) {
    for (const char* bad : {"",     "s",   "ms",  "2 s", " 2s",   "2s ",  "2S",    "-2s",  "+2s", "1.5s",
                            "2sec", "2us", "2ns", "2d",  "30s1m", "1m1m", "1ms5s", "1h1h", "h1",  "0x10s"}) {
        EXPECT_EQ(parse_duration(bad), std::nullopt) << '"' << bad << '"';
    }
}

TEST(ParseDuration, RejectsOverflowInsteadOfWrapping) {
    EXPECT_EQ(parse_duration("9223372036854775807ms"), duration(INT64_MAX));
    EXPECT_EQ(parse_duration("9223372036854775808ms"), std::nullopt);
    EXPECT_EQ(parse_duration("9223372036854775807h"), std::nullopt);
    EXPECT_EQ(parse_duration("2562047788015h12m55s807ms"), duration(INT64_MAX));
    EXPECT_EQ(parse_duration("2562047788015h13m"), std::nullopt);  // each part fits, the sum does not
    EXPECT_EQ(parse_duration("99999999999999999999999s"), std::nullopt);
}

// ---------------------------------------------------------------- parse_socket_address

TEST(ParseSocketAddress, ReadsIPv4) {
    auto a = parse_socket_address("192.0.2.11:6443");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->ip, "192.0.2.11");
    EXPECT_EQ(a->port, 6443);
    EXPECT_FALSE(a->is_v6);
    EXPECT_EQ(a->to_string(), "192.0.2.11:6443");
}

TEST(ParseSocketAddress, ReadsBracketedIPv6InCanonicalForm) {
    auto a = parse_socket_address("[2001:DB8:0:0::11]:6443");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->ip, "2001:db8::11");
    EXPECT_EQ(a->port, 6443);
    EXPECT_TRUE(a->is_v6);
    EXPECT_EQ(a->to_string(), "[2001:db8::11]:6443");

    auto any = parse_socket_address("[::]:443");
    ASSERT_TRUE(any);
    EXPECT_EQ(any->ip, "::");
    auto mapped = parse_socket_address("[::ffff:192.0.2.1]:443");
    ASSERT_TRUE(mapped);
    EXPECT_TRUE(mapped->is_v6);
}

TEST(ParseSocketAddress, AllowsPortZeroForFieldsThatTakeIt) {
    auto a = parse_socket_address("127.0.0.1:0");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->port, 0);
}

TEST(ParseSocketAddress, RejectsMalformedText) {
    for (const char* bad : {"",
                            "192.0.2.1",
                            "192.0.2.1:",
                            "192.0.2.1:65536",
                            "192.0.2.1:123456",
                            "192.0.2.1:-1",
                            "192.0.2.1:+1",
                            "192.0.2.1:http",
                            "localhost:6443",
                            "cp-1.example.com:6443",
                            "2001:db8::1:6443",
                            "[2001:db8::1]",
                            "[2001:db8::1]6443",
                            "[2001:db8::1:6443",
                            "[192.0.2.1]:6443",
                            "192.0.2.256:6443",
                            "192.0.2:6443",
                            "010.0.2.1:6443",
                            " 192.0.2.1:6443",
                            "192.0.2.1:6443 ",
                            "[fe80::1%eth0]:6443",
                            ":6443",
                            "[]:6443"}) {
        EXPECT_EQ(parse_socket_address(bad), std::nullopt) << '"' << bad << '"';
    }
}

// ---------------------------------------------------------------- value types

TEST(ConfigError, ToStringNamesFileLineColumnAndPath) {
    config_error e{.file = "apilb.yaml", .line = 7, .column = 14, .key_path = "pools[0].balance", .message = "bad"};
    EXPECT_EQ(e.to_string(), "apilb.yaml:7:14: pools[0].balance: bad");
    e.key_path.clear();
    EXPECT_EQ(e.to_string(), "apilb.yaml:7:14: bad");
    e.line = 0;
    e.column = 0;
    EXPECT_EQ(e.to_string(), "apilb.yaml: bad");
}

TEST(ConfigLoadError, WhatListsEveryError) {
    config_load_error err({config_error{.file = "f", .line = 1, .column = 2, .key_path = "a", .message = "x"},
                           config_error{.file = "f", .line = 3, .column = 4, .key_path = "", .message = "y"}});
    EXPECT_STREQ(err.what(), "f:1:2: a: x\nf:3:4: y");
    EXPECT_EQ(err.errors().size(), 2u);
}

TEST(EnumToString, MatchesTheSpellingInTheFile) {
    EXPECT_STREQ(to_string(balance_policy::round_robin), "round-robin");
    EXPECT_STREQ(to_string(balance_policy::least_connections), "least-connections");
    EXPECT_STREQ(to_string(relay_mode::splice), "splice");
    EXPECT_STREQ(to_string(relay_mode::copy), "copy");
    EXPECT_STREQ(to_string(relay_io::automatic), "auto");
    EXPECT_STREQ(to_string(relay_io::epoll), "epoll");
    EXPECT_STREQ(to_string(relay_io::io_uring), "io_uring");
}

TEST(Config, PoolLooksUpByNameAndThrowsForUnknown) {
    auto c = parse_config(minimal, "test.yaml");
    EXPECT_EQ(c->pool("control-plane").backends.size(), 3u);
    EXPECT_EQ(&c->pool(c->listeners[0].pool), &c->pools[0]);
    EXPECT_THROW(c->pool("nope"), std::out_of_range);
}

// ---------------------------------------------------------------- loading valid files

TEST(LoadConfig, MinimalFileGetsEveryDefault) {
    auto c = parse_config(minimal, "mem.yaml");
    EXPECT_EQ(c->source, "mem.yaml");
    ASSERT_EQ(c->listeners.size(), 1u);
    EXPECT_EQ(c->listeners[0].name, "apiserver");
    EXPECT_EQ(c->listeners[0].address, (socket_address{.ip = "0.0.0.0", .port = 6443, .is_v6 = false}));
    EXPECT_EQ(c->listeners[0].pool, "control-plane");
    EXPECT_EQ(c->listeners[0].backlog, 4096u);

    ASSERT_EQ(c->pools.size(), 1u);
    const auto& p = c->pools[0];
    EXPECT_EQ(p.balance, balance_policy::least_connections);
    ASSERT_EQ(p.backends.size(), 3u);
    EXPECT_EQ(p.backends[2].name, "cp-3");
    EXPECT_EQ(p.backends[2].address.to_string(), "192.0.2.13:6443");
    EXPECT_EQ(p.backends[2].weight, 1u);
    EXPECT_EQ(p.connect_attempts, 3u) << "0 resolves to the number of backends";

    const cpu_budget budget = probe_cpu_budget();
    EXPECT_EQ(c->workers, budget.workers(256)) << "0 resolves to one worker per CPU apilb may use";
    EXPECT_EQ(c->workers_auto, budget.describe());

    EXPECT_EQ(c->timeouts.connect, 2s);
    EXPECT_EQ(c->timeouts.idle, 1h);
    EXPECT_EQ(c->timeouts.drain, 30s);
    EXPECT_EQ(c->timeouts.write_stall, 60s);
    EXPECT_EQ(c->timeouts.upgrade_quiesce, 1s);
    EXPECT_TRUE(c->tcp.nodelay);
    EXPECT_TRUE(c->tcp.keepalive);
    EXPECT_EQ(c->tcp.keepalive_idle, 15s);
    EXPECT_EQ(c->tcp.keepalive_interval, 5s);
    EXPECT_EQ(c->tcp.keepalive_count, 3u);
    EXPECT_EQ(c->tcp.user_timeout, 30s);
    EXPECT_EQ(c->tcp.socket_buffer, 262144u);
    EXPECT_EQ(c->limits.max_connections, 16384u);
    EXPECT_EQ(c->limits.per_backend, 0u);
    EXPECT_EQ(c->relay.mode, relay_mode::splice);
    EXPECT_EQ(c->relay.buffer_size, 65536u);
    EXPECT_EQ(c->relay.pipe_size, 0u);
    EXPECT_EQ(c->relay.io, relay_io::epoll);
    EXPECT_EQ(c->relay.io_line, 0);
    EXPECT_EQ(c->log.level, "info");
    EXPECT_EQ(c->log.format, log_format::text);
}

TEST(LoadConfig, ReadsEveryField) {
    auto c = parse_config(yaml(R"(
workers: 3
listeners:
  - name: api
    address: "192.0.2.1:6443"
    pool: cp
    backlog: 128
  - name: api-v6
    address: "[2001:db8::1]:6443"
    pool: cp
pools:
  - name: cp
    balance: round-robin
    connect_attempts: 5
    backends:
      - {name: cp-1, address: "192.0.2.11:6443", weight: 2}
      - name: cp-2
        address: "[2001:db8::12]:6443"
        weight: 256
timeouts: {connect: 250ms, idle: 0, drain: 1m30s, write_stall: 0, upgrade_quiesce: 3s}
tcp: {nodelay: false, keepalive: false, keepalive_idle: 2h, keepalive_interval: 1s, keepalive_count: 127, user_timeout: 0,
      socket_buffer: 0}
limits: {max_connections: 0, per_backend: 100}
relay: {mode: copy, buffer_size: 4096, pipe_size: 1048576, io: io_uring}
log: {level: debug, format: json}
)"),
                          "t");
    EXPECT_EQ(c->workers, 3u);
    ASSERT_EQ(c->listeners.size(), 2u);
    EXPECT_EQ(c->listeners[0].backlog, 128u);
    EXPECT_TRUE(c->listeners[1].address.is_v6);
    EXPECT_EQ(c->listeners[1].address.ip, "2001:db8::1");
    const auto& p = c->pool("cp");
    EXPECT_EQ(p.balance, balance_policy::round_robin);
    EXPECT_EQ(p.connect_attempts, 5u) << "explicit value is kept, even above the backend count";
    EXPECT_EQ(p.backends[0].weight, 2u);
    EXPECT_EQ(p.backends[1].weight, 256u);
    EXPECT_EQ(p.backends[1].address.to_string(), "[2001:db8::12]:6443");
    EXPECT_EQ(c->timeouts.connect, 250ms);
    EXPECT_EQ(c->timeouts.idle, 0ms);
    EXPECT_EQ(c->timeouts.drain, 90s);
    EXPECT_FALSE(c->tcp.nodelay);
    EXPECT_FALSE(c->tcp.keepalive);
    EXPECT_EQ(c->tcp.keepalive_idle, 2h);
    EXPECT_EQ(c->tcp.keepalive_interval, 1s);
    EXPECT_EQ(c->tcp.keepalive_count, 127u);
    EXPECT_EQ(c->tcp.user_timeout, 0ms);
    EXPECT_EQ(c->timeouts.write_stall, 0ms);
    EXPECT_EQ(c->timeouts.upgrade_quiesce, 3s);
    EXPECT_EQ(c->tcp.socket_buffer, 0u);
    EXPECT_EQ(c->limits.max_connections, 0u);
    EXPECT_EQ(c->limits.per_backend, 100u);
    EXPECT_EQ(c->relay.mode, relay_mode::copy);
    EXPECT_EQ(c->relay.buffer_size, 4096u);
    EXPECT_EQ(c->relay.pipe_size, 1048576u);
    EXPECT_EQ(c->relay.io, relay_io::io_uring);
    EXPECT_EQ(c->relay.io_line, 23) << "where relay.io was written, for the start's error if io_uring is not there";
    EXPECT_EQ(c->log.level, "debug");
    EXPECT_EQ(c->log.format, log_format::json);
}

TEST(LoadConfig, EmptySectionsKeepDefaults) {
    // Commenting out every field of a section leaves a null value behind.
    auto c = parse_config(minimal + "timeouts:\ntcp:\nlog: {}\n", "t");
    EXPECT_EQ(c->timeouts.idle, 1h);
    EXPECT_EQ(c->tcp.user_timeout, 30s);
}

TEST(LoadConfig, QuotedNumbersAreNumbers) {
    auto c = parse_config(minimal + "workers: \"2\"\n", "t");
    EXPECT_EQ(c->workers, 2u);
}

TEST(LoadConfig, SameBackendInTwoPoolsIsFine) {
    auto c = parse_config(minimal + yaml(R"(
  - name: other
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
)"),
                          "t");
    EXPECT_EQ(c->pools.size(), 2u);
    EXPECT_EQ(c->pool("other").connect_attempts, 1u);
}

TEST(LoadConfig, ReadsAFileAndNamesItAsTheSource) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("apilb-config-test-" + std::to_string(::getpid()) + ".yaml");
    std::ofstream(path) << minimal;
    auto c = load_config(path.string());
    std::filesystem::remove(path);
    EXPECT_EQ(c->source, path.string());
    EXPECT_EQ(c->pools[0].backends.size(), 3u);
}

TEST(LoadConfig, ExampleConfigLoadsCleanly) {
    const char* root = std::getenv("APILB_SOURCE_ROOT");
    if (root == nullptr || *root == '\0') {
        GTEST_SKIP() << "APILB_SOURCE_ROOT is not set, so conf/apilb.yaml cannot be found";
    }
    const std::string path = std::string(root) + "/conf/apilb.yaml";
    try {
        auto c = load_config(path);
        EXPECT_FALSE(c->listeners.empty());
        EXPECT_FALSE(c->pools.empty());
        EXPECT_EQ(c->pool(c->listeners[0].pool).backends.size(), 3u);
    } catch (const config_load_error& e) {
        FAIL() << e.what();
    }
}

TEST(LoadConfig, MaglevPoolWithTableSizeAndKey) {
    auto cfg = parse_config(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    balance: maglev
    maglev: {table_size: 131071, key: source-address-port}
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)",
                            "test.yaml");
    EXPECT_EQ(cfg->pools[0].balance, balance_policy::maglev);
    EXPECT_EQ(cfg->pools[0].maglev_table_size, 131071u);
    EXPECT_EQ(cfg->pools[0].maglev_key, hash_key::source_address_port);
}

}  // namespace
}  // namespace apilb::test
