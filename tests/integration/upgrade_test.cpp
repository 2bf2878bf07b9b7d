// The upgrade (SIGUSR2, docs/upgrade.md "Zero-drop upgrade"): the real
// binary hands its listening sockets to a new apilb under a steady rate of
// new connections, which must all be served; a new binary that fails is
// rolled back with the old one serving on; with a bgp section the VIP stays
// announced throughout and moves to the new process (without FRR here:
// bgp_upgrade_test has the router). The sessions are upgrade_sessions_test's,
// the admin trigger upgrade_admin_test's.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <memory>
#include <thread>

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


// With a bgp section (docs/upgrade.md, "With a bgp section") the old process
// hands the VIPs' announcement to the new one: the VIP never leaves the
// interface (FRR would withdraw it), the old process leaves it there as it
// ends, and the new one owns it from then on: it withdraws when its backend
// goes, and removes the VIP and apilb's local route when it stops. A new
// binary whose bgp section differs is refused with the reason. In a network
// namespace of its own (root), without FRR: apilb puts the VIP on the
// namespace's `lo`, never on the host's.
TEST(UpgradeWithBgp, TheVipNeverLeavesItsInterfaceAndMovesToTheNewProcess) {
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
    auto yaml = [&](const std::string& vips) {
        std::string y = bgp_node_yaml({.vip = vip,
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
        const std::string line = fmt::format("  vips: [{}]\n", vip);
        return y.replace(y.find(line), line.size(), fmt::format("  vips: [{}]\n", vips));
    };
    const std::string ip = find_program("ip");
    auto vip_on_lo = [&] {
        return run_command({ip, "-n", ns, "addr", "show", "dev", "lo"}).output.find(" " + vip + "/32 ") !=
               std::string::npos;
    };
    auto local_route = [&] {
        return run_command({ip, "-n", ns, "route", "show", "table", "local", "proto", "249"}).output.find(vip) !=
               std::string::npos;
    };
    apilb_process apilb(dir, yaml(vip), vip, port, {}, {ip, "netns", "exec", ns});
    ASSERT_TRUE(wait_until(vip_on_lo, 20s)) << apilb.log();
    auto echo = [&](client& c, const std::string& line) {
        return c.send_all(line) && c.recv_exact(line.size()) == line;
    };
    client held;
    in_netns(ns, [&] { ASSERT_EQ(held.connect(vip, port, 5s), 0); });
    held.set_timeout(5s);
    ASSERT_TRUE(echo(held, "before\n")) << apilb.log();

    // The interface, every few ms, from before the upgrade until the old process has gone.
    std::atomic<bool> watching{true};
    std::atomic<int> samples{0}, missing{0};
    std::thread watcher([&] {
        const auto end = std::chrono::steady_clock::now() + 90s;
        while (watching && std::chrono::steady_clock::now() < end) {
            ++samples;
            if (!vip_on_lo()) ++missing;
            std::this_thread::sleep_for(2ms);
        }
    });
    struct joined {  // an ASSERT that returns early must not leave it running
        std::atomic<bool>& flag;
        std::thread& t;
        ~joined() {
            flag = false;
            if (t.joinable()) t.join();
        }
    } join_watcher{watching, watcher};
    ASSERT_TRUE(wait_until([&] { return samples >= 5; }, 20s));  // seen on lo before
    pid_t next = 0;
    in_netns(ns, [&] {
        const http_answer r = http_exchange(admin, "POST", "/api/v1/upgrade?wait=1",
                                            "Authorization: Bearer s3cret-token\r\n");
        EXPECT_EQ(r.status, 200) << r.body;
    });
    EXPECT_TRUE(wait_until([&] { return handed_to(apilb.log()) != 0; }, 10s)) << apilb.log();
    next = handed_to(apilb.log());
    end_at_exit guard{{next}};
    ASSERT_GT(next, 0) << apilb.log();
    EXPECT_EQ(apilb.proc().wait(20s), 0) << apilb.log();
    const int at_exit = samples;  // and a while after the old process has gone
    EXPECT_TRUE(wait_until([&] { return samples >= at_exit + 5; }, 20s));
    watching = false;
    if (watcher.joinable()) watcher.join();
    EXPECT_EQ(missing, 0) << "the VIP was off lo in " << missing << " of " << samples << " samples\n" << apilb.log();
    EXPECT_GT(samples, 10);
    EXPECT_TRUE(vip_on_lo()) << "the old process took the VIP away as it ended";
    EXPECT_TRUE(local_route()) << "the old process took apilb's local route away as it ended";
    EXPECT_NE(apilb.log().find("bgp: took over 1 VIP(s) from the old process (1 announced)"), std::string::npos)
        << apilb.log();
    EXPECT_TRUE(echo(held, "after\n")) << apilb.log();

    // The new process decides now: its backend gone, it withdraws.
    backend->stop();
    EXPECT_TRUE(wait_until([&] { return !vip_on_lo(); }, 20s)) << apilb.log();
    EXPECT_NE(apilb.log().find("bgp: VIP " + vip + " withdrawn: pool cp has no healthy backend"), std::string::npos)
        << apilb.log();

    // Another bgp section cannot take over this one's announcement: refused
    // by the new binary, with the reason; the running process serves on.
    dir.write("apilb.yaml", yaml(vip + ", 198.18.44.101"));
    ::kill(next, SIGUSR2);
    EXPECT_TRUE(wait_until(
        [&] {
            return apilb.log().find("upgrade failed: the new binary aborted: the bgp section differs") !=
                   std::string::npos;
        },
        60s))
        << apilb.log();
    EXPECT_TRUE(alive(next));

    // Its stop takes the VIP's local route away: this process owns it.
    end_by_pid(next);
    EXPECT_FALSE(alive(next));
    EXPECT_FALSE(local_route()) << apilb.log();
    expect_no_sanitizer_report(apilb.log(), "apilb");
}

}  // namespace
}  // namespace apilb::test
