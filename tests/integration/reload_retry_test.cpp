// A session keeps the config generation it started in across a reload: a
// backend connect pending while SIGHUP removes, adds and reorders its
// pool's backends times out and is retried within the session's own
// generation (never indexing the new config's balancer state with a
// position from the old one), on a backend the reload kept; the passive
// failure it reports marks the backend it tried, wherever the new config
// lists it.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>

#include "harness.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;

struct backend_spec {
    std::string name;
    std::string address;
};

/// One worker (round-robin's first choice is the first backend), no active
/// checks (passive detection only), a connect timeout long enough for a
/// reload to land while a connect hangs, and an admin endpoint.
std::string config_for(std::uint16_t port, std::uint16_t admin, const std::vector<backend_spec>& backends) {
    std::string s = fmt::format(
        "workers: 1\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
        "pools:\n  - name: p\n    balance: round-robin\n    backends:\n",
        port);
    for (const auto& b : backends) s += fmt::format("      - {{name: {}, address: \"{}\"}}\n", b.name, b.address);
    s += fmt::format("timeouts: {{connect: 4s}}\nlog: {{level: debug}}\nadmin:\n  address: \"127.0.0.1:{}\"\n", admin);
    return s;
}

/// GET http://127.0.0.1:`admin``path` with curl; "" on failure.
std::string admin_get(std::uint16_t admin, const std::string& path) {
    const auto r = run_command(
        {"/usr/bin/curl", "-sS", "--max-time", "5", fmt::format("http://127.0.0.1:{}{}", admin, path)});
    return r.exit_code == 0 ? r.output : "";
}

/// Polls /metrics until `sample` (a whole line) is there.
bool wait_for_metric(std::uint16_t admin, const std::string& sample, milliseconds timeout = milliseconds(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (("\n" + admin_get(admin, "/metrics")).find("\n" + sample + "\n") != std::string::npos) return true;
        std::this_thread::sleep_for(milliseconds(50));
    }
    return false;
}

/// Starts apilb on pool `before` (its first backend the black hole), sends a
/// client whose connect then hangs there, reloads to `after` while it
/// hangs, and checks that the client is served once the connect has timed
/// out (by whichever backend; the caller checks which) and that the
/// timeout came after the reload. Returns apilb's log.
std::string retry_across_reload(const blackhole& hole, const std::vector<backend_spec>& before,
                                const std::vector<backend_spec>& after) {
    temp_dir dir;
    const auto port = free_port();
    const auto admin = free_port();
    apilb_process apilb(dir, config_for(port, admin, before), "127.0.0.1", port);
    client c;
    EXPECT_EQ(c.connect("127.0.0.1", port), 0);
    EXPECT_TRUE(c.send_all("hello"));
    // Its connect to the black hole is under way: the session holds a slot there.
    EXPECT_TRUE(wait_for_metric(admin, "apilb_backend_active_sessions{pool=\"p\",backend=\"b0\"} 1")) << apilb.log();
    dir.write("apilb.yaml", config_for(port, admin, after));
    apilb.proc().signal(SIGHUP);
    EXPECT_TRUE(apilb.wait_for_log("reload done in", milliseconds(10000))) << apilb.log();
    c.set_timeout(milliseconds(15000));
    EXPECT_EQ(c.recv_exact(5), "hello") << apilb.log();
    // The log writer is a thread of its own: the line can trail the echo.
    const std::string failed = "backend b0 (" + hole.address() + ") failed a client's connect";
    EXPECT_TRUE(apilb.wait_for_log(failed)) << apilb.log();
    const std::string log = apilb.log();
    const auto reloaded = log.find("reload done in");
    const auto timed_out = log.find(failed);
    EXPECT_NE(timed_out, std::string::npos) << log;
    EXPECT_LT(reloaded, timed_out) << "the connect must still have been pending at the reload\n" << log;
    EXPECT_TRUE(apilb.proc().running()) << log;
    c.close();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0)) << apilb.log();
    return apilb.log();
}

TEST(ReloadRetry, ARetryAfterAReloadRenumberedThePoolStaysInTheSessionsGeneration) {
    blackhole hole("127.0.0.4");
    tcp_server b1("127.0.0.2", echo_handler());
    tcp_server b2("127.0.0.3", echo_handler());
    tcp_server bn("127.0.0.5", echo_handler());
    tcp_server bm("127.0.0.6", echo_handler());
    // Three backends become four: b1 removed, bn and bm added, b2 and b0
    // move. The session's retry chooses among the three it started with,
    // and not b1, which the reload removed.
    retry_across_reload(hole, {{"b0", hole.address()}, {"b1", b1.address()}, {"b2", b2.address()}},
                        {{"bn", bn.address()}, {"b2", b2.address()}, {"bm", bm.address()}, {"b0", hole.address()}});
    EXPECT_EQ(b2.accepted(), 1);
    EXPECT_EQ(b1.accepted(), 0) << "a backend the reload removed takes no new session, not even a retry";
    EXPECT_EQ(bn.accepted() + bm.accepted(), 0) << "the retry belongs to the session's own config";
}

TEST(ReloadRetry, APassiveFailureReportedAcrossAReloadMarksTheBackendTried) {
    blackhole hole("127.0.0.4");
    tcp_server b1("127.0.0.2", echo_handler());
    // The same two backends, swapped: position 0 is b1 now.
    const std::string log = retry_across_reload(hole, {{"b0", hole.address()}, {"b1", b1.address()}},
                                                {{"b1", b1.address()}, {"b0", hole.address()}});
    EXPECT_EQ(b1.accepted(), 1);
    EXPECT_NE(log.find("health: pool p backend b0 (" + hole.address() + ") is suspect: connect timed out"),
              std::string::npos)
        << log;
    EXPECT_EQ(log.find("backend b1 (" + b1.address() + ") is suspect"), std::string::npos) << log;
}

}  // namespace
}  // namespace apilb::test
