// A zero-drop upgrade of the MASTER of two apilb nodes sharing a VIP through
// real keepalived (docs/upgrade.md, "With a vrrp section"), in the network
// namespaces of vip_support.hpp (198.18.0.0/24, never the host's
// interfaces): under a steady stream of new connections to the VIP and
// long-lived sessions through it, SIGUSR2 to the master's apilb must fail no
// connect, break no session, change no VRRP state on either node (keepalived's
// own lines and apilb's role lines), and leave the master MASTER; with
// keepalived run by the operator (manage: false) and by apilb (manage: true).
// Then: the new process owns the track file (a dead backend moves the VIP);
// killing the new process takes keepalived down (manage: true); a new binary
// that exits at once leaves keepalived supervised by the old process; an old
// process killed in the middle of the handover leaves the VIP's side to the
// new one (manage: true).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "netns.hpp"
#include "upgrade_support.hpp"
#include "vip_support.hpp"

namespace apilb::test {
namespace {

constexpr std::uint16_t watch_port = 6444;
/// Long-lived sessions through the VIP (watch-like: a line and its echo every round).
constexpr int session_count = 20;

/// `session_count` sessions to VIP:watch_port from the client namespace, each
/// exchanging a numbered line with its echo every 20 ms until stopped (at
/// most 5 minutes). A session that errs, ends or echoes other bytes is broken.
class long_sessions {
public:
    explicit long_sessions(const std::string& ns) {
        thread_ = std::thread([this, ns] {
            enter_netns(ns);
            std::vector<client> sessions(session_count);
            for (auto& c : sessions) {
                if (const int err = c.connect(vip, watch_port, 2s); err != 0) {
                    fail(fmt::format("connect: {}", std::strerror(err)));
                    return;
                }
                c.set_timeout(2s);
            }
            opened_ = true;
            std::vector<bool> broken(sessions.size(), false);
            const auto hard_stop = steady::now() + 5min;
            for (long round = 0; !stop_ && steady::now() < hard_stop; ++round) {
                for (std::size_t i = 0; i < sessions.size(); ++i) {
                    if (broken[i]) continue;
                    const std::string line = fmt::format("session {} round {}\n", i, round);
                    if (!sessions[i].send_all(line) || sessions[i].recv_exact(line.size()) != line) {
                        broken[i] = true;
                        fail(fmt::format("session {} broke in round {}", i, round));
                    }
                }
                rounds_ = round + 1;
                std::this_thread::sleep_for(20ms);
            }
        });
    }
    ~long_sessions() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    bool opened() const { return opened_; }
    long rounds() const { return rounds_; }
    int broken() const { return broken_; }
    std::string first_error() const {
        std::lock_guard lock(mu_);
        return first_error_;
    }

private:
    void fail(const std::string& why) {
        ++broken_;
        std::lock_guard lock(mu_);
        if (first_error_.empty()) first_error_ = why;
    }

    std::atomic<bool> stop_{false}, opened_{false};
    std::atomic<long> rounds_{0};
    std::atomic<int> broken_{0};
    mutable std::mutex mu_;
    std::string first_error_;
    std::thread thread_;
};

/// Reads a track file every millisecond until stopped; remembers whether it
/// ever held anything but "0\n" (a FAULT, however short, moves the VIP).
class track_watch {
public:
    explicit track_watch(std::string path) {
        thread_ = std::thread([this, path = std::move(path)] {
            const auto hard_stop = steady::now() + 5min;
            while (!stop_ && steady::now() < hard_stop) {
                if (const std::string v = read_file(path); v != "0\n" && !seen_.exchange(true)) first_ = v;
                std::this_thread::sleep_for(1ms);
            }
        });
    }
    ~track_watch() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    bool flapped() const { return seen_; }
    const std::string& first() const { return first_; }

private:
    std::atomic<bool> stop_{false}, seen_{false};
    std::string first_;
    std::thread thread_;
};

/// How many times `text` holds `what`.
std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

class VipUpgrade : public vip_pair_fixture {
protected:
    /// Every VRRP state change a node has logged so far: keepalived's own
    /// "Entering ... STATE" lines (in its log, or in apilb's with manage:
    /// true) and apilb's "vrrp: role" lines.
    std::size_t role_lines(const node& n) const {
        std::string text = n.apilb ? n.apilb->log() : "";
        if (n.keepalived) text += n.keepalived->log();
        return count_of(text, "Entering ") + count_of(text, "vrrp: role ");
    }

