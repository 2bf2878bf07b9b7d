// bgp.manage: true (issue 20): apilb runs its own zebra, bgpd and bfdd in a
// directory of its own and applies the frr.conf it renders. A router running
// real FRR and an apilb node, each in a network namespace this test creates
// on a private bridge (198.18.24.0/24) and removes afterwards.
//
// Shown: the VIP route reaches the router while apilb is ready and goes while
// it is not; a bgpd SIGKILLed by the test is restarted with the others and
// the route comes back, counted in apilb_bgp_frr_restarts_total; on SIGTERM
// bgpd is stopped first and the router gets its Cease while apilb still runs;
// after apilb ends, by SIGTERM or by SIGKILL, none of its FRR processes is
// left (the daemons drop to the frr user, which clears PR_SET_PDEATHSIG: a
// keeper that stays root ends each one); a daemon writing its log without
// end keeps it within its bound. Needs root; skips with the reason
// without it or without FRR.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <pwd.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "frr_host.hpp"
#include "harness.hpp"
#include "netns.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* router_ip = "198.18.24.1";
constexpr const char* node_ip = "198.18.24.11";
constexpr const char* vip = "198.18.25.100";
/// The node's backend answers here, on its loopback: taking the address
/// away makes the probes fail, so apilb is not ready.
constexpr const char* backend_ip = "198.18.26.5";

class BgpManage : public ::testing::Test {
protected:
    void SetUp() override {
        if (auto why = frr_netns_unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
        const passwd* pw = ::getpwnam("frr");  // frr_unavailable_reason() checked it
        ip_bin_ = find_program("ip");

        netns_segment::remove_orphans("apilb-bgpm-");
        segment_ = std::make_unique<netns_segment>("apilb-bgpm-" + std::to_string(::getpid()));
        segment_->add_host("r", {std::string(router_ip) + "/24"});
        segment_->add_host("n1", {std::string(node_ip) + "/24"});
        segment_->ip("n1", {"addr", "add", std::string(backend_ip) + "/32", "dev", "lo"});
        const std::string r = dir_.path() + "/r";
        std::filesystem::create_directories(r);
        ASSERT_EQ(::chown(r.c_str(), pw->pw_uid, pw->pw_gid), 0);
        // The frr user must reach apilb's FRR directory below this one.
        ::chmod(dir_.path().c_str(), 0755);
        router_ = std::make_unique<frr_host>(segment_->ns("r"), r, ip_bin_);
        ASSERT_NO_FATAL_FAILURE(router_->start());
        ASSERT_NO_FATAL_FAILURE(router_->apply(router_conf()));
        in_netns(segment_->ns("n1"), [&] { backend_ = std::make_unique<tcp_server>("0.0.0.0", echo_handler()); });
        admin_ = free_port();
        dir_.write("apilb.yaml", bgp_node_yaml({.vip = vip,
                                                .port = free_port(),
                                                .backend = fmt::format("{}:{}", backend_ip, backend_->port()),
                                                .router_id = node_ip,
                                                .peer = router_ip,
                                                .peer_options = ", bfd: true, bfd_interval: 300ms",
                                                .vty_socket_dir = frr_dir(),
                                                .head = fmt::format("admin: {{address: \"127.0.0.1:{}\"}}\n", admin_),
                                                .bgp_tail = "  manage: true\n  withdraw_wait: 500ms\n"}));
    }

    /// apilb's FRR directory (apilb makes it).
    std::string frr_dir() const { return dir_.path() + "/n1-frr"; }

    /// The router: ECMP, BFD, and neighbour changes and notifications in its log.
    static std::string router_conf() { return one_node_router_conf(router_ip, node_ip); }

    std::unique_ptr<process> start_apilb() {
        return std::make_unique<process>(
            std::vector<std::string>{ip_bin_, "netns", "exec", segment_->ns("n1"), required_env("APILB_BIN"), "run",
                                     "--config", dir_.file("apilb.yaml")},
            dir_.file("apilb.log"));
    }

    bool router_has_vip() const {
        auto r = run_command({ip_bin_, "-n", segment_->ns("r"), "route", "show", "proto", "bgp"});
        return r.output.starts_with(std::string(vip) + " ");
    }

    /// The VIP route has been at the router for 5 s on end. FRR 8.4 resets a
    /// young BGP session once when it re-registers the peer's BFD session
    /// (Cease/BFD Down, back about 2 s later): a route that went then must
    /// not pass for a withdrawal, nor its reset for the end of the session.
    bool wait_settled_route() const {
        std::optional<std::chrono::steady_clock::time_point> since;
        return wait_until(
            [&] {
                if (!router_has_vip()) {
                    since.reset();
                    return false;
                }
                if (!since) since = std::chrono::steady_clock::now();
                return std::chrono::steady_clock::now() - *since >= 5s;
            },
            90s, 50ms);
    }

    std::string metrics() const {
        return run_command({ip_bin_, "netns", "exec", segment_->ns("n1"), "/usr/bin/curl", "-s", "--max-time", "5",
                            fmt::format("http://127.0.0.1:{}/metrics", admin_)})
            .output;
    }

    pid_t daemon_pid(const std::string& name) const {
        try {
            return static_cast<pid_t>(std::stol(read_file(frr_dir() + "/" + name + ".pid")));
        } catch (const std::exception&) {
            return -1;
        }
    }

    /// The FRR processes apilb runs now: the daemons (their pid files) and
    /// their latest keepers (apilb's log: "frr: started bgpd (pid 12, keeper 11)").
    std::map<pid_t, std::string> frr_processes(const std::string& log) const {
        std::map<pid_t, std::string> out;
        std::map<std::string, pid_t> keepers;
        const std::regex started(R"(frr: started (\w+) \(pid (\d+), keeper (\d+)\))");
        for (std::sregex_iterator it(log.begin(), log.end(), started), end; it != end; ++it) {
            keepers[(*it)[1].str()] = std::stoi((*it)[3]);
        }
        for (const char* name : {"zebra", "bgpd", "bfdd"}) {
            out[daemon_pid(name)] = name;
            if (keepers.contains(name)) out[keepers[name]] = std::string(name) + "'s keeper";
        }
        out.erase(-1);
        return out;
    }

    /// Those of `pids` that still run (a zombie does not).
    static std::string still_running(const std::map<pid_t, std::string>& pids) {
        std::string out;
        for (const auto& [pid, what] : pids) {
            const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
            const auto paren = stat.rfind(')');
            if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z') {
                out += fmt::format("{} (pid {}) ", what, pid);
            }
        }
        return out;
    }

