// Values of the right type that the loader still rejects: integers and
// durations out of range, bad addresses, unknown choices, invalid names, and
// the checks across items (duplicates, a listener naming a missing pool).
#include "apilb/core/config.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "config_test_util.hpp"

namespace apilb::test {
namespace {

// ---------------------------------------------------------------- integer ranges

TEST(LoadConfigErrors, IntegersOutOfRange) {
    expect_one(minimal + "workers: 257\n", 11, "workers", "257 is out of range; expected 0..256");
    expect_one(minimal + "workers: -1\n", 11, "workers", "-1 is out of range");
    expect_one(minimal + "limits: {max_connections: 4294967296}\n", 11, "limits.max_connections",
               "4294967296 is out of range; expected 0..4294967295");
    expect_one(minimal + "limits: {per_backend: 99999999999999999999999}\n", 11, "limits.per_backend", "out of range");
    expect_one(minimal + "tcp: {keepalive_count: 128}\n", 11, "tcp.keepalive_count", "expected 1..127");
    expect_one(minimal + "tcp: {keepalive_count: 0}\n", 11, "tcp.keepalive_count", "expected 1..127");
    expect_one(minimal + "relay: {buffer_size: 1024}\n", 11, "relay.buffer_size", "expected 4096..16777216");
    expect_one(minimal + "relay: {pipe_size: 100}\n", 11, "relay.pipe_size", "expected 0 or 4096..1048576");
    expect_one(minimal + "tcp: {socket_buffer: 4096}\n", 11, "tcp.socket_buffer",
               "4096 is out of range; expected 0 or 16384..67108864");
    expect_one(minimal + "tcp: {socket_buffer: 134217728}\n", 11, "tcp.socket_buffer", "expected 0 or 16384..67108864");
    expect_one(minimal + "tcp: {socket_buffer: 1MiB}\n", 11, "tcp.socket_buffer", "1MiB");
    EXPECT_EQ(parse_config(minimal + "tcp: {socket_buffer: 65536}\n", "t")->tcp.socket_buffer, 65536u);
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

// ---------------------------------------------------------------- addresses

std::string with_backend_address(const std::string& address) {
    return yaml(R"(
listeners:
  - {name: apiserver, address: "0.0.0.0:6443", pool: cp}
pools:
  - name: cp
    backends:
      - name: cp-1
        address: )") +
           address + "\n";
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
    expect_one(minimal + "timeouts: {connect: 0}\n", 11, "timeouts.connect", "\"0\" is out of range; expected 1ms..5m");
    expect_one(minimal + "timeouts: {connect: 6m}\n", 11, "timeouts.connect", "expected 1ms..5m");
    expect_one(minimal + "timeouts: {idle: 500ms}\n", 11, "timeouts.idle", "expected 0 (disabled) or 1s");
    expect_one(minimal + "timeouts: {drain: 61m}\n", 11, "timeouts.drain", "expected 0..1h");
    expect_one(minimal + "timeouts: {write_stall: 500ms}\n", 11, "timeouts.write_stall",
               "\"500ms\" is out of range; expected 0 (disabled) or 1s..24h");
    expect_one(minimal + "timeouts: {write_stall: 25h}\n", 11, "timeouts.write_stall",
               "expected 0 (disabled) or 1s..24h");
    expect_one(minimal + "timeouts: {write_stall: 60}\n", 11, "timeouts.write_stall", "needs a unit");
    // Within the upgrade's 5 s session phase (docs/configuration.md).
    expect_one(minimal + "timeouts: {upgrade_quiesce: 5s}\n", 11, "timeouts.upgrade_quiesce",
               "\"5s\" is out of range; expected 10ms..4s");
    expect_one(minimal + "timeouts: {upgrade_quiesce: 0}\n", 11, "timeouts.upgrade_quiesce", "expected 10ms..4s");
    expect_one(minimal + "timeouts: {upgrade_quiesce: 1}\n", 11, "timeouts.upgrade_quiesce", "needs a unit");
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
    expect_one(minimal + "relay: {io: uring}\n", 11, "relay.io",
               "unknown value \"uring\"; expected one of: auto, epoll, io_uring");
    expect_one(minimal + "log: {level: warning}\n", 11, "log.level",
               "expected one of: trace, debug, info, warn, error, critical, off");
    expect_one(minimal + "log: {level: INFO}\n", 11, "log.level", "did you mean \"info\"?");
    expect_one(minimal + "log: {format: yaml}\n", 11, "log.format", "expected one of: text, json");
    auto c = parse_config(minimal.substr(0, minimal.find("pools:")) + yaml(R"(
pools:
  - name: control-plane
    balance: round-robin
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"),
                          "t");
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
  - {name: )") + std::string(63, 'a') +
                                     std::string(R"(, address: "0.0.0.0:6443", pool: 9.cp_x-1}
pools:
  - name: 9.cp_x-1
    backends: [{name: cp-1, address: "192.0.2.11:6443"}]
)"),
                                 "t"));
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
)"),
               11, "pools[1].name", "duplicate pool name \"control-plane\"; already used by pools[0].name at line 6");
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

}  // namespace
}  // namespace apilb::test