    /// n1 serves the VIP and n2's apilb last heard keepalived say BACKUP,
    /// so that a role line after this is a change (n2's keepalived, started
    /// by its apilb with manage: true, came up under ASan after n1 served).
    bool pair_settled() {
        const auto n2_backup = [&] {
            const std::string log = nodes_[1].apilb->log();
            const auto at = log.rfind("vrrp: role ");
            const auto end = at == std::string::npos ? at : log.find('\n', at);
            return end != std::string::npos && log.compare(end - 9, 9, "-> BACKUP") == 0;
        };
        return settled_on(nodes_[0]) && wait_until(n2_backup, 15s, 5ms);
    }

    void start_pair(bool manage) {
        echo_ = std::make_unique<backend_server>(segment_->ns("be"), "198.18.0.20", backend_kind::echoes);
        start_everything(true, manage,
                         fmt::format("  - {{name: watch, address: \"{}:{}\", pool: echo}}\n", vip, watch_port),
                         "  - name: echo\n"
                         "    backends: [{name: e, address: \"" +
                             echo_->address() +
                             "\"}]\n"
                             "    health: {type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1, "
                             "initial: unhealthy}\n");
    }

    /// What upgrade_master() saw.
    struct upgrade_result {
        pid_t new_pid = 0;
        double to_serves_ms = -1;  ///< SIGUSR2 to the old process's "serves" line (polled every 5 ms)
        long long phase_ms = -1;   ///< the session phase, from that line
        long long handed = -1;
        long attempts = 0, failed = 0;
        int broken = 0;
        long rounds = 0;
        std::size_t role_changes = 0;  ///< on both nodes
    };

    /// SIGUSR2 to n1 (the master) under the client's connects and the long
    /// sessions; waits for the handover and the old process's exit, 1 s more
    /// of traffic, then checks the VIP stayed and nothing changed state.
    upgrade_result upgrade_master() {
        upgrade_result r;
        node& n1 = nodes_[0];
        node& n2 = nodes_[1];
        EXPECT_TRUE(pair_settled()) << "n1 never became the serving master\n" << diagnostics();
        // Nothing moves: the patience that finds a new master quickly would
        // only measure the scheduler here; an answer from n2 still fails.
        client_->set_patience(500ms, 150ms);
        long_sessions sessions(segment_->ns("cl"));
        EXPECT_TRUE(wait_until([&] { return sessions.rounds() >= 5; }, 10s, 5ms)) << sessions.first_error();
        const std::size_t roles1 = role_lines(n1), roles2 = role_lines(n2);
        track_watch track(n1.track_file());
        std::this_thread::sleep_for(300ms);
        const auto t = steady::now();
        n1.apilb->signal(SIGUSR2);
        EXPECT_TRUE(wait_until([&] { return handed_to(n1.apilb->log()) != 0; }, 30s, 5ms)) << diagnostics();
        r.to_serves_ms = ms_since(t, steady::now());
        const std::string log = n1.apilb->log();
        r.new_pid = handed_to(log);
        if (r.new_pid > 0) upgraded_.push_back(r.new_pid);
        r.phase_ms = from_log(log, R"(handed over in (\d+)ms)");
        r.handed = from_log(log, R"(serves; (\d+) session\(s\) handed over)");
        EXPECT_TRUE(n1.apilb->wait(15s)) << "the old process did not end after its drain\n" << diagnostics();
        EXPECT_EQ(n1.apilb->wait(0ms), 0);
        std::this_thread::sleep_for(1s);
        sessions.stop();
        track.stop();

        for (const auto& a : client_->since(t)) {
            ++r.attempts;
            if (a.node != "n1") ++r.failed;
        }
        r.broken = sessions.broken();
        r.role_changes = role_lines(n1) - roles1 + role_lines(n2) - roles2;
        r.rounds = sessions.rounds();
        EXPECT_EQ(r.failed, 0) << timeline(t, "none");
        EXPECT_EQ(r.broken, 0) << sessions.first_error();
        EXPECT_FALSE(track.flapped()) << "n1's track file held " << track.first() << "during the upgrade";
        EXPECT_EQ(role_lines(n1), roles1) << "a VRRP state change on n1\n" << diagnostics();
        EXPECT_EQ(role_lines(n2), roles2) << "a VRRP state change on n2\n" << diagnostics();
        EXPECT_TRUE(watches_[0]->held()) << "n1 lost the VIP";
        EXPECT_FALSE(watches_[1]->held()) << "n2 took the VIP";
        EXPECT_TRUE(client_->steadily_on("n1"));
        EXPECT_TRUE(r.new_pid > 0 && ::kill(r.new_pid, 0) == 0) << "the new process does not run";
        EXPECT_NE(n1.apilb->log().find("vrrp: took over the track file"), std::string::npos) << n1.apilb->log();
        EXPECT_LE(longest_overlap_ms(*watches_[0], *watches_[1]), static_cast<double>(advert.count()));
        expect_no_sanitizer_report(n1.apilb->log(), "apilb n1");
        return r;
    }

