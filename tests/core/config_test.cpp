#include "apilb/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace apilb {
namespace {

using namespace std::chrono_literals;

/// Test YAML is written starting on the line after R"( so that line 1 of the
/// file is the first line shown in the source.
std::string yaml(const char* text) {
    std::string s = text;
    if (!s.empty() && s.front() == '\n') s.erase(0, 1);
    return s;
}

/// Smallest valid file; tests append sections to it or replace it.
const std::string minimal = yaml(R"(
listeners:
  - name: apiserver
    address: "0.0.0.0:6443"
    pool: control-plane
pools:
  - name: control-plane
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
      - {name: cp-2, address: "192.0.2.12:6443"}
      - {name: cp-3, address: "192.0.2.13:6443"}
)");  // 10 lines; appended text starts at line 11

std::vector<config_error> errors_of(const std::string& text) {
    try {
        parse_config(text, "test.yaml");
    } catch (const config_load_error& e) {
        return e.errors();
    }
    ADD_FAILURE() << "expected the config to be rejected:\n" << text;
    return {};
}

/// The only error of a file expected to have exactly one.
config_error only_error(const std::string& text) {
    auto errors = errors_of(text);
    EXPECT_EQ(errors.size(), 1u) << [&] {
        std::string all;
        for (const auto& e : errors) all += e.to_string() + "\n";
        return all;
    }();
    return errors.empty() ? config_error{} : errors.front();
}

std::string all_messages(const std::vector<config_error>& errors) {
    std::string all;
    for (const auto& e : errors) all += e.to_string() + "\n";
    return all;
}

const config_error* find_path(const std::vector<config_error>& errors, const std::string& path) {
    auto it = std::find_if(errors.begin(), errors.end(),
                           [&](const auto& e) { return e.key_path == path; });
    return it == errors.end() ? nullptr : &*it;
}

#define EXPECT_CONTAINS(haystack, needle) \
    EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "in: " << (haystack)

/// Asserts one error at `line` with `path` whose message contains `needle`.
void expect_one(const std::string& text, int line, const std::string& path, const std::string& needle) {
    auto e = only_error(text);
    EXPECT_EQ(e.file, "test.yaml");
    EXPECT_EQ(e.line, line) << e.to_string();
    EXPECT_EQ(e.key_path, path) << e.to_string();
    EXPECT_CONTAINS(e.message, needle);
}

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
    for (const char* bad : {"", "s", "ms", "2 s", " 2s", "2s ", "2S", "-2s", "+2s", "1.5s", "2sec",
                            "2us", "2ns", "2d", "30s1m", "1m1m", "1ms5s", "1h1h", "h1", "0x10s"}) {
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
    for (const char* bad :
         {"", "192.0.2.1", "192.0.2.1:", "192.0.2.1:65536", "192.0.2.1:123456", "192.0.2.1:-1",
          "192.0.2.1:+1", "192.0.2.1:http", "localhost:6443", "cp-1.example.com:6443",
          "2001:db8::1:6443", "[2001:db8::1]", "[2001:db8::1]6443", "[2001:db8::1:6443",
          "[192.0.2.1]:6443", "192.0.2.256:6443", "192.0.2:6443", "010.0.2.1:6443",
          " 192.0.2.1:6443", "192.0.2.1:6443 ", "[fe80::1%eth0]:6443", ":6443", "[]:6443"}) {
        EXPECT_EQ(parse_socket_address(bad), std::nullopt) << '"' << bad << '"';
    }
}

// ---------------------------------------------------------------- value types

TEST(ConfigError, ToStringNamesFileLineColumnAndPath) {
    config_error e{.file = "apilb.yaml", .line = 7, .column = 14,
                   .key_path = "pools[0].balance", .message = "bad"};
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

    const unsigned cores = std::max(1u, std::min(std::thread::hardware_concurrency(), 256u));
    EXPECT_EQ(c->workers, cores) << "0 resolves to one worker per core";

    EXPECT_EQ(c->timeouts.connect, 2s);
    EXPECT_EQ(c->timeouts.idle, 1h);
    EXPECT_EQ(c->timeouts.drain, 30s);
    EXPECT_TRUE(c->tcp.nodelay);
    EXPECT_TRUE(c->tcp.keepalive);
    EXPECT_EQ(c->tcp.keepalive_idle, 15s);
    EXPECT_EQ(c->tcp.keepalive_interval, 5s);
    EXPECT_EQ(c->tcp.keepalive_count, 3u);
    EXPECT_EQ(c->tcp.user_timeout, 30s);
    EXPECT_EQ(c->limits.max_connections, 16384u);
    EXPECT_EQ(c->limits.per_backend, 0u);
    EXPECT_EQ(c->relay.mode, relay_mode::splice);
    EXPECT_EQ(c->relay.buffer_size, 65536u);
    EXPECT_EQ(c->relay.pipe_size, 0u);
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
timeouts: {connect: 250ms, idle: 0, drain: 1m30s}
tcp: {nodelay: false, keepalive: false, keepalive_idle: 2h, keepalive_interval: 1s, keepalive_count: 127, user_timeout: 0}
limits: {max_connections: 0, per_backend: 100}
relay: {mode: copy, buffer_size: 4096, pipe_size: 1048576}
log: {level: debug, format: json}
)"), "t");
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
    EXPECT_EQ(c->limits.max_connections, 0u);
    EXPECT_EQ(c->limits.per_backend, 100u);
    EXPECT_EQ(c->relay.mode, relay_mode::copy);
    EXPECT_EQ(c->relay.buffer_size, 4096u);
    EXPECT_EQ(c->relay.pipe_size, 1048576u);
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
)"), "t");
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