    std::string diagnosis(const process& apilb) const {
        return router_->show("show bgp summary") + router_->exited() + "apilb:\n" + apilb.log();
    }

    temp_dir dir_;
    std::string ip_bin_;
    std::unique_ptr<netns_segment> segment_;
    std::unique_ptr<frr_host> router_;
    std::unique_ptr<tcp_server> backend_;
    std::uint16_t admin_ = 0;
};

TEST_F(BgpManage, ApilbRunsFrrRestartsItAndStopsBgpdFirst) {
    auto apilb = start_apilb();
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(wait_until([&] { return router_has_vip(); }, 60s)) << diagnosis(*apilb);
    std::cout << "[ MEASURED ] VIP route at the router " << ms_since(t0) << " ms after apilb started its FRR\n";
    ASSERT_TRUE(wait_settled_route()) << diagnosis(*apilb);
    const std::string log = apilb->log();
    for (const char* name : {"zebra", "bgpd", "bfdd"}) {
        EXPECT_NE(log.find(fmt::format("frr: started {} (pid", name)), std::string::npos) << log;
    }
    EXPECT_NE(metrics().find("apilb_bgp_frr_restarts_total 0\n"), std::string::npos) << metrics();
    // The agent asks apilb's own FRR (vty_socket_dir) for the session.
    EXPECT_TRUE(wait_until(
        [&] {
            return metrics().find(fmt::format("apilb_bgp_peer_state{{peer=\"{}\",state=\"Established\"}} 1",
                                              router_ip)) != std::string::npos;
        },
        20s, 200ms))
        << metrics();

    // Not ready (the backend fails its probes): withdrawn; ready again: back.
    segment_->ip("n1", {"addr", "del", std::string(backend_ip) + "/32", "dev", "lo"});
    ASSERT_TRUE(wait_until([&] { return !router_has_vip(); }, 30s)) << diagnosis(*apilb);
    segment_->ip("n1", {"addr", "add", std::string(backend_ip) + "/32", "dev", "lo"});
    ASSERT_TRUE(wait_until([&] { return router_has_vip(); }, 60s)) << diagnosis(*apilb);

    // bgpd dies: apilb ends zebra and bfdd too, starts all three again, and
    // the route is back.
    const pid_t old_bgpd = daemon_pid("bgpd");
    ASSERT_GT(old_bgpd, 0);
    ASSERT_EQ(read_file(fmt::format("/proc/{}/comm", old_bgpd)), "bgpd\n");
    const auto t_kill = std::chrono::steady_clock::now();
    ASSERT_EQ(::kill(old_bgpd, SIGKILL), 0);
    ASSERT_TRUE(
        wait_until([&] { return metrics().find("apilb_bgp_frr_restarts_total 1\n") != std::string::npos; }, 20s, 100ms))
        << metrics() << apilb->log();
    ASSERT_TRUE(wait_until([&] { return router_has_vip() && daemon_pid("bgpd") != old_bgpd; }, 60s))
        << diagnosis(*apilb);
    std::cout << "[ MEASURED ] VIP route back at the router " << ms_since(t_kill)
              << " ms after bgpd was SIGKILLed (restart backoff 100 ms, BGP connect and open)\n";
    ASSERT_TRUE(wait_settled_route()) << diagnosis(*apilb);
    EXPECT_NE(apilb->log().find("bgpd (pid " + std::to_string(old_bgpd) + ") was killed by signal"), std::string::npos)
        << apilb->log();

    // SIGTERM: withdraw, withdraw_wait, drain, then bgpd first: the router
    // sees the session go down while apilb still runs (bfdd and zebra stop
    // after bgpd). FRR 8.4's router logged it as "Peer closed the session"
    // with its BFD session down at the same moment, not as a Cease received.
    const auto pids = frr_processes(apilb->log());
    ASSERT_EQ(pids.size(), 6u) << fmt::format("{}", fmt::join(pids, ", "));
    const std::string router_log = dir_.path() + "/r/bgpd.log";
    const std::string down = fmt::format("%ADJCHANGE: neighbor {}(", node_ip);
    auto downs = [&] {
        const std::string text = read_file(router_log);
        std::size_t n = 0;
        for (auto at = text.find(down); at != std::string::npos; at = text.find(down, at + 1)) {
            if (text.compare(text.find(") in vrf default ", at) + 17, 4, "Down") == 0) ++n;
        }
        return n;
    };
    const std::size_t downs_before = downs();
    apilb->signal(SIGTERM);
    bool down_while_running = false;
    ASSERT_TRUE(wait_until(
        [&] {
            const bool ran = apilb->running();
            if (ran && downs() > downs_before) down_while_running = true;
            return !ran;
        },
        30s, 5ms))
        << apilb->log();
    EXPECT_EQ(apilb->wait(1s), 0) << apilb->log();
    EXPECT_TRUE(down_while_running) << "the router's bgpd.log:\n"
                                    << read_file(router_log) << "\napilb:\n"
                                    << apilb->log();
    const std::string end_log = apilb->log();
    const auto bgpd_stopped = end_log.rfind("frr: bgpd (pid");
    const auto zebra_stopped = end_log.rfind("frr: zebra (pid");
    const auto drained = end_log.find("SIGTERM: stopped accepting");
    ASSERT_NE(bgpd_stopped, std::string::npos) << end_log;
    ASSERT_NE(drained, std::string::npos) << end_log;
    EXPECT_LT(drained, bgpd_stopped) << end_log;
    EXPECT_LT(bgpd_stopped, zebra_stopped) << end_log;
    EXPECT_EQ(still_running(pids), "") << "left after apilb ended:\n" << end_log;
    expect_no_sanitizer_report(end_log, "apilb");
}

