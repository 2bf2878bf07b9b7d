// The upgrade (SIGUSR2, docs/upgrade.md "Zero-drop upgrade"): the real
// binary hands its listening sockets to a new apilb under a steady rate of
// new connections, which must all be served; a new binary that fails is
// rolled back with the old one serving on; with a bgp section the upgrade
// is refused. The sessions are upgrade_sessions_test's, the admin trigger
// upgrade_admin_test's.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>
#include <memory>

#include "frr_host.hpp"
#include "harness.hpp"
#include "netns.hpp"
#include "upgrade_support.hpp"

namespace apilb::test {
namespace {

TEST_F(UpgradeTest, ListenersMoveToTheNewProcessWithoutARefusedConnect) {
    apilb_process old(dir, config(), "127.0.0.1", port);
    const pid_t old_pid = old.proc().pid();
    // 50 connections a second for 5 s; the upgrade happens in the middle.
    steady_load load(port, 250, 20ms);
    ASSERT_TRUE(wait_until([&] { return load.done() >= 50; }, 20s));
    old.proc().signal(SIGUSR2);
    ASSERT_TRUE(wait_until([&] { return handed_to(old.log()) != 0; }, 60s)) << old.log();
    const pid_t new_pid = handed_to(old.log());
    end_at_exit guard{{new_pid}};
    EXPECT_NE(new_pid, old_pid);
    load.join();
    EXPECT_EQ(load.failed(), 0) << load.last_error() << "\n" << old.log();
    EXPECT_EQ(load.done(), 250);
    // The old process drains (nothing open) and exits 0; the new one serves.
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    EXPECT_TRUE(alive(new_pid));
    client c;
    c.set_timeout(5s);
    ASSERT_EQ(c.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(c.send_all("after\n"));
    EXPECT_EQ(c.recv_exact(6), "after\n");
    const std::string log = old.log();
    EXPECT_NE(
        log.find("upgrade: listener front on 127.0.0.1:" + std::to_string(port) + " took 2 handed-over socket(s)"),
        std::string::npos)
        << log;
    end_by_pid(new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

TEST_F(UpgradeTest, TwoUpgradesBackToBack) {
    apilb_process first(dir, config(), "127.0.0.1", port);
    steady_load load(port, 250, 20ms);
    ASSERT_TRUE(wait_until([&] { return load.done() >= 25; }, 20s));
    first.proc().signal(SIGUSR2);
    ASSERT_TRUE(wait_until([&] { return handed_to(first.log(), 1) != 0; }, 60s)) << first.log();
    const pid_t second = handed_to(first.log(), 1);
    end_at_exit guard{{second}};
    ::kill(second, SIGUSR2);
    ASSERT_TRUE(wait_until([&] { return handed_to(first.log(), 2) != 0; }, 60s)) << first.log();
    const pid_t third = handed_to(first.log(), 2);
    guard.pids.push_back(third);
    EXPECT_NE(third, second);
    load.join();
    EXPECT_EQ(load.failed(), 0) << load.last_error() << "\n" << first.log();
    EXPECT_EQ(first.proc().wait(20s), 0);
    EXPECT_TRUE(wait_until([&] { return !alive(second); }, 20s))
        << "the second process did not exit after handing over";
    EXPECT_TRUE(alive(third));
    end_by_pid(second);
    end_by_pid(third);
    expect_no_sanitizer_report(first.log(), "apilb (upgraded)");
}

TEST_F(UpgradeTest, NewBinaryThatExitsAtOnceIsRolledBack) {
    // Only this test's apilb sees it: the "new binary" is /bin/false.
    scoped_env env("APILB_UPGRADE_BINARY", "/bin/false");
    apilb_process old(dir, config(), "127.0.0.1", port);
    expect_rolled_back(old, 150, "it exited with status 1");
    // A second try is not blocked by the first.
    old.proc().signal(SIGUSR2);
    EXPECT_TRUE(wait_until(
        [&] {
            const std::string log = old.log();
            return log.find("upgrade failed:") != log.rfind("upgrade failed:");
        },
        60s))
        << old.log();
    EXPECT_EQ(old.terminate(), 0);
}

TEST_F(UpgradeTest, NewBinaryThatHangsIsKilledAtTheDeadlineAndRolledBack) {
    // A "new binary" that never speaks; the deadline shortened to 2 s (test only).
    scoped_env binary("APILB_UPGRADE_BINARY", hanging_binary(dir).c_str());
    scoped_env deadline("APILB_UPGRADE_DEADLINE_MS", "2000");
    apilb_process old(dir, config(), "127.0.0.1", port);
    expect_rolled_back(old, 200, "timed out (killed it; it died of signal 9)");
    EXPECT_EQ(old.terminate(), 0);
}

TEST_F(UpgradeTest, ConfigTheNewBinaryRejectsIsRolledBack) {
    apilb_process old(dir, config(), "127.0.0.1", port);
    // The file on disk is now bad: the new process checks it and exits 2.
    dir.write("apilb.yaml", config() + "bogus_key: 1\n");
    expect_rolled_back(old, 150, "it exited with status 2");
    EXPECT_EQ(old.terminate(), 0);
}


// With a bgp section both processes would put the VIPs on and off the
// interface, and the old one would take them away as it ends: SIGUSR2 is
// refused with the reason, and so is POST /api/v1/upgrade (409); nothing is
// started, and apilb serves on, its established session included. In a
// namespace of its own (root): apilb puts the VIP on the namespace's `lo`
// as it starts, never on the host's.
TEST(UpgradeRefused, WithABgpSectionApilbSaysWhyAndServesOn) {
    if (auto why = netns_segment::unavailable_reason(); !why.empty()) {
        GTEST_SKIP() << "needs network namespaces (root, iproute2): " << why;
    }
    netns_segment::remove_orphans("apilb-upbgp-");
    netns_segment segment("apilb-upbgp-" + std::to_string(::getpid()));
    const std::string ns = segment.add_detached_host("n");
    const std::string vip = "198.18.44.100";
    std::unique_ptr<tcp_server> backend;
    in_netns(ns, [&] { backend = std::make_unique<tcp_server>("127.0.0.1", echo_handler()); });
    temp_dir dir;
    const std::uint16_t port = free_port();
    const std::uint16_t admin = free_port();
    dir.write("token", "s3cret-token\n");
    // vty_socket_dir: an empty directory, so the agent's vtysh finds no FRR
    // (a state it logs), never the host's.
    const std::string yaml = bgp_node_yaml({.vip = vip,
                                            .port = port,
                                            .backend = backend->address(),
                                            .router_id = "198.18.44.1",
                                            .peer = "198.18.44.2",
                                            .peer_options = "",
                                            .vty_socket_dir = dir.path(),
                                            .head = fmt::format("timeouts: {{drain: 2s}}\nadmin: {{address: "
                                                                "\"127.0.0.1:{}\", token_file: \"{}\"}}\n",
                                                                admin, dir.file("token")),
                                            .bgp_tail = "  withdraw_wait: 0s\n"});
    apilb_process apilb(dir, yaml, vip, port, {}, {find_program("ip"), "netns", "exec", ns});
    auto echo = [&](client& c, const std::string& line) {
        return c.send_all(line) && c.recv_exact(line.size()) == line;
    };
    client held;
    held.set_timeout(5s);
    in_netns(ns, [&] { ASSERT_EQ(held.connect(vip, port, 5s), 0); });
    ASSERT_TRUE(echo(held, "before\n")) << apilb.log();

    in_netns(ns, [&] {
        const http_answer r = http_exchange(admin, "POST", "/api/v1/upgrade?wait=1",
                                            "Authorization: Bearer s3cret-token\r\n");
        EXPECT_EQ(r.status, 409) << r.body;
        EXPECT_NE(r.body.find("upgrade refused: the config has a bgp section"), std::string::npos) << r.body;
    });
    apilb.proc().signal(SIGUSR2);
    ASSERT_TRUE(wait_until(
        [&] {
            const std::string log = apilb.log();
            const std::string refused = "upgrade refused: the config has a bgp section";
            return log.find(refused) != log.rfind(refused);  // the POST's, then the signal's
        },
        20s))
        << apilb.log();
    EXPECT_TRUE(apilb.wait_for_log("still serving", 5s)) << apilb.log();
    EXPECT_EQ(apilb.log().find("upgrade: pid"), std::string::npos) << apilb.log();
    EXPECT_EQ(apilb.log().find("upgrade: started"), std::string::npos) << apilb.log();
    EXPECT_TRUE(apilb.proc().running());
    EXPECT_TRUE(echo(held, "after\n")) << apilb.log();
    in_netns(ns, [&] {
        client c;
        c.set_timeout(5s);
        ASSERT_EQ(c.connect(vip, port, 5s), 0);
        EXPECT_TRUE(echo(c, "new\n")) << apilb.log();
    });
    held = client();
    EXPECT_EQ(apilb.terminate(), 0) << apilb.log();
}

}  // namespace
}  // namespace apilb::test