    /// start_pair(true) until n1 serves the VIP; keepalived's pid (its pid
    /// file), in `keepalived`. Fatal failures end the test.
    void start_managed_pair(pid_t& keepalived) {
        start_pair(true);
        ASSERT_FALSE(HasFatalFailure());
        ASSERT_TRUE(pair_settled()) << diagnostics();
        keepalived = managed_keepalived_pid(nodes_[0]);
        ASSERT_GT(keepalived, 0) << diagnostics();
    }

    /// keepalived (`keepalived`, manage: true) SIGKILLed on n1: whichever
    /// apilb supervises it (`who`) removes the VIP, starts keepalived again
    /// and n1 takes the VIP back (preempt).
    void expect_keepalived_restarted(pid_t keepalived, const std::string& who) {
        node& n1 = nodes_[0];
        ASSERT_EQ(::kill(keepalived, SIGKILL), 0);
        EXPECT_TRUE(
            wait_until([&] { return n1.apilb->log().find("restarting it in 100ms") != std::string::npos; }, 5s, 5ms))
            << n1.apilb->log();
        EXPECT_TRUE(settled_on(n1)) << "no failback after the " << who << " restarted keepalived\n" << diagnostics();
        const pid_t again = managed_keepalived_pid(n1);
        EXPECT_NE(again, keepalived);
        EXPECT_TRUE(again > 0 && ::kill(again, 0) == 0);
    }

    /// The apilb now on n1 owns the track file: n1's backend gone, it writes
    /// FAULT and keepalived moves the VIP to n2; back, and preempt brings it back.
    void expect_track_file_moves_the_vip() {
        node& n1 = nodes_[0];
        client_->set_patience(30ms, 25ms);
        segment_->ip("be", {"addr", "del", "198.18.0.21/24", "dev", "eth0"});
        EXPECT_TRUE(wait_until([&] { return client_->steadily_on("n2", 3); }, 5s, 5ms))
            << "the new process did not fault n1\n"
            << diagnostics();
        EXPECT_EQ(read_file(n1.track_file()), "1\n");
        segment_->ip("be", {"addr", "add", "198.18.0.21/24", "dev", "eth0"});
        EXPECT_TRUE(settled_on(n1)) << "no failback to n1 under the new process\n" << diagnostics();
    }

    static void report(const std::string& what, const upgrade_result& r) {
        const std::string line = fmt::format(
            "{}: SIGUSR2 to \"serves\" {:.0f} ms, session phase {} ms, {} session(s) handed over; {} connects to "
            "the VIP, {} failed; {} long-lived sessions over {} rounds, {} broken; VRRP state changes {}\n",
            what, r.to_serves_ms, r.phase_ms, r.handed, r.attempts, r.failed, session_count, r.rounds, r.broken,
            r.role_changes);
        std::cout << "[ MEASURED ] " << line;
        if (const char* out = std::getenv("APILB_VIP_TABLE")) std::ofstream(out, std::ios::app) << line;
    }

