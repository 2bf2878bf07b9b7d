// Connection limits refuse cleanly; SIGTERM drains established sessions, then exits 0.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "harness.hpp"

namespace apilb::test {
namespace {

std::string config_for(std::uint16_t port, const std::vector<std::string>& backends, const std::string& extra) {
    return single_pool_config(port, backends, "least-connections", 2, extra);
}

bool echoes(client& c, const std::string& msg) { return c.send_all(msg) && c.recv_exact(msg.size()) == msg; }

TEST(Limits, MaxConnectionsRefusesTheExcessWithoutHarmingTheRest) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir, config_for(port, {echo.address()}, "limits: {max_connections: 5}\n"), "127.0.0.1", port);
    std::vector<client> held(5);
    for (auto& c : held) {
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        ASSERT_TRUE(echoes(c, "ok"));
    }
    for (int i = 0; i < 3; ++i) {
        client extra;
        ASSERT_EQ(extra.connect("127.0.0.1", port), 0) << "refusal is accept-then-close, not a stalled backlog";
        int end = -1;
        extra.set_timeout(3s);
        EXPECT_EQ(extra.recv_until_eof(end), "");
        EXPECT_EQ(end, ECONNRESET) << "the excess client must be reset at once, not sent an empty answer";
    }
    for (auto& c : held) EXPECT_TRUE(echoes(c, "still here"));
    EXPECT_EQ(echo.accepted(), 5);
    // A slot that frees up is usable again.
    held.pop_back();
    std::this_thread::sleep_for(200ms);
    client again;
    ASSERT_EQ(again.connect("127.0.0.1", port), 0);
    EXPECT_TRUE(echoes(again, "back"));
    EXPECT_TRUE(apilb.wait_for_log("connection limit (5) reached")) << apilb.log();
    held.clear();
    again.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST(Limits, DescriptorTableHoldsEverySessionFromTheStart) {
    // A reconnect storm into a freshly started apilb must not wait on the
    // kernel growing the descriptor table (an RCU grace period per doubling
    // in a process with threads): the table is sized at start for
    // max_connections' two sockets each.
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    // As many sessions as this host's descriptor limit holds with room to
    // spare (apilb raises its soft limit to the hard one), at most 3000.
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    const long sessions = std::clamp<long>((static_cast<long>(std::min<rlim_t>(rl.rlim_max, 1 << 20)) - 1024) / 2, 200,
                                           3000);
    apilb_process apilb(dir,
                        config_for(port, {echo.address()}, fmt::format("limits: {{max_connections: {}}}\n", sessions)),
                        "127.0.0.1", port);
    std::ifstream status(fmt::format("/proc/{}/status", apilb.proc().pid()));
    long table = -1;
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("FDSize:", 0) == 0) table = std::stol(line.substr(7));
    }
    EXPECT_GE(table, 2 * sessions) << apilb.log();
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    EXPECT_TRUE(echoes(c, "ok"));
    c.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST(Limits, PerBackendLimitSpillsToOtherBackendsThenRefuses) {
    tcp_server echo1("127.0.0.2", echo_handler());
    tcp_server echo2("127.0.0.3", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir, config_for(port, {echo1.address(), echo2.address()}, "limits: {per_backend: 2}\n"),
                        "127.0.0.1", port);
    std::vector<client> held(4);
    for (auto& c : held) {
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        ASSERT_TRUE(echoes(c, "ok"));
    }
    EXPECT_EQ(echo1.accepted(), 2);
    EXPECT_EQ(echo2.accepted(), 2);
    client extra;
    ASSERT_EQ(extra.connect("127.0.0.1", port), 0);
    int end = -1;
    extra.set_timeout(3s);
    EXPECT_EQ(extra.recv_until_eof(end), "");
    EXPECT_NE(end, EAGAIN);
    EXPECT_TRUE(apilb.wait_for_log("every backend is at its session limit")) << apilb.log();
    held.clear();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

TEST(Drain, SigtermStopsAcceptingAndLetsOpenSessionsFinish) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    // A long connect timeout: the worker's connect timer, armed for the
    // session's connect long ago, must not keep apilb from exiting.
    apilb_process apilb(dir, config_for(port, {echo.address()}, "timeouts: {drain: 20s, connect: 10s}\n"), "127.0.0.1",
                        port);
    client open;
    ASSERT_EQ(open.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(echoes(open, "before"));
    apilb.proc().signal(SIGTERM);
    ASSERT_TRUE(apilb.wait_for_log("SIGTERM: stopped accepting; draining 1 session(s)")) << apilb.log();
    // New clients are refused at once...
    bool refused = false;
    for (int i = 0; i < 100 && !refused; ++i) {
        client late;
        refused = late.connect("127.0.0.1", port, 1s) == ECONNREFUSED;
        if (!refused) std::this_thread::sleep_for(20ms);
    }
    EXPECT_TRUE(refused);
    // ...while the open session keeps working and apilb waits for it.
    EXPECT_TRUE(echoes(open, "during drain"));
    EXPECT_TRUE(apilb.proc().running());
    const auto t0 = std::chrono::steady_clock::now();
    open.close();
    EXPECT_EQ(apilb.proc().wait(5s), std::optional<int>(0)) << apilb.log();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

TEST(Drain, DeadlineClosesSessionsThatDoNotFinish) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir, config_for(port, {echo.address()}, "timeouts: {drain: 1s}\n"), "127.0.0.1", port);
    client open;
    ASSERT_EQ(open.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(echoes(open, "x"));
    const auto t0 = std::chrono::steady_clock::now();
    apilb.proc().signal(SIGTERM);
    int end = -1;
    open.recv_until_eof(end);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_NE(end, EAGAIN);
    EXPECT_GE(waited, 900ms);
    EXPECT_LT(waited, 5s);
    EXPECT_EQ(apilb.proc().wait(5s), std::optional<int>(0)) << apilb.log();
    EXPECT_NE(apilb.log().find("drain deadline reached"), std::string::npos) << apilb.log();
}

TEST(Drain, SecondSignalClosesEverythingAtOnce) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir, config_for(port, {echo.address()}, "timeouts: {drain: 60s}\n"), "127.0.0.1", port);
    client open;
    ASSERT_EQ(open.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(echoes(open, "x"));
    apilb.proc().signal(SIGTERM);
    std::this_thread::sleep_for(200ms);
    apilb.proc().signal(SIGINT);
    EXPECT_EQ(apilb.proc().wait(5s), std::optional<int>(0)) << apilb.log();
}

}  // namespace
}  // namespace apilb::test
