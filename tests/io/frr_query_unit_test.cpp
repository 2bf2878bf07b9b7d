// Asking FRR: the parse of `show bgp neighbors json` and the bounded child
// that runs vtysh (real processes: /bin/sh, sleep, yes), each bound shown.
#include "apilb/vip/frr_query.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>

namespace apilb {
namespace {

using namespace std::chrono_literals;

TEST(FrrNeighbors, StatesAreReadByAddress) {
    // Trimmed from FRR 8.4's answer: one object per neighbour, keyed by address.
    const auto states = parse_bgp_neighbors(R"({"198.18.20.1":{"remoteAs":64500,"bgpState":"Established",
        "bgpTimerUpMsec":1200},"2001:db8::1":{"remoteAs":64501,"bgpState":"Active"},"x":{"remoteAs":1}})");
    ASSERT_TRUE(states);
    EXPECT_EQ(states->size(), 2u);
    EXPECT_EQ(states->at("198.18.20.1"), "Established");
    EXPECT_EQ(states->at("2001:db8::1"), "Active");
}

TEST(FrrNeighbors, AStateThatIsNotOneOfFrrsIsUnknown) {
    // Found by the bgp_neighbors fuzz target: any string came through as the
    // state, and the agent logs the change from Established to it.
    const auto states = parse_bgp_neighbors(R"({"198.18.20.1":{"bgpState":"Idle\nbgp: forged line"},
        "198.18.20.2":{"bgpState":"Estabnished"},"198.18.20.3":{"bgpState":"OpenConfirm"}})");
    ASSERT_TRUE(states);
    EXPECT_EQ(states->size(), 1u);
    EXPECT_EQ(states->count("198.18.20.1"), 0u);
    EXPECT_EQ(states->count("198.18.20.2"), 0u);
    EXPECT_EQ(states->at("198.18.20.3"), "OpenConfirm");
}

TEST(FrrNeighbors, WhatIsNotTheJsonIsRefused) {
    EXPECT_FALSE(parse_bgp_neighbors("% Unknown command: show bgp neighbors json"));
    EXPECT_FALSE(parse_bgp_neighbors(R"({"198.18.20.1":{"bgpState":"Est)"));  // cut short at the size bound
    EXPECT_FALSE(parse_bgp_neighbors("[1,2]"));
    EXPECT_FALSE(parse_bgp_neighbors(std::string(100, '[') + std::string(100, ']')));  // nested past the bound
    ASSERT_TRUE(parse_bgp_neighbors("{}"));
    EXPECT_TRUE(parse_bgp_neighbors("{}")->empty());
}

/// Runs `run_bounded` to the end on a context of its own.
command_outcome run(std::vector<std::string> argv, std::size_t max_output, std::chrono::milliseconds timeout) {
    boost::asio::io_context io;
    auto done = boost::asio::co_spawn(io, run_bounded(io, std::move(argv), max_output, timeout),
                                      boost::asio::use_future);
    io.run();
    return done.get();
}

TEST(RunBounded, OutputAndExitStatusAreReported) {
    auto ok = run({"/bin/sh", "-c", "echo out; echo err >&2"}, 1024, 5s);
    EXPECT_TRUE(ok.ok) << ok.error;
    EXPECT_EQ(ok.output, "out\n");
    EXPECT_EQ(ok.errors, "err\n");
    auto failed = run({"/bin/sh", "-c", "echo no daemons >&2; exit 1"}, 1024, 5s);
    EXPECT_FALSE(failed.ok);
    EXPECT_EQ(failed.error, "exited with status 1");
    EXPECT_EQ(failed.errors, "no daemons\n");
    auto missing = run({"/nonexistent/vtysh"}, 1024, 5s);
    EXPECT_FALSE(missing.ok);
    EXPECT_NE(missing.error.find("cannot start /nonexistent/vtysh"), std::string::npos) << missing.error;
}

/// The systemd check (scripts/systemd-check.sh, bgp_vty): vtysh run by the
/// apilb user (frrvty, not frr) cannot read /etc/frr/vtysh.conf and says so
/// on stderr before its answer; with both streams in one, every answer was
/// "not FRR's neighbour JSON" and apilb_bgp_frr_up stayed 0.
TEST(RunBounded, AWarningOnStderrLeavesTheAnswerParseable) {
    auto r = run({"/bin/sh", "-c",
                  "echo \"% Can't open configuration file /etc/frr/vtysh.conf due to 'Permission denied'.\" >&2; "
                  "echo '{\"198.18.20.1\":{\"bgpState\":\"Established\"}}'"},
                 1024, 5s);
    EXPECT_TRUE(r.ok) << r.error;
    auto states = parse_bgp_neighbors(r.output);
    ASSERT_TRUE(states) << r.output;
    EXPECT_EQ(states->at("198.18.20.1"), "Established");
    EXPECT_NE(r.errors.find("vtysh.conf"), std::string::npos) << r.errors;
}

/// Both streams are bounded: a child that floods stderr is cut off too.
TEST(RunBounded, AChildThatSaysTooMuchOnStderrIsCutOff) {
    auto r = run({"/bin/sh", "-c", "/usr/bin/yes >&2"}, 64 * 1024, 10s);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "wrote more than 65536 bytes");
    EXPECT_EQ(r.errors.size(), 64u * 1024);
}

TEST(RunBounded, AChildThatHangsIsKilledAtTheDeadline) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = run({"/bin/sleep", "30"}, 1024, 200ms);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "timed out after 200ms");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);  // not the 30 s of sleep
}

TEST(RunBounded, AChildThatSaysTooMuchIsCutOff) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = run({"/usr/bin/yes"}, 64 * 1024, 10s);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "wrote more than 65536 bytes");
    EXPECT_EQ(r.output.size(), 64u * 1024);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

}  // namespace
}  // namespace apilb