    std::unique_ptr<backend_server> echo_;
};

TEST_F(VipUpgrade, MasterWithItsOwnKeepalivedKeepsTheVipAndEverySession) {
    start_pair(false);
    ASSERT_FALSE(HasFatalFailure());
    const upgrade_result r = upgrade_master();
    ASSERT_FALSE(HasFatalFailure());
    ASSERT_GT(r.new_pid, 0) << "no handover";
    report("manage: false", r);
    expect_track_file_moves_the_vip();
}

TEST_F(VipUpgrade, MasterRunningKeepalivedHandsItOverAndItDiesWithTheLastApilb) {
    start_pair(true);
    ASSERT_FALSE(HasFatalFailure());
    node& n1 = nodes_[0];
    ASSERT_TRUE(settled_on(n1)) << diagnostics();
    const pid_t keepalived = managed_keepalived_pid(n1);
    ASSERT_GT(keepalived, 0) << diagnostics();
    const upgrade_result r = upgrade_master();
    ASSERT_FALSE(HasFatalFailure());
    // kill(0, ...) below would signal this test's own process group.
    ASSERT_GT(r.new_pid, 0) << "no handover";
    report("manage: true", r);
    EXPECT_EQ(managed_keepalived_pid(n1), keepalived) << "keepalived was restarted";
    EXPECT_EQ(::kill(keepalived, 0), 0) << "keepalived did not outlive the old process";
    EXPECT_NE(n1.apilb->log().find("supervising keepalived (keeper pid"), std::string::npos) << n1.apilb->log();

    // The last apilb killed outright: its keeper sees the lifeline end and
    // stops keepalived, which gives the VIP up (priority 0) to n2.
    client_->set_patience(30ms, 25ms);
    const auto t = steady::now();
    ASSERT_EQ(::kill(r.new_pid, SIGKILL), 0);
    EXPECT_TRUE(wait_until([&] { return ::kill(keepalived, 0) != 0; }, 5s, 5ms))
        << "keepalived outlived the last apilb\n"
        << diagnostics();
    EXPECT_TRUE(wait_until([&] { return client_->steadily_on("n2", 3); }, 5s, 5ms)) << diagnostics();
    EXPECT_TRUE(wait_until([&] { return !watches_[0]->held(); }, 5s, 5ms)) << "the VIP stayed on n1";
    const auto outage = outage_after(t, "n2");
    ASSERT_TRUE(outage);
    const std::string line = fmt::format("manage: true: the new process SIGKILLed, n2 serves after {:.0f} ms\n",
                                         *outage);
    std::cout << "[ MEASURED ] " << line;
    if (const char* out = std::getenv("APILB_VIP_TABLE")) std::ofstream(out, std::ios::app) << line;
}

TEST_F(VipUpgrade, ANewBinaryThatExitsLeavesKeepalivedWithTheOldProcess) {
    // Read by the old process when it starts the new binary.
    scoped_env exits("APILB_UPGRADE_BINARY", "/bin/false");
    pid_t keepalived = -1;
    start_managed_pair(keepalived);
    ASSERT_FALSE(HasFatalFailure());
    node& n1 = nodes_[0];
    node& n2 = nodes_[1];
    const std::size_t roles1 = role_lines(n1), roles2 = role_lines(n2);
    {
        track_watch track(n1.track_file());
        n1.apilb->signal(SIGUSR2);
        ASSERT_TRUE(wait_until([&] { return n1.apilb->log().find("upgrade failed") != std::string::npos; }, 30s, 5ms))
            << diagnostics();
        std::this_thread::sleep_for(500ms);
        EXPECT_FALSE(track.flapped()) << "n1's track file held " << track.first();
    }
    EXPECT_TRUE(n1.apilb->running());
    EXPECT_EQ(managed_keepalived_pid(n1), keepalived);
    EXPECT_EQ(::kill(keepalived, 0), 0);
    EXPECT_EQ(role_lines(n1), roles1) << diagnostics();
    EXPECT_EQ(role_lines(n2), roles2) << diagnostics();
    EXPECT_TRUE(client_->steadily_on("n1"));

    // Still the old process's.
    expect_keepalived_restarted(keepalived, "old process");
}

TEST_F(VipUpgrade, OldProcessKilledMidHandoverLeavesTheVipSideToTheNewOne) {
    // Read by the old process: between its last session pass and
    // sessions_end it waits this long and says so; the test kills it there,
    // after the child frames and every session frame, before sessions_taken.
    scoped_env gap("APILB_UPGRADE_TEST_SESSIONS_END_DELAY_MS", "5000");
    pid_t keepalived = -1;
    start_managed_pair(keepalived);
    ASSERT_FALSE(HasFatalFailure());
    node& n1 = nodes_[0];
    node& n2 = nodes_[1];
    // Nothing should move: an answer from n2 still fails.
    client_->set_patience(500ms, 150ms);
    long_sessions sessions(segment_->ns("cl"));
    ASSERT_TRUE(wait_until([&] { return sessions.rounds() >= 5; }, 10s, 5ms)) << sessions.first_error();
    const std::size_t roles1 = role_lines(n1), roles2 = role_lines(n2);
    track_watch track(n1.track_file());

    n1.apilb->signal(SIGUSR2);
    ASSERT_TRUE(wait_until(
        [&] { return n1.apilb->log().find("every session sent; sessions_end in") != std::string::npos; }, 30s, 5ms))
        << diagnostics();
    // The old and the new process write the same log.
    const auto next = static_cast<pid_t>(from_log(n1.apilb->log(), R"(upgrade: pid (\d+) \(apilb)"));
    ASSERT_GT(next, 0) << n1.apilb->log();
    upgraded_.push_back(next);
    const auto t = steady::now();
    n1.apilb->signal(SIGKILL);
    ASSERT_TRUE(n1.apilb->wait(5s));
    const bool took_over = wait_until(
        [&] { return n1.apilb->log().find("vrrp: took over the track file") != std::string::npos; }, 5s, 1ms);
    const double to_take_over = ms_since(t, steady::now());
    EXPECT_TRUE(took_over) << "the new process never took the VIP's side over\n" << n1.apilb->log();
    // No role came from the old process: the VIP on n1 says MASTER.
    EXPECT_NE(n1.apilb->log().find("from the old process (role MASTER: this node holds the VIPs)"), std::string::npos)
        << n1.apilb->log();
    std::this_thread::sleep_for(1s);
    sessions.stop();
    track.stop();

    long attempts = 0, failed = 0;
    for (const auto& a : client_->since(t)) {
        ++attempts;
        if (a.node != "n1") ++failed;
    }
    // keepalived runs on (the new process holds its lifeline): n1 keeps the
    // VIP, the new process serves it, nothing changes state.
    EXPECT_EQ(failed, 0) << timeline(t, "none");
    EXPECT_EQ(sessions.broken(), 0) << sessions.first_error();
    EXPECT_FALSE(track.flapped()) << "n1's track file held " << track.first();
    EXPECT_EQ(role_lines(n1), roles1) << "a VRRP state change on n1\n" << diagnostics();
    EXPECT_EQ(role_lines(n2), roles2) << "a VRRP state change on n2\n" << diagnostics();
    EXPECT_TRUE(client_->steadily_on("n1"));
    EXPECT_TRUE(alive(next)) << "the new process does not run";
    EXPECT_EQ(managed_keepalived_pid(n1), keepalived) << "keepalived was restarted";
    EXPECT_NE(n1.apilb->log().find("supervising keepalived (keeper pid"), std::string::npos) << n1.apilb->log();
    EXPECT_LE(longest_overlap_ms(*watches_[0], *watches_[1]), static_cast<double>(advert.count()));
    const std::string line = fmt::format(
        "manage: true, the old process SIGKILLed before sessions_end: the new one took over after {:.0f} ms; {} "
        "connects to the VIP, {} failed; {} long-lived sessions over {} rounds, {} broken\n",
        to_take_over, attempts, failed, session_count, sessions.rounds(), sessions.broken());
    std::cout << "[ MEASURED ] " << line;
    if (const char* out = std::getenv("APILB_VIP_TABLE")) std::ofstream(out, std::ios::app) << line;

    // The new process supervises keepalived and writes the track file.
    client_->set_patience(30ms, 25ms);
    expect_keepalived_restarted(keepalived, "new process");
    expect_track_file_moves_the_vip();
    expect_no_sanitizer_report(n1.apilb->log(), "apilb n1");
}

}  // namespace
}  // namespace apilb::test