TEST_F(BgpManage, KilledApilbLeavesNoFrrProcessAndTheRouteGoes) {
    auto apilb = start_apilb();
    ASSERT_TRUE(wait_until([&] { return router_has_vip(); }, 60s)) << diagnosis(*apilb);
    const auto pids = frr_processes(apilb->log());
    ASSERT_EQ(pids.size(), 6u) << fmt::format("{}", fmt::join(pids, ", "));
    ASSERT_EQ(still_running(pids).empty(), false);

    // Nothing in apilb can act: the keepers get SIGTERM from the kernel and
    // end their daemons (bgpd's Cease takes the route away too).
    const auto t_kill = std::chrono::steady_clock::now();
    apilb->signal(SIGKILL);
    ASSERT_TRUE(apilb->wait(10s).has_value()) << "apilb outlived SIGKILL";
    EXPECT_TRUE(wait_until([&] { return still_running(pids).empty(); }, 10s))
        << "left after apilb was killed: " << still_running(pids);
    std::cout << "[ MEASURED ] every FRR process of apilb gone " << ms_since(t_kill) << " ms after SIGKILL\n";
    EXPECT_TRUE(wait_until([&] { return !router_has_vip(); }, 10s)) << router_->show("show bgp summary");
    std::cout << "[ MEASURED ] route gone from the router " << ms_since(t_kill) << " ms after apilb's SIGKILL\n";
}

