// The upgrade (SIGUSR2, docs/upgrade.md "Zero-drop upgrade"): the real
// binary hands its listening sockets to a new apilb under a steady rate of
// new connections, which must all be served; a new binary that fails is
// rolled back with the old one serving on.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <sys/stat.h>

#include <csignal>
#include <cstdlib>
#include <regex>
#include <thread>

#include "harness.hpp"

namespace apilb::test {
namespace {

using namespace std::chrono_literals;

/// Opens `count` connections to 127.0.0.1:`port`, one every `gap`, each
/// sending a line and reading its echo; counts those that were refused or
/// did not get their bytes back. Bounded in time too: past count * gap +
/// 20 s it stops, and the connections it did not open count as failed.
class steady_load {
public:
    steady_load(std::uint16_t port, int count, std::chrono::milliseconds gap)
        : thread_([this, port, count, gap] {
              auto next = std::chrono::steady_clock::now();
              const auto end = next + count * gap + 20s;
              for (int i = 0; i < count && !stop_; ++i) {
                  if (std::chrono::steady_clock::now() > end) {
                      failed_ += count - i;
                      last_error_ = fmt::format("out of time after {} connection(s)", i);
                      break;
                  }
                  next += gap;
                  client c;
                  c.set_timeout(2s);
                  const std::string line = fmt::format("hello {}\n", i);
                  if (const int err = c.connect("127.0.0.1", port, 2s); err != 0) {
                      ++failed_;
                      last_error_ = fmt::format("connect {}: errno {}", i, err);
                  } else if (!c.send_all(line) || c.recv_exact(line.size()) != line) {
                      ++failed_;
                      last_error_ = fmt::format("echo {} not returned", i);
                  }
                  ++done_;
                  std::this_thread::sleep_until(next);
              }
          }) {}
    ~steady_load() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    void join() { thread_.join(); }
    int done() const { return done_; }
    int failed() const { return failed_; }
    std::string last_error() const { return last_error_; }

private:
    std::atomic<int> done_{0};
    std::atomic<int> failed_{0};
    std::atomic<bool> stop_{false};
    std::string last_error_;
    std::thread thread_;
};

/// The pid the old process handed over to, from its log; 0 if none yet.
pid_t handed_to(const std::string& log, int nth = 1) {
    static const std::regex line(R"(upgrade: pid (\d+) serves)");
    int seen = 0;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it) {
        if (++seen == nth) return static_cast<pid_t>(std::stoi((*it)[1]));
    }
    return 0;
}

bool alive(pid_t pid) { return ::kill(pid, 0) == 0; }

/// Ends a process this test started through an upgrade (not our child):
/// SIGTERM, then SIGKILL if it has not gone within 15 s.
void end_by_pid(pid_t pid) {
    if (pid <= 0 || !alive(pid)) return;
    ::kill(pid, SIGTERM);
    if (!wait_until([&] { return !alive(pid); }, 15s, 20ms)) ::kill(pid, SIGKILL);
}

/// Ends, when the test ends however it ends, the processes an upgrade
/// started (they outlive the old apilb, whose child they were).
struct end_at_exit {
    std::vector<pid_t> pids;
    ~end_at_exit() {
        for (pid_t p : pids) end_by_pid(p);
    }
};

/// Sets an environment variable for the apilb the test starts, and unsets it after.
struct scoped_env {
    scoped_env(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
    ~scoped_env() { ::unsetenv(name_); }
    const char* name_;
};

class UpgradeTest : public ::testing::Test {
protected:
    tcp_server b0{"127.0.0.1", echo_handler()};
    tcp_server b1{"127.0.0.1", echo_handler()};
    temp_dir dir;
    std::uint16_t port = free_port();

    std::string config(const std::string& extra = "timeouts: {drain: 3s}\n") const {
        return single_pool_config(port, {b0.address(), b1.address()}, "round-robin", 2, extra);
    }

    /// SIGUSR2 to `old` under `count` connects at 50/s: the upgrade must fail
    /// with `why` in its log line, and every connect be served by `old`.
    void expect_rolled_back(apilb_process& old, int count, const std::string& why) {
        steady_load load(port, count, 20ms);
        ASSERT_TRUE(wait_until([&] { return load.done() >= 25; }, 20s));
        old.proc().signal(SIGUSR2);
        ASSERT_TRUE(old.wait_for_log("upgrade failed:", 60s)) << old.log();
        EXPECT_TRUE(old.wait_for_log(why, 5s)) << old.log();
        load.join();
        EXPECT_EQ(load.failed(), 0) << load.last_error() << "\n" << old.log();
        EXPECT_TRUE(old.proc().running());
    }
};

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
    dir.write("hang.sh", "#!/bin/sh\nexec sleep 60\n");
    ASSERT_EQ(::chmod(dir.file("hang.sh").c_str(), 0755), 0);
    scoped_env binary("APILB_UPGRADE_BINARY", dir.file("hang.sh").c_str());
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

TEST_F(UpgradeTest, EstablishedSessionsStayWithTheOldProcessAndDrain) {
    // Session handover is not built: an open session is drained as after
    // SIGTERM: it works on until timeouts.drain, then is reset.
    apilb_process old(dir, config("timeouts: {drain: 2s}\n"), "127.0.0.1", port);
    client open;
    open.set_timeout(5s);
    ASSERT_EQ(open.connect("127.0.0.1", port), 0);
    ASSERT_TRUE(open.send_all("before\n"));
    ASSERT_EQ(open.recv_exact(7), "before\n");
    old.proc().signal(SIGUSR2);
    ASSERT_TRUE(wait_until([&] { return handed_to(old.log()) != 0; }, 60s)) << old.log();
    const pid_t new_pid = handed_to(old.log());
    end_at_exit guard{{new_pid}};
    ASSERT_TRUE(open.send_all("during\n"));
    EXPECT_EQ(open.recv_exact(7), "during\n");
    int end_errno = 0;
    open.set_timeout(15s);
    open.recv_until_eof(end_errno);
    EXPECT_EQ(end_errno, ECONNRESET) << "a drained session must end with a reset";
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    EXPECT_TRUE(alive(new_pid));
    end_by_pid(new_pid);
}

}  // namespace
}  // namespace apilb::test
