// What the upgrade tests share (docs/upgrade.md "Zero-drop upgrade"): a
// steady rate of new connections, the old process's log lines about the
// handover, the processes an upgrade started, and the fixture of the
// listener tests.
#pragma once

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <sys/stat.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <regex>
#include <thread>

#include "harness.hpp"

namespace apilb::test {

using namespace std::chrono_literals;

/// Opens `count` connections to 127.0.0.1:`port`, one every `gap`, each
/// sending a line and reading its echo; counts those that were refused or
/// did not get their bytes back (and, apart, those whose connect failed).
/// Bounded in time too: past count * gap + 20 s it stops, and the
/// connections it did not open count as failed.
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
                      ++connect_failed_;
                      last_error_ = fmt::format("connect {}: errno {}", i, err);
                      last_failed_ = i;
                  } else if (!c.send_all(line) || c.recv_exact(line.size()) != line) {
                      ++failed_;
                      last_error_ = fmt::format("echo {} not returned", i);
                      last_failed_ = i;
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
    /// Connects that failed (refused, or no handshake within 2 s).
    int connect_failed() const { return connect_failed_; }
    /// The index of the last connection that failed; -1 if none.
    int last_failed() const { return last_failed_; }
    std::string last_error() const { return last_error_; }

private:
    std::atomic<int> done_{0};
    std::atomic<int> failed_{0};
    std::atomic<int> connect_failed_{0};
    std::atomic<int> last_failed_{-1};
    std::atomic<bool> stop_{false};
    std::string last_error_;
    std::thread thread_;
};

/// The pid the old process handed over to, from its log; 0 if none yet.
inline pid_t handed_to(const std::string& log, int nth = 1) {
    static const std::regex line(R"(upgrade: pid (\d+) serves)");
    int seen = 0;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it) {
        if (++seen == nth) return static_cast<pid_t>(std::stoi((*it)[1]));
    }
    return 0;
}

inline bool alive(pid_t pid) { return ::kill(pid, 0) == 0; }

/// Ends a process this test started through an upgrade (not our child):
/// SIGTERM, then SIGKILL if it has not gone within 15 s.
inline void end_by_pid(pid_t pid) {
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

/// A "new binary" in `dir` that never speaks on the channel; its path.
inline std::string hanging_binary(const temp_dir& dir) {
    dir.write("hang.sh", "#!/bin/sh\nexec sleep 60\n");
    EXPECT_EQ(::chmod(dir.file("hang.sh").c_str(), 0755), 0);
    return dir.file("hang.sh");
}

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

/// A number from the log line `pattern` (one capture group); -1 if none.
inline long long from_log(const std::string& log, const std::string& pattern) {
    std::smatch m;
    if (!std::regex_search(log, m, std::regex(pattern))) return -1;
    return std::stoll(m[1]);
}

/// A sample of /metrics on 127.0.0.1:`admin_port` ("name{labels}"); -1 if absent.
inline double metric(std::uint16_t admin_port, const std::string& sample) {
    const std::string text = http_exchange(admin_port, "GET", "/metrics").body;
    const auto at = text.find("\n" + sample + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + sample.size() + 2));
}

/// What an upgrade's old process said once the new one served.
struct upgrade_outcome {
    pid_t new_pid = 0;  ///< 0: no handover within 60 s
    long long handed = -1, kept = -1, phase_ms = -1;
    std::string log;  ///< the old process's, then
};

/// What `old`'s log says of the handover, once it has handed over (an
/// upgrade started already).
inline upgrade_outcome wait_for_handover(apilb_process& old) {
    upgrade_outcome up;
    if (!wait_until([&] { return handed_to(old.log()) != 0; }, 60s)) return up;
    up.log = old.log();
    up.new_pid = handed_to(up.log);
    up.handed = from_log(up.log, R"(serves; (\d+) session\(s\) handed over)");
    up.kept = from_log(up.log, R"(handed over in \d+ms, (\d+) kept here)");
    up.phase_ms = from_log(up.log, R"(handed over in (\d+)ms)");
    return up;
}

/// SIGUSR2 to `old`, and what its log says of the handover.
inline upgrade_outcome upgrade(apilb_process& old) {
    old.proc().signal(SIGUSR2);
    return wait_for_handover(old);
}

/// Idle sessions that each echoed one line: established, answered.
inline std::vector<client> open_idle_sessions(std::uint16_t port, int n) {
    std::vector<client> out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
        client& c = out[static_cast<std::size_t>(i)];
        c.set_timeout(10s);
        EXPECT_EQ(c.connect("127.0.0.1", port), 0) << i;
        const std::string line = fmt::format("idle {}\n", i);
        EXPECT_TRUE(c.send_all(line));
        EXPECT_EQ(c.recv_exact(line.size()), line) << i;
    }
    return out;
}

/// One client sending `payload` to 127.0.0.1:`port` in 64 KiB pieces, then
/// its FIN, on its own thread: to a destination that stops reading, so
/// that apilb holds bytes it cannot write out. Joined at the latest when
/// destroyed (a send gives up after 60 s).
class stalling_upload {
public:
    stalling_upload(std::uint16_t port, const std::string& payload) : payload_(payload) {
        client_.set_timeout(60s);
        if (client_.connect("127.0.0.1", port) != 0) return;
        connected_ = true;
        writer_ = std::thread([this] {
            for (std::size_t at = 0; at < payload_.size(); at += 65536) {
                const std::size_t len = std::min<std::size_t>(65536, payload_.size() - at);
                if (!client_.send_all(payload_.data() + at, len)) return;
                sent_ += len;
            }
            client_.shutdown_write();
        });
    }
    ~stalling_upload() { join(); }
    bool connected() const { return connected_; }
    /// Bytes sent so far.
    std::size_t sent() const { return sent_; }
    /// Waits (at most 30 s) until the sends have made no progress for a while.
    bool wait_stalled() {
        std::size_t last = 0;
        return wait_until(
            [&] {
                const std::size_t now = sent_.load();
                const bool still = now > 0 && now == last;
                last = now;
                return still;
            },
            30s, 300ms);
    }
    /// Waits for the last byte and the FIN to be sent.
    void join() {
        if (writer_.joinable()) writer_.join();
    }
    /// The connection, to read the answer from once joined.
    client& conn() { return client_; }

private:
    const std::string& payload_;
    client client_;
    bool connected_ = false;
    std::atomic<std::size_t> sent_{0};
    std::thread writer_;
};

/// Every idle session still relays, in both directions: a line and its echo.
inline void expect_idle_sessions_relay(std::vector<client>& sessions, const std::string& what) {
    int failed = 0;
    std::size_t first = 0, last = 0;
    for (std::size_t i = 0; i < sessions.size(); ++i) {
        const std::string line = fmt::format("{} {}\n", what, i);
        if (!sessions[i].send_all(line) || sessions[i].recv_exact(line.size()) != line) {
            if (failed++ == 0) first = i;
            last = i;
        }
    }
    EXPECT_EQ(failed, 0) << "idle sessions that no longer relay " << what << ", from #" << first << " to #" << last;
}

}  // namespace apilb::test
