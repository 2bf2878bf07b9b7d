// Two apilb nodes sharing a VIP through real keepalived (VRRPv3, unicast,
// advert 100 ms), a client and stand-in apiservers, each in a network
// namespace this test creates on a private bridge (198.18.0.0/24) and removes
// afterwards. A client connects to VIP:port every few milliseconds; each
// backend answers with the address of the apilb node that connected to it,
// so every attempt says which node served it or that it failed.
//
// Measured, several times each: the client-visible outage (first failure to
// first success on the other node) when the master's apilb is stopped
// (SIGTERM: graceful hand-off), killed (SIGKILL: track_process), loses every
// backend (track_file), or loses its link; and the failback when it returns.
// Throughout, the VIP must never be on both nodes for longer than one
// advertisement interval. The table is printed (and written to
// $APILB_VIP_TABLE if set) for docs/vip.md.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <numeric>

#include "harness.hpp"
#include "netns.hpp"
#include "vip_support.hpp"

namespace apilb::test {
namespace {

using std::chrono::milliseconds;

class VipFailover : public vip_pair_fixture {};

struct cell {
    std::string name;
    double target_ms;
    std::vector<double> outages;
    std::vector<double> failbacks;
    std::vector<double> from_fault;  ///< track_file row: from apilb writing FAULT
};

double median(std::vector<double> v) {
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::string figures(const std::vector<double>& v) {
    if (v.empty()) return "-";
    return fmt::format("{:.0f}/{:.0f}", median(v), *std::max_element(v.begin(), v.end()));
}

std::string all_of(const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += fmt::format("{}{:.0f}", s.empty() ? "" : " ", x);
    return s;
}

TEST_F(VipFailover, OutageOfEachFailureAndFailback) {
    start_everything(true);
    ASSERT_FALSE(HasFatalFailure());
    node& n1 = nodes_[0];
    ASSERT_TRUE(settled_on(n1)) << "n1 never became the serving master\n" << diagnostics();

    const int repetitions = 4;
    std::vector<cell> cells{{"apilb SIGTERM (graceful hand-off)", 100, {}, {}, {}},
                            {"apilb SIGKILL (track_process)", 100, {}, {}, {}},
                            {"every backend unhealthy (track_file)", 100, {}, {}, {}},
                            {"link down", 350, {}, {}, {}}};
    for (int rep = 0; rep < repetitions; ++rep) {
        for (auto& c : cells) {
            SCOPED_TRACE(c.name + ", repetition " + std::to_string(rep + 1));
            ASSERT_TRUE(settled_on(n1)) << diagnostics();
            std::this_thread::sleep_for(200ms);  // steady traffic before the trigger
            const auto t = steady::now();
            // When apilb declares the fault, seen by polling its track file.
            std::optional<steady::time_point> fault_at;
            std::thread fault_watch;
            // Joined however the block is left (an ASSERT returns early).
            struct joiner {
                std::thread& t;
                ~joiner() {
                    if (t.joinable()) t.join();
                }
            } join_fault_watch{fault_watch};
            if (c.name.starts_with("every backend")) {
                fault_watch = std::thread([&, path = n1.track_file()] {
                    const auto stop = steady::now() + 5s;
                    while (steady::now() < stop && read_file(path) != "1\n") std::this_thread::sleep_for(1ms);
                    if (steady::now() < stop) fault_at = steady::now();
                });
            }
            if (c.name.starts_with("apilb SIGTERM")) {
                n1.apilb->signal(SIGTERM);
            } else if (c.name.starts_with("apilb SIGKILL")) {
                n1.apilb->signal(SIGKILL);
            } else if (c.name.starts_with("every backend")) {
                segment_->ip("be", {"addr", "del", "198.18.0.21/24", "dev", "eth0"});
            } else {
                segment_->ip("n1", {"link", "set", "eth0", "down"});
            }
            ASSERT_TRUE(wait_until([&] { return client_->steadily_on("n2", 3); }, 5s, 5ms))
                << "the client was not moved to n2\n"
                << diagnostics();
            if (fault_watch.joinable()) fault_watch.join();
            auto outage = outage_after(t, "n2");
            ASSERT_TRUE(outage);
            if (fault_at) {
                for (const auto& a : client_->since(*fault_at)) {
                    if (a.node == "n2") {
                        c.from_fault.push_back(ms_since(*fault_at, a.end));
                        break;
                    }
                }
            }
            if (*outage > c.target_ms + 50) std::cout << c.name << ": " << *outage << " ms\n" << timeline(t, "n2");
            c.outages.push_back(*outage);

            // The master returns; with preempt it takes the VIP back.
            if (c.name.starts_with("apilb")) {
                ASSERT_TRUE(n1.apilb->wait(5s)) << "apilb on n1 did not exit\n" << diagnostics();
                if (c.name.starts_with("apilb SIGTERM")) {
                    EXPECT_EQ(n1.apilb->wait(0ms), 0);
                    EXPECT_NE(n1.apilb->log().find("vrrp: a peer serves 198.18.0.100"), std::string::npos)
                        << n1.apilb->log();
                }
                expect_no_sanitizer_report(n1.apilb->log(), "apilb n1");
            }
            const auto back = steady::now();
            if (c.name.starts_with("apilb")) {
                start_apilb(n1);
            } else if (c.name.starts_with("every backend")) {
                segment_->ip("be", {"addr", "add", "198.18.0.21/24", "dev", "eth0"});
            } else {
                segment_->ip("n1", {"link", "set", "eth0", "up"});
            }
            ASSERT_TRUE(settled_on(n1)) << "no failback to n1\n" << diagnostics();
            auto failback = outage_after(back, "n1");
            ASSERT_TRUE(failback);
            if (*failback > 150) {
                std::cout << c.name << ": failback " << *failback << " ms\n" << timeline(back, "n1") << diagnostics();
            }
            c.failbacks.push_back(*failback);
        }
    }

    const double overlap = longest_overlap_ms(*watches_[0], *watches_[1]);
    std::string table =
        "| trigger on the master | target | outage median/max ms | failback (preempt) median/max ms |\n"
        "|---|---|---|---|\n";
    for (const auto& c : cells) {
        table += fmt::format("| {} | ~{} ms | {} | {} |\n", c.name, c.target_ms, figures(c.outages),
                             figures(c.failbacks));
    }
    table += "\nEvery measurement (ms), outage | failback:\n";
    for (const auto& c : cells) table += fmt::format("- {}: {} | {}\n", c.name, all_of(c.outages), all_of(c.failbacks));
    table += fmt::format(
        "- every backend unhealthy, from apilb writing FAULT to the first answer from n2: {} "
        "(median/max {})\n",
        all_of(cells[2].from_fault), figures(cells[2].from_fault));
    table += fmt::format("\n{} repetitions each; longest time both nodes held the VIP: {:.0f} ms{}\n", repetitions,
                         overlap, sanitized ? " (ASan/UBSan build)" : "");
    std::cout << table;
    if (const char* out = std::getenv("APILB_VIP_TABLE")) std::ofstream(out, std::ios::app) << table;

    // Targets: within 50 ms of keepalived's own figures. The median is held
    // to it; a sanitizer build and a shared 2-core CI machine get more room.
    const double slack = sanitized ? 150 : 50;
    // The track_file row's outage includes finding every backend dead (a
    // probe interval and timeout); its target is met from the FAULT on.
    for (const auto& c : cells) {
        const auto& measured = c.from_fault.empty() ? c.outages : c.from_fault;
        EXPECT_LE(median(measured), c.target_ms + slack) << c.name;
    }
    EXPECT_LE(overlap, static_cast<double>(advert.count())) << "both nodes held the VIP for too long";
}

TEST_F(VipFailover, NoFailbackWithoutPreempt) {
    start_everything(false);
    ASSERT_FALSE(HasFatalFailure());
    // Without preemption the first node ready wins the first election.
    ASSERT_TRUE(wait_until([&] { return client_->steadily_on("n1") || client_->steadily_on("n2"); }, 15s, 5ms))
        << diagnostics();
    node& master = client_->steadily_on("n1") ? nodes_[0] : nodes_[1];
    node& backup = &master == &nodes_[0] ? nodes_[1] : nodes_[0];
    ASSERT_TRUE(settled_on(master)) << diagnostics();

    // A graceful hand-off works without preempt too: FAULT, not a priority drop.
    const auto t = steady::now();
    master.apilb->signal(SIGTERM);
    ASSERT_TRUE(settled_on(backup, 5s)) << diagnostics();
    const auto outage = outage_after(t, backup.name);
    ASSERT_TRUE(outage);
    ASSERT_TRUE(master.apilb->wait(5s));
    EXPECT_EQ(master.apilb->wait(0ms), 0);

    // The old master comes back ready and stays BACKUP: the client sees no
    // failure. Nothing moves, so no attempt needs to give up early: the
    // 30/25 ms that let the client find a new master quickly only measured
    // the scheduler here (on a loaded machine replies came after 29-40 ms,
    // from the right node). Still below TCP's retransmission timeouts (1 s
    // for a SYN, 200 ms at least for data), so an address that moved, even
    // for a moment, still fails an attempt; and an answer from the old
    // master counts as a failure too.
    client_->set_patience(500ms, 150ms);
    const auto back = steady::now();
    start_apilb(master);
    ASSERT_TRUE(wait_until([&] { return read_file(master.track_file()) == "0\n"; }, 10s, 5ms)) << diagnostics();
    std::this_thread::sleep_for(10 * advert);  // more than three master-down intervals
    const auto seen = client_->since(back);
    const auto failed = std::count_if(seen.begin(), seen.end(),
                                      [&](const attempt& a) { return a.node != backup.name; });
    EXPECT_EQ(failed, 0) << timeline(back, "none");
    EXPECT_TRUE(client_->steadily_on(backup.name)) << diagnostics();
    const std::size_t m = &master == &nodes_[0] ? 0 : 1;
    EXPECT_FALSE(watches_[m]->held());
    std::cout << fmt::format(
        "preempt: false: hand-off {:.0f} ms; after the old master returned, {} attempts, {} "
        "failed, VIP stayed on {}\n",
        *outage, seen.size(), failed, backup.name);
    if (const char* out = std::getenv("APILB_VIP_TABLE")) {
        std::ofstream(out, std::ios::app) << fmt::format(
            "preempt false: graceful hand-off {:.0f} ms; the old master's return: {} attempts, {} failed\n", *outage,
            seen.size(), failed);
    }
    EXPECT_LE(longest_overlap_ms(*watches_[0], *watches_[1]), static_cast<double>(advert.count()));
}

/// The pid keepalived wrote to its pid file under apilb's state directory (manage: true), or -1.

bool alive(pid_t pid) { return pid > 0 && ::kill(pid, 0) == 0; }

TEST_F(VipFailover, ManagedKeepalivedIsRestartedAndStopsWithApilb) {
    start_everything(true, true);
    ASSERT_FALSE(HasFatalFailure());
    node& n1 = nodes_[0];
    ASSERT_TRUE(settled_on(n1)) << diagnostics();

    // keepalived dies under apilb: the VIP moves, apilb starts it again, and
    // with preempt n1 takes the VIP back.
    const pid_t first = managed_keepalived_pid(n1);
    ASSERT_TRUE(alive(first)) << diagnostics();
    auto t = steady::now();
    ::kill(first, SIGKILL);
    ASSERT_TRUE(wait_until([&] { return client_->steadily_on("n2", 3); }, 5s, 5ms)) << diagnostics();
    const auto crash = outage_after(t, "n2");
    ASSERT_TRUE(
        wait_until([&] { return n1.apilb->log().find("restarting it in 100ms") != std::string::npos; }, 5s, 5ms))
        << n1.apilb->log();
    ASSERT_TRUE(settled_on(n1)) << "no failback after keepalived was restarted\n" << diagnostics();
    const pid_t second = managed_keepalived_pid(n1);
    EXPECT_NE(second, first);
    EXPECT_TRUE(alive(second));

    // apilb killed: keepalived's keeper sees its lifeline end and stops
    // keepalived, which gives the VIP up with a priority-0 advert.
    t = steady::now();
    n1.apilb->signal(SIGKILL);
    ASSERT_TRUE(wait_until([&] { return client_->steadily_on("n2", 3); }, 5s, 5ms)) << diagnostics();
    const auto killed = outage_after(t, "n2");
    EXPECT_TRUE(wait_until([&] { return !alive(second); }, 3s, 5ms)) << "keepalived outlived the apilb that started it";
    ASSERT_TRUE(n1.apilb->wait(5s));
    start_apilb(n1);
    ASSERT_TRUE(settled_on(n1)) << diagnostics();

    // SIGTERM: hand-off, drain, and keepalived stopped with apilb.
    const pid_t third = managed_keepalived_pid(n1);
    t = steady::now();
    n1.apilb->signal(SIGTERM);
    ASSERT_TRUE(wait_until([&] { return client_->steadily_on("n2", 3); }, 5s, 5ms)) << diagnostics();
    const auto graceful = outage_after(t, "n2");
    ASSERT_TRUE(n1.apilb->wait(10s)) << diagnostics();
    EXPECT_EQ(n1.apilb->wait(0ms), 0);
    EXPECT_FALSE(alive(third));
    EXPECT_NE(n1.apilb->log().find("vrrp: keepalived stopped"), std::string::npos) << n1.apilb->log();
    expect_no_sanitizer_report(n1.apilb->log(), "apilb n1");

    ASSERT_TRUE(crash && killed && graceful);
    const std::string line = fmt::format(
        "manage: true: keepalived SIGKILLed under apilb {:.0f} ms; apilb SIGKILL (keepalived stopped by its "
        "keeper) {:.0f} ms; apilb SIGTERM {:.0f} ms\n",
        *crash, *killed, *graceful);
    std::cout << line;
    if (const char* out = std::getenv("APILB_VIP_TABLE")) std::ofstream(out, std::ios::app) << line;
    const double slack = sanitized ? 150 : 50;
    EXPECT_LE(*killed, 100 + slack);
    EXPECT_LE(*graceful, 100 + slack);
    EXPECT_LE(longest_overlap_ms(*watches_[0], *watches_[1]), static_cast<double>(advert.count()));
}

}  // namespace
}  // namespace apilb::test