TEST_F(BgpManage, DaemonLogsStayWithinTheirBound) {
    // FRR 8.4 never limits its log file. zebra is made to write without end:
    // every netlink message it sees, in hex, both to its log and (log stdout)
    // to its output file, while the test changes addresses in the node.
    // apilb keeps each within 1 MiB (frr_supervisor.cpp, max_log_bytes).
    constexpr std::size_t limit = 1 << 20;
    auto apilb = start_apilb();
    ASSERT_TRUE(wait_until([&] { return apilb->log().find("frr.conf applied") != std::string::npos; }, 60s))
        << apilb->log();
    auto vty = run_command({find_program("vtysh"), "--vty_socket", frr_dir(), "-c", "debug zebra kernel msgdump", "-c",
                            "configure terminal", "-c", "log stdout debugging"});
    ASSERT_EQ(vty.exit_code, 0) << vty.output;
    std::string batch;
    for (int i = 1; i <= 50; ++i) batch += fmt::format("addr add 198.18.27.{}/32 dev lo\n", i);
    for (int i = 1; i <= 50; ++i) batch += fmt::format("addr del 198.18.27.{}/32 dev lo\n", i);
    dir_.write("churn.batch", batch);

    const std::string log = frr_dir() + "/zebra.log";
    const std::string out = frr_dir() + "/zebra.out";
    auto size = [](const std::string& file) {
        std::error_code ec;
        const auto n = std::filesystem::file_size(file, ec);
        return ec ? std::size_t{0} : static_cast<std::size_t>(n);
    };
    auto count = [](const std::string& text, const std::string& needle) {
        std::size_t n = 0;
        for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
        return n;
    };
    const std::string rotated = "frr: " + log + " passed";
    const std::string emptied = "frr: zebra wrote more than";
    std::size_t max_log = 0, max_log1 = 0, max_out = 0, batches = 0, first_batch = 0;
    const auto t0 = std::chrono::steady_clock::now();
    // Bounded: 1000 batches or 90 s; with no bound in apilb the files would
    // pass 8 times the limit, where the loop stops.
    for (; batches < 1000 && std::chrono::steady_clock::now() - t0 < 90s; ++batches) {
        const std::size_t before = size(log);
        auto r = run_command({ip_bin_, "-n", segment_->ns("n1"), "-batch", dir_.file("churn.batch")});
        ASSERT_EQ(r.exit_code, 0) << r.output;
        std::this_thread::sleep_for(50ms);
        if (batches == 0) first_batch = size(log) - before;
        max_log = std::max(max_log, size(log));
        max_log1 = std::max(max_log1, size(log + ".1"));
        max_out = std::max(max_out, size(out));
        const std::string text = apilb->log();
        if (count(text, rotated) >= 2 && count(text, emptied) >= 2) break;
        if (max_log > 8 * limit || max_out > 8 * limit) break;
    }
    const std::string text = apilb->log();
    std::cout << "[ MEASURED ] " << batches << " batches of 100 address changes; zebra's log grew " << first_batch
              << " bytes in the first; largest seen: zebra.log " << max_log << ", zebra.log.1 " << max_log1
              << ", zebra.out " << max_out << " bytes (bound " << limit << "); " << count(text, rotated)
              << " rotations, " << count(text, emptied) << " times emptied, in " << ms_since(t0) << " ms\n";
    // Each file stays within the limit plus what zebra writes before apilb's
    // next look (every 50 ms), well under a second limit here.
    EXPECT_GE(count(text, rotated), 2u) << text;
    EXPECT_GE(count(text, emptied), 2u) << text;
    EXPECT_LE(max_log, 2 * limit);
    EXPECT_LE(max_log1, 2 * limit);
    EXPECT_LE(max_out, 2 * limit);
    // zebra opened a new log on apilb's SIGUSR1 and goes on writing to it.
    run_command({ip_bin_, "-n", segment_->ns("n1"), "-batch", dir_.file("churn.batch")});
    EXPECT_TRUE(wait_until([&] { return size(log) > 0; }, 5s)) << text;
    EXPECT_TRUE(apilb->running()) << text;
    EXPECT_NE(metrics().find("apilb_bgp_frr_restarts_total 0\n"), std::string::npos) << metrics();
    apilb->signal(SIGTERM);
    EXPECT_EQ(apilb->wait(30s), 0) << apilb->log();
    expect_no_sanitizer_report(apilb->log(), "apilb");
}

}  // namespace
}  // namespace apilb::test