// ---------------------------------------------------------------- whole-file problems

TEST(LoadConfigErrors, UnreadableFileGivesTheOsReason) {
    try {
        load_config("/nonexistent/apilb.yaml");
        FAIL() << "expected an error";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        const auto& err = e.errors()[0];
        EXPECT_EQ(err.line, 0);
        EXPECT_EQ(err.file, "/nonexistent/apilb.yaml");
        EXPECT_EQ(err.to_string(), "/nonexistent/apilb.yaml: cannot read the file: No such file or directory");
    }
}

TEST(LoadConfigErrors, DirectoryIsNotAFile) {
    try {
        load_config(std::filesystem::temp_directory_path().string());
        FAIL() << "expected an error";
    } catch (const config_load_error& e) {
        ASSERT_EQ(e.errors().size(), 1u);
        EXPECT_EQ(e.errors()[0].line, 0);
        EXPECT_CONTAINS(e.errors()[0].message, "Is a directory");
    }
}

TEST(LoadConfigErrors, SyntaxErrorIsOneErrorAtItsMark) {
    auto e = only_error(yaml(R"(
listeners:
  - name: apiserver
    address: [0.0.0.0:6443
    pool: control-plane
)"));
    EXPECT_EQ(e.line, 4);
    EXPECT_GT(e.column, 0);
    EXPECT_EQ(e.key_path, "");
    EXPECT_CONTAINS(e.message, "YAML syntax error");
    EXPECT_CONTAINS(e.to_string(), "test.yaml:4:");
}

TEST(LoadConfigErrors, TabIndentationIsASyntaxError) {
    auto e = only_error("listeners:\n\t- name: x\n");
    EXPECT_EQ(e.line, 2);
    EXPECT_CONTAINS(e.message, "YAML syntax error");
}

TEST(LoadConfigErrors, EmptyFile) {
    for (const char* text : {"", "\n\n", "# only a comment\n"}) {
        auto e = only_error(text);
        EXPECT_EQ(e.line, 1);
        EXPECT_CONTAINS(e.message, "empty");
    }
}

TEST(LoadConfigErrors, TopLevelMustBeAMapping) {
    expect_one("- listeners\n- pools\n", 1, "", "expected a mapping");
    expect_one("just text\n", 1, "", "found \"just text\"");
}

TEST(LoadConfigErrors, OnlyOneDocument) {
    expect_one(minimal + "---\nworkers: 2\n", 12, "", "2 YAML documents");
}

// ---------------------------------------------------------------- keys

TEST(LoadConfigErrors, UnknownTopLevelKeySuggestsTheNearest) {
    auto e = only_error(minimal + "worker: 2\n");
    EXPECT_EQ(e.line, 11);
    EXPECT_EQ(e.column, 1);
    EXPECT_EQ(e.key_path, "worker");
    EXPECT_CONTAINS(e.message, "unknown key \"worker\"; did you mean \"workers\"?");
    EXPECT_CONTAINS(e.message, "expected one of: workers, listeners, pools, timeouts, tcp, limits, relay, log");
}

TEST(LoadConfigErrors, UnknownKeyDeepInsideNamesItsPath) {
    auto e = only_error(yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
      - name: cp-2
        address: "192.0.2.12:6443"
        wieght: 2
)"));
    EXPECT_EQ(e.line, 9);
    EXPECT_EQ(e.column, 9);
    EXPECT_EQ(e.key_path, "pools[0].backends[1].wieght");
    EXPECT_CONTAINS(e.message, "did you mean \"weight\"?");
    EXPECT_CONTAINS(e.message, "expected one of: name, address, weight");
}

TEST(LoadConfigErrors, UnknownKeyWithNothingCloseHasNoSuggestion) {
    auto e = only_error(minimal + "tcp: {fast_open: true}\n");
    EXPECT_EQ(e.key_path, "tcp.fast_open");
    EXPECT_EQ(e.message.find("did you mean"), std::string::npos) << e.message;
}

TEST(LoadConfigErrors, UnknownKeysInEverySection) {
    auto errors = errors_of(minimal + yaml(R"(
timeouts: {conect: 1s}
tcp: {keepalive_cnt: 3}
limits: {max_conns: 1}
relay: {buffer: 4096}
log: {levle: info}
)"));
    ASSERT_EQ(errors.size(), 5u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "timeouts.conect");
    EXPECT_CONTAINS(errors[0].message, "did you mean \"connect\"?");
    EXPECT_EQ(errors[1].key_path, "tcp.keepalive_cnt");
    EXPECT_EQ(errors[2].key_path, "limits.max_conns");
    EXPECT_EQ(errors[3].key_path, "relay.buffer");
    EXPECT_EQ(errors[4].key_path, "log.levle");
    EXPECT_CONTAINS(errors[4].message, "did you mean \"level\"?");
    EXPECT_EQ(errors[4].line, 15);
}

TEST(LoadConfigErrors, RepeatedKeyIsAnError) {
    expect_one(minimal + "workers: 2\nworkers: 4\n", 12, "workers", "repeated; first set at line 11");
}

TEST(LoadConfigErrors, MissingRequiredKeyPointsAtTheEnclosingMapping) {
    auto e = only_error(yaml(R"(
listeners:
  - name: apiserver
    pool: control-plane
pools:
  - name: control-plane
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
)"));
    EXPECT_EQ(e.line, 2);
    EXPECT_EQ(e.column, 5);
    EXPECT_EQ(e.key_path, "listeners[0]");
    EXPECT_CONTAINS(e.message, "required key \"address\" is missing");
}

TEST(LoadConfigErrors, MissingTopLevelSections) {
    auto errors = errors_of("workers: 2\n");
    ASSERT_EQ(errors.size(), 2u) << all_messages(errors);
    EXPECT_EQ(errors[0].line, 1);
    EXPECT_CONTAINS(errors[0].message, "\"listeners\" is missing");
    EXPECT_CONTAINS(errors[1].message, "\"pools\" is missing");
}

TEST(LoadConfigErrors, MissingBackendName) {
    auto e = only_error(minimal + yaml(R"(
  - name: other
    backends:
      - address: "192.0.2.21:6443"
)"));
    EXPECT_EQ(e.line, 13);
    EXPECT_EQ(e.key_path, "pools[1].backends[0]");
    EXPECT_CONTAINS(e.message, "\"name\" is missing");
}

// ---------------------------------------------------------------- types

TEST(LoadConfigErrors, MappingWhereAScalarIsExpected) {
    expect_one(minimal + "workers: {count: 2}\n", 11, "workers", "expected an integer in 0..256; found a mapping");
}

TEST(LoadConfigErrors, MappingWhereASequenceIsExpected) {
    auto e = only_error(yaml(R"(
listeners:
  name: apiserver
pools:
  - name: cp
    backends:
      - {name: cp-1, address: "192.0.2.11:6443"}
)"));
    EXPECT_EQ(e.line, 2);
    EXPECT_EQ(e.key_path, "listeners");
    EXPECT_CONTAINS(e.message, "expected a sequence of listeners");
    EXPECT_CONTAINS(e.message, "found a mapping");
}

TEST(LoadConfigErrors, ScalarWhereASectionIsExpected) {
    expect_one(minimal + "tcp: fast\n", 11, "tcp", "expected a mapping with keys nodelay, keepalive");
}

TEST(LoadConfigErrors, ListItemMustBeAMapping) {
    auto e = only_error(minimal + "  - control-plane-2\n");
    EXPECT_EQ(e.line, 11);
    EXPECT_EQ(e.key_path, "pools[1]");
    EXPECT_CONTAINS(e.message, "found \"control-plane-2\"");
}

TEST(LoadConfigErrors, IntegersMustBeDecimal) {
    expect_one(minimal + "workers: four\n", 11, "workers", "expected an integer in 0..256; found \"four\"");
    expect_one(minimal + "workers: 0x10\n", 11, "workers", "found \"0x10\"");
    expect_one(minimal + "workers: 2.5\n", 11, "workers", "found \"2.5\"");
}

TEST(LoadConfigErrors, IntegersOutOfRange) {
    expect_one(minimal + "workers: 257\n", 11, "workers", "257 is out of range; expected 0..256");
    expect_one(minimal + "workers: -1\n", 11, "workers", "-1 is out of range");
    expect_one(minimal + "limits: {max_connections: 4294967296}\n", 11, "limits.max_connections",
               "4294967296 is out of range; expected 0..4294967295");
    expect_one(minimal + "limits: {per_backend: 99999999999999999999999}\n", 11, "limits.per_backend",
               "out of range");
    expect_one(minimal + "tcp: {keepalive_count: 128}\n", 11, "tcp.keepalive_count", "expected 1..127");
    expect_one(minimal + "tcp: {keepalive_count: 0}\n", 11, "tcp.keepalive_count", "expected 1..127");
    expect_one(minimal + "relay: {buffer_size: 1024}\n", 11, "relay.buffer_size", "expected 4096..16777216");
    expect_one(minimal + "relay: {pipe_size: 100}\n", 11, "relay.pipe_size", "expected 0 or 4096..1048576");
}

TEST(LoadConfigErrors, ListenerAndPoolIntegerRanges) {
    auto errors = errors_of(yaml(R"(
listeners:
  - {name: a, address: "0.0.0.0:6443", pool: cp, backlog: 0}
pools:
  - name: cp
    connect_attempts: 17
    backends:
      - {name: cp-1, address: "192.0.2.11:6443", weight: 257}
      - {name: cp-2, address: "192.0.2.12:6443", weight: 0}
)"));
    ASSERT_EQ(errors.size(), 4u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "listeners[0].backlog");
    EXPECT_CONTAINS(errors[0].message, "expected 1..65535");
    EXPECT_EQ(errors[1].key_path, "pools[0].connect_attempts");
    EXPECT_EQ(errors[1].line, 5);
    EXPECT_CONTAINS(errors[1].message, "17 is out of range; expected 0..16");
    EXPECT_EQ(errors[2].key_path, "pools[0].backends[0].weight");
    EXPECT_CONTAINS(errors[2].message, "expected 1..256");
    EXPECT_EQ(errors[3].key_path, "pools[0].backends[1].weight");
    EXPECT_EQ(errors[3].line, 8);
}

TEST(LoadConfigErrors, BooleansAreTrueOrFalseOnly) {
    expect_one(minimal + "tcp:\n  nodelay: yes\n", 12, "tcp.nodelay",
               "expected true or false; found \"yes\" (the YAML 1.1 spellings");
    expect_one(minimal + "tcp: {keepalive: True}\n", 11, "tcp.keepalive", "found \"True\"");
    expect_one(minimal + "tcp: {keepalive: [true]}\n", 11, "tcp.keepalive", "found a sequence");
}

TEST(LoadConfigErrors, EmptyValueIsNotAValue) {
    auto e = only_error(minimal + "tcp:\n  nodelay:\n  keepalive: true\n");
    EXPECT_EQ(e.line, 12) << "points at the key, not the next line";
    EXPECT_EQ(e.key_path, "tcp.nodelay");
    EXPECT_CONTAINS(e.message, "found no value");
}

// ---------------------------------------------------------------- addresses

std::string with_backend_address(const std::string& address) {
    return yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    backends:
      - name: cp-1
        address: )") + address + "\n";
}

TEST(LoadConfigErrors, HostNamesAreNotResolved) {
    auto e = only_error(with_backend_address("cp-1.example.com:6443"));
    EXPECT_EQ(e.line, 7);
    EXPECT_EQ(e.column, 18);
    EXPECT_EQ(e.key_path, "pools[0].backends[0].address");
    EXPECT_CONTAINS(e.message, "invalid address \"cp-1.example.com:6443\"");
    EXPECT_CONTAINS(e.message, "host names are not resolved");
    EXPECT_CONTAINS(e.message, "expected a numeric IPv4 \"a.b.c.d:port\" or IPv6 \"[addr]:port\" address");
}

TEST(LoadConfigErrors, AddressProblemsAreNamed) {
    const std::pair<const char*, const char*> cases[] = {
        {"192.0.2.11", "the port is missing"},
        {"localhost", "the port is missing, and host names are not resolved"},
        {"\"192.0.2.11:\"", "the port is missing"},
        {"\"192.0.2.11:0\"", "port 0 is out of range 1..65535"},
        {"\"192.0.2.11:70000\"", "port 70000 is out of range 1..65535"},
        {"\"192.0.2.11:https\"", "port \"https\" is not a number"},
        {"\"2001:db8::11:6443\"", "an IPv6 address needs brackets"},
        {"\"[2001:db8::11]\"", "the port is missing"},
        {"\"[2001:db8::11\"", "\"]\" is missing after the IPv6 address"},
        {"\"[2001:db8::zz]:6443\"", "is not a valid IPv6 address"},
        {"\"192.0.2.300:6443\"", "\"192.0.2.300\" is not a valid IPv4 address"},
        {"\"0.0.0.0:6443\"", "a backend cannot be the unspecified address"},
        {"\"[::]:6443\"", "a backend cannot be the unspecified address"},
        {"\"\"", "the address is empty"},
        {"{ip: 192.0.2.11}", "found a mapping"},
    };
    for (const auto& [address, needle] : cases) {
        SCOPED_TRACE(address);
        expect_one(with_backend_address(address), 7, "pools[0].backends[0].address", needle);
    }
}

TEST(LoadConfigErrors, ListenerMayUseTheUnspecifiedAddressButNotPortZero) {
    EXPECT_NO_THROW(parse_config(minimal, "t"));
    auto e = only_error(yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:0", pool: cp}
pools:
  - name: cp
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"));
    EXPECT_EQ(e.key_path, "listeners[0].address");
    EXPECT_CONTAINS(e.message, "port 0 is out of range");
}

// ---------------------------------------------------------------- durations

TEST(LoadConfigErrors, BareNumberDurationNeedsAUnit) {
    auto e = only_error(minimal + "timeouts:\n  connect: 5\n");
    EXPECT_EQ(e.line, 12);
    EXPECT_EQ(e.column, 12);
    EXPECT_EQ(e.key_path, "timeouts.connect");
    EXPECT_CONTAINS(e.message, "duration \"5\" needs a unit, e.g. \"5s\" or \"5ms\"");
}

TEST(LoadConfigErrors, MalformedDuration) {
    expect_one(minimal + "timeouts: {drain: 1.5s}\n", 11, "timeouts.drain",
               "invalid duration \"1.5s\"; expected whole numbers with units ms, s, m or h");
    expect_one(minimal + "timeouts: {drain: 30 seconds}\n", 11, "timeouts.drain", "invalid duration");
    expect_one(minimal + "timeouts: {drain: {s: 1}}\n", 11, "timeouts.drain", "found a mapping");
}

TEST(LoadConfigErrors, DurationsOutOfRange) {
    expect_one(minimal + "timeouts: {connect: 0}\n", 11, "timeouts.connect",
               "\"0\" is out of range; expected 1ms..5m");
    expect_one(minimal + "timeouts: {connect: 6m}\n", 11, "timeouts.connect", "expected 1ms..5m");
    expect_one(minimal + "timeouts: {idle: 500ms}\n", 11, "timeouts.idle", "expected 0 (disabled) or 1s");
    expect_one(minimal + "timeouts: {drain: 61m}\n", 11, "timeouts.drain", "expected 0..1h");
    expect_one(minimal + "tcp: {user_timeout: 500ms}\n", 11, "tcp.user_timeout", "expected 0 or 1s..1h");
    expect_one(minimal + "tcp: {user_timeout: 2h}\n", 11, "tcp.user_timeout", "expected 0 or 1s..1h");
    expect_one(minimal + "tcp: {keepalive_idle: 3h}\n", 11, "tcp.keepalive_idle", "expected 1s..2h");
    expect_one(minimal + "tcp: {keepalive_interval: 0}\n", 11, "tcp.keepalive_interval", "expected 1s..2h");
    EXPECT_NO_THROW(parse_config(minimal + "timeouts: {idle: 0, drain: 0, connect: 5m}\n", "t"));
    EXPECT_NO_THROW(parse_config(minimal + "tcp: {user_timeout: 1500ms}\n", "t"));
}

TEST(LoadConfigErrors, KeepaliveTimesAreWholeSeconds) {
    expect_one(minimal + "tcp: {keepalive_idle: 1500ms}\n", 11, "tcp.keepalive_idle",
               "\"1500ms\" is not a whole number of seconds; the kernel takes this value in seconds");
    expect_one(minimal + "tcp: {keepalive_interval: 500ms}\n", 11, "tcp.keepalive_interval",
               "not a whole number of seconds");
}

// ---------------------------------------------------------------- choices and names

TEST(LoadConfigErrors, UnknownBalancePolicy) {
    auto e = only_error(yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    balance: fastest
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"));
    EXPECT_EQ(e.to_string(),
              "test.yaml:5:14: pools[0].balance: unknown value \"fastest\"; "
              "expected one of: round-robin, least-connections, maglev");
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
)", "test.yaml");
    EXPECT_EQ(cfg->pools[0].balance, balance_policy::maglev);
    EXPECT_EQ(cfg->pools[0].maglev_table_size, 131071u);
    EXPECT_EQ(cfg->pools[0].maglev_key, hash_key::source_address_port);
}

TEST(LoadConfigErrors, MaglevTableSizeMustBePrime) {
    auto e = only_error(yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    balance: maglev
    maglev: {table_size: 65536}
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"));
    EXPECT_EQ(e.line, 6);
    EXPECT_EQ(e.key_path, "pools[0].maglev.table_size");
    EXPECT_NE(e.message.find("not a prime"), std::string::npos) << e.message;
}

TEST(LoadConfigErrors, UnknownChoiceSuggestsTheNearest) {
    expect_one(minimal + "relay: {mode: splise}\n", 11, "relay.mode",
               "unknown value \"splise\"; did you mean \"splice\"? expected one of: splice, copy");
    expect_one(minimal + "log: {level: warning}\n", 11, "log.level",
               "expected one of: trace, debug, info, warn, error, critical, off");
    expect_one(minimal + "log: {level: INFO}\n", 11, "log.level", "did you mean \"info\"?");
    expect_one(minimal + "log: {format: yaml}\n", 11, "log.format", "expected one of: text, json");
    auto c = parse_config(minimal.substr(0, minimal.find("pools:")) + yaml(R"(
pools:
  - name: control-plane
    balance: round-robin
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"), "t");
    EXPECT_EQ(c->pools[0].balance, balance_policy::round_robin);
}

TEST(LoadConfigErrors, InvalidNames) {
    const std::string long_name(64, 'a');
    for (const std::string& name : {std::string("-api"), std::string("\"cp 1\""), std::string(".x"),
                                    std::string("\"\""), std::string("api/v1"), long_name}) {
        SCOPED_TRACE(name);
        auto e = only_error(yaml(R"(
listeners:
  - name: )") + name + std::string(R"(
    address: "0.0.0.0:6443"
    pool: cp
pools:
  - name: cp
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"));
        EXPECT_EQ(e.line, 2);
        EXPECT_EQ(e.key_path, "listeners[0].name");
        EXPECT_CONTAINS(e.message, "expected 1 to 63 characters of A-Z a-z 0-9 . _ -");
    }
    EXPECT_NO_THROW(parse_config(yaml(R"(
listeners:
  - {name: )") + std::string(63, 'a') + std::string(R"(, address: "0.0.0.0:6443", pool: 9.cp_x-1}
pools:
  - name: 9.cp_x-1
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"), "t"));
}

// ---------------------------------------------------------------- cross-item checks

TEST(LoadConfigErrors, DuplicateListenerNamesAndAddresses) {
    auto errors = errors_of(yaml(R"(
listeners:
  - {name: api, address: "0.0.0.0:6443", pool: cp}
  - {name: api, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"));
    ASSERT_EQ(errors.size(), 2u) << all_messages(errors);
    const auto* name = find_path(errors, "listeners[1].name");
    ASSERT_NE(name, nullptr) << all_messages(errors);
    EXPECT_EQ(name->line, 3);
    EXPECT_CONTAINS(name->message, "duplicate listener name \"api\"; already used by listeners[0].name at line 2");
    const auto* address = find_path(errors, "listeners[1].address");
    ASSERT_NE(address, nullptr) << all_messages(errors);
    EXPECT_EQ(address->line, 3);
    EXPECT_CONTAINS(address->message, "duplicate listener address \"0.0.0.0:6443\"");
}

TEST(LoadConfigErrors, DuplicatePoolNames) {
    expect_one(minimal + yaml(R"(
  - name: control-plane
    backends: [{name: cp-9, address: "192.0.2.19:6443"}]
)"), 11, "pools[1].name", "duplicate pool name \"control-plane\"; already used by pools[0].name at line 6");
}

TEST(LoadConfigErrors, DuplicateBackendsWithinAPool) {
    auto errors = errors_of(yaml(R"(
listeners:
  - {name: api, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    backends:
      - {name: cp-1, address: "[2001:db8::11]:6443"}
      - {name: cp-1, address: "[2001:DB8:0::11]:6443"}
)"));
    ASSERT_EQ(errors.size(), 2u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "pools[0].backends[1].name");
    EXPECT_EQ(errors[0].line, 7);
    EXPECT_CONTAINS(errors[0].message, "duplicate backend name \"cp-1\"");
    EXPECT_EQ(errors[1].key_path, "pools[0].backends[1].address");
    EXPECT_CONTAINS(errors[1].message, "duplicate backend address \"[2001:db8::11]:6443\"")
        << "addresses are compared in canonical form";
}

TEST(LoadConfigErrors, ListenerNamingAMissingPool) {
    auto e = only_error(yaml(R"(
listeners:
  - name: apiserver
    address: "0.0.0.0:6443"
    pool: control-plan
pools:
  - name: control-plane
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
  - name: etcd
    backends: [{name: e-1, address: "192.0.2.21:2379"}]
)"));
    EXPECT_EQ(e.line, 4);
    EXPECT_EQ(e.column, 11);
    EXPECT_EQ(e.key_path, "listeners[0].pool");
    EXPECT_EQ(e.message,
              "pool \"control-plan\" is not defined; did you mean \"control-plane\"? "
              "defined pools: control-plane, etcd");
}

TEST(LoadConfigErrors, BrokenPoolNameDoesNotCascadeIntoTheListener) {
    auto e = only_error(yaml(R"(
listeners:
  - {name: api, address: "0.0.0.0:6443", pool: "control plane"}
pools:
  - name: control plane
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"));
    EXPECT_EQ(e.key_path, "pools[0].name");
}

TEST(LoadConfigErrors, PoolWithNoBackends) {
    expect_one(minimal + "  - name: empty\n    backends: []\n", 12, "pools[1].backends",
               "no backends are defined; at least one is required");
    expect_one(minimal + "  - name: empty\n    backends:\n", 12, "pools[1].backends", "no backends are defined");
}

TEST(LoadConfigErrors, NoListeners) {
    auto errors = errors_of("listeners: []\npools: []\n");
    ASSERT_EQ(errors.size(), 2u) << all_messages(errors);
    EXPECT_EQ(errors[0].key_path, "listeners");
    EXPECT_CONTAINS(errors[0].message, "no listeners are defined");
    EXPECT_EQ(errors[1].key_path, "pools");
    EXPECT_EQ(errors[1].line, 2);
}

// ---------------------------------------------------------------- collecting

TEST(LoadConfigErrors, CollectsEveryProblemInFileOrder) {
    const std::string text = yaml(R"(
workers: lots
listeners:
  - name: apiserver
    address: "0.0.0.0:6443"
    pool: control-plane
pools:
  - name: control-plane
    balance: random
    backends:
      - {name: cp-1, address: "cp-1.example:6443"}
)");
    auto errors = errors_of(text);
    ASSERT_EQ(errors.size(), 3u) << all_messages(errors);
    EXPECT_EQ(errors[0].line, 1);
    EXPECT_EQ(errors[0].key_path, "workers");
    EXPECT_EQ(errors[1].line, 8);
    EXPECT_EQ(errors[1].key_path, "pools[0].balance");
    EXPECT_EQ(errors[2].line, 10);
    EXPECT_EQ(errors[2].key_path, "pools[0].backends[0].address");

    try {
        parse_config(text, "test.yaml");
    } catch (const config_load_error& e) {
        const std::string what = e.what();
        EXPECT_EQ(std::count(what.begin(), what.end(), '\n'), 2) << what;
        EXPECT_EQ(what.rfind("test.yaml:1:10: workers: ", 0), 0u) << what;
    }
}

}  // namespace
}  // namespace apilb
