// Liveness of the real binary with one worker thread stopped for real:
// /livez turns 503 and the systemd watchdog goes unfed while any worker's
// event loop cannot answer, and both recover once it runs again. /readyz and
// /metrics, served by the control thread, keep answering (200) meanwhile.
//
// There is no test hook in apilb for this: the test stops one worker thread
// with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT on that thread's TID; the
// process's other threads keep running) and resumes it with PTRACE_DETACH.
// The workers are found by the names they give themselves ("apilb-w0", ...)
// in /proc/PID/task/*/comm. The test is apilb's parent (and usually root), so
// the kernel allows the ptrace; if it refuses, the test fails and says why.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "harness.hpp"

namespace apilb::test {
namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

using http_reply = http_answer;

/// One HTTP/1.1 GET on a fresh connection; status 0 if it failed.
http_reply http_get(std::uint16_t port, const std::string& path) { return http_exchange(port, "GET", path); }

/// Polls GET `path` until it answers `status` (bounded); the last reply.
http_reply wait_for_status(std::uint16_t port, const std::string& path, int status, milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    http_reply r;
    do {
        r = http_get(port, path);
        if (r.status == status) return r;
        std::this_thread::sleep_for(milliseconds(50));
    } while (clock_type::now() < deadline);
    return r;
}

/// Two workers, one pool over `backend` with a quick TCP check, the admin
/// endpoint on `admin_port`.
std::string liveness_config(std::uint16_t listen_port, const std::string& backend, std::uint16_t admin_port) {
    std::string yaml = single_pool_config(listen_port, {backend}, "round-robin", 2,
                                          fmt::format("admin:\n  address: \"127.0.0.1:{}\"\n", admin_port));
    const std::string anchor = "    balance: round-robin\n";
    yaml.replace(yaml.find(anchor), anchor.size(),
                 anchor + "    health: {type: tcp, interval: 200ms, timeout: 500ms, rise: 1, fall: 1}\n");
    return yaml;
}

/// Thread names of process `pid`, by TID (from /proc/PID/task/*/comm).
std::map<pid_t, std::string> thread_names(pid_t pid) {
    std::map<pid_t, std::string> out;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        std::string name = read_file(it->path().string() + "/comm");
        while (!name.empty() && name.back() == '\n') name.pop_back();
        out[static_cast<pid_t>(std::stol(it->path().filename().string()))] = name;
    }
    return out;
}

/// The worker threads of `pid` ("apilb-w0", ...) by name, once `expected`
/// of them are there (bounded); whatever was found otherwise.
std::map<std::string, pid_t> worker_threads(pid_t pid, std::size_t expected) {
    std::map<std::string, pid_t> workers;
    const auto deadline = clock_type::now() + milliseconds(5000);
    do {
        workers.clear();
        for (const auto& [tid, name] : thread_names(pid)) {
            if (name.rfind("apilb-w", 0) == 0) workers[name] = tid;
        }
        if (workers.size() == expected) break;
        std::this_thread::sleep_for(milliseconds(20));
    } while (clock_type::now() < deadline);
    return workers;
}

/// Whether a thread's /proc/PID/task/TID/syscall line shows it in the place
/// an idle event loop sits: an epoll wait, or (relay.io: io_uring) an
/// io_uring_enter that waits for a completion (min_complete > 0, with
/// IORING_ENTER_GETEVENTS).
bool is_idle_wait(const std::string& line) {
    std::istringstream in(line);
    long nr = -1;
    in >> nr;
#ifdef SYS_epoll_wait
    if (nr == SYS_epoll_wait) return true;
#endif
#ifdef SYS_epoll_pwait2
    if (nr == SYS_epoll_pwait2) return true;
#endif
    if (nr == SYS_epoll_pwait) return true;
    if (nr != SYS_io_uring_enter) return false;
    std::string fd, to_submit, min_complete, flags;
    in >> fd >> to_submit >> min_complete >> flags;
    return std::strtoul(min_complete.c_str(), nullptr, 16) > 0 &&
           (std::strtoul(flags.c_str(), nullptr, 16) & 1u /* IORING_ENTER_GETEVENTS */) != 0;
}

/// One thread of apilb held in a ptrace stop; the other threads run on. The
/// calling thread becomes its tracer and must be the one that resumes it.
/// The destructor resumes it if the test did not.
class stopped_thread {
public:
    /// Stops `tid` of `pid`; error() says why if that failed. Retries until
    /// the thread is caught idle in its loop's wait: stopped in the middle of a
    /// handler it might hold a lock the control thread then waits for (the
    /// logger's, the io_context's), which would hang /livez itself rather
    /// than make it answer 503.
    stopped_thread(pid_t pid, pid_t tid) : pid_(pid), tid_(tid) {
        std::string last;
        for (int attempt = 0; attempt < 50; ++attempt) {
            error_ = stop_once();
            if (!error_.empty()) return;
            const std::string sc = read_file(fmt::format("/proc/{}/task/{}/syscall", pid_, tid_));
            if (!sc.empty() && is_idle_wait(sc)) return;
            last = sc;
            error_ = resume();
            if (!error_.empty()) return;
            std::this_thread::sleep_for(milliseconds(20));
        }
        error_ = "thread " + std::to_string(tid_) + " was never caught in its idle wait; last /proc syscall: " + last;
    }
    ~stopped_thread() {
        if (stopped_) resume();
    }
    stopped_thread(const stopped_thread&) = delete;
    stopped_thread& operator=(const stopped_thread&) = delete;

    /// Empty if the thread is stopped, else what went wrong.
    const std::string& error() const { return error_; }

    /// Lets the thread run again (PTRACE_DETACH); empty on success, else why not.
    std::string resume() {
        if (!stopped_) return {};
        stopped_ = false;
        if (::ptrace(PTRACE_DETACH, tid_, nullptr, nullptr) != 0) {
            return fmt::format("PTRACE_DETACH of thread {} failed: {}", tid_, std::strerror(errno));
        }
        return {};
    }

private:
    std::string stop_once() {
        if (::ptrace(PTRACE_SEIZE, tid_, nullptr, nullptr) != 0) {
            return fmt::format(
                "PTRACE_SEIZE of apilb's thread {} (pid {}) failed: {} (the test needs ptrace "
                "on its child: root, or CAP_SYS_PTRACE, or kernel.yama.ptrace_scope <= 1)",
                tid_, pid_, std::strerror(errno));
        }
        if (::ptrace(PTRACE_INTERRUPT, tid_, nullptr, nullptr) != 0) {
            const std::string e = fmt::format("PTRACE_INTERRUPT of thread {} failed: {}", tid_, std::strerror(errno));
            ::ptrace(PTRACE_DETACH, tid_, nullptr, nullptr);
            return e;
        }
        // The stop is reported to the tracer like a child's (__WALL: the
        // thread is not a child, nor the thread-group leader).
        const auto deadline = clock_type::now() + milliseconds(2000);
        for (;;) {
            int status = 0;
            const pid_t r = ::waitpid(tid_, &status, __WALL | WNOHANG);
            if (r == tid_) {
                if (WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_STOP) {
                    stopped_ = true;
                    return {};
                }
                // A signal on its way to this thread, or the process died:
                // hand the signal back and give up.
                const int sig = WIFSTOPPED(status) ? WSTOPSIG(status) : 0;
                if (WIFSTOPPED(status)) ::ptrace(PTRACE_DETACH, tid_, nullptr, reinterpret_cast<void*>(long{sig}));
                return fmt::format("thread {}: unexpected wait status {:#x} instead of the interrupt stop", tid_,
                                   status);
            }
            if (r < 0) return fmt::format("waitpid for thread {} failed: {}", tid_, std::strerror(errno));
            if (clock_type::now() >= deadline) {
                ::ptrace(PTRACE_DETACH, tid_, nullptr, nullptr);
                return fmt::format("thread {} did not stop within 2 s of PTRACE_INTERRUPT", tid_);
            }
            std::this_thread::sleep_for(milliseconds(2));
        }
    }

    pid_t pid_;
    pid_t tid_;
    bool stopped_ = false;
    std::string error_;
};

TEST(Livez, AnswersUnavailableWhileAnyOneWorkerIsStoppedAndRecovers) {
    temp_dir dir;
    tcp_server backend("127.0.0.1", echo_handler());
    const std::uint16_t port = free_port();
    const std::uint16_t admin = free_port();
    apilb_process lb(dir, liveness_config(port, backend.address(), admin), "127.0.0.1", port);

    ASSERT_EQ(wait_for_status(admin, "/readyz", 200, milliseconds(10000)).status, 200) << lb.log();
    const http_reply alive = http_get(admin, "/livez");
    ASSERT_EQ(alive.status, 200) << alive.body;
    EXPECT_EQ(alive.body, "ok: 2 of 2 worker(s) answered within 1000ms\n");

    const auto workers = worker_threads(lb.proc().pid(), 2);
    ASSERT_EQ(workers.size(), 2u) << "expected threads apilb-w0 and apilb-w1 in /proc/" << lb.proc().pid()
                                  << "/task/*/comm (worker::start names them)";
    ASSERT_TRUE(workers.contains("apilb-w0") && workers.contains("apilb-w1"));

    // Each worker in turn: /livez must ping every one, not only the first.
    for (const auto& [name, tid] : workers) {
        SCOPED_TRACE("stopped worker thread " + name);
        stopped_thread stopped(lb.proc().pid(), tid);
        ASSERT_EQ(stopped.error(), "");

        const auto t0 = clock_type::now();
        const http_reply dead = http_get(admin, "/livez");
        const auto took = clock_type::now() - t0;
        EXPECT_EQ(dead.status, 503) << dead.body;
        EXPECT_EQ(dead.body, "not alive: 1 of 2 worker(s) answered within 1000ms\n");
        // It waited out its 1 s deadline for the stopped worker, no more.
        EXPECT_GE(took, milliseconds(900));
        EXPECT_LT(took, milliseconds(4000));

        // Readiness is about serving: config, listeners, healthy backends,
        // not draining. A stuck worker does not change it (the other worker
        // still accepts), and the control thread still answers /metrics.
        const http_reply ready = http_get(admin, "/readyz");
        EXPECT_EQ(ready.status, 200) << ready.body;
        const http_reply metrics = http_get(admin, "/metrics");
        EXPECT_EQ(metrics.status, 200);
        EXPECT_NE(metrics.body.find("\napilb_ready 1\n"), std::string::npos);

        ASSERT_EQ(stopped.resume(), "");
        const http_reply back = wait_for_status(admin, "/livez", 200, milliseconds(3000));
        EXPECT_EQ(back.status, 200) << back.body;
        EXPECT_EQ(back.body, "ok: 2 of 2 worker(s) answered within 1000ms\n");
    }

    // Both workers still relay after their stop.
    for (int i = 0; i < 4; ++i) {
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        c.set_timeout(milliseconds(3000));
        ASSERT_TRUE(c.send_all("ping"));
        EXPECT_EQ(c.recv_exact(4), "ping");
    }
    EXPECT_EQ(lb.terminate(), 0) << lb.log();
}

/// The datagram socket systemd would hold for NOTIFY_SOCKET: every message
/// with the time it arrived, read on a thread of its own.
class notify_socket {
public:
    struct message {
        clock_type::time_point at;
        std::string text;
    };

    explicit notify_socket(std::string path) : path_(std::move(path)) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        if (fd_ < 0 || path_.size() >= sizeof sa.sun_path) throw std::runtime_error("notify socket: " + path_);
        std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
            throw std::runtime_error("bind " + path_ + ": " + std::strerror(errno));
        }
        timeval tv{0, 50'000};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        reader_ = std::thread([this] {
            char buf[4096];
            while (!stop_) {
                const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
                if (n <= 0) continue;
                std::lock_guard lock(mu_);
                messages_.push_back({clock_type::now(), std::string(buf, static_cast<std::size_t>(n))});
            }
        });
    }
    ~notify_socket() {
        stop_ = true;
        reader_.join();
        ::close(fd_);
    }
    notify_socket(const notify_socket&) = delete;
    notify_socket& operator=(const notify_socket&) = delete;

    const std::string& path() const { return path_; }

    /// Times at which a message holding the line `line` arrived.
    std::vector<clock_type::time_point> times_of(const std::string& line) const {
        std::vector<clock_type::time_point> out;
        std::lock_guard lock(mu_);
        for (const auto& m : messages_) {
            std::istringstream in(m.text);
            for (std::string l; std::getline(in, l);) {
                if (l == line) {
                    out.push_back(m.at);
                    break;
                }
            }
        }
        return out;
    }

    /// Waits until a message with `line` arrived after `since` (bounded).
    bool wait_for(const std::string& line, clock_type::time_point since, milliseconds timeout) const {
        const auto deadline = clock_type::now() + timeout;
        for (;;) {
            for (auto t : times_of(line)) {
                if (t > since) return true;
            }
            if (clock_type::now() >= deadline) return false;
            std::this_thread::sleep_for(milliseconds(10));
        }
    }

    /// Every message so far, for failure messages.
    std::string transcript(clock_type::time_point origin) const {
        std::string out;
        std::lock_guard lock(mu_);
        for (const auto& m : messages_) {
            std::string text = m.text;
            std::replace(text.begin(), text.end(), '\n', ' ');
            out += fmt::format("  +{}ms {}\n", std::chrono::duration_cast<milliseconds>(m.at - origin).count(), text);
        }
        return out;
    }

private:
    std::string path_;
    int fd_ = -1;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    std::vector<message> messages_;
    std::thread reader_;
};

/// The WATCHDOG=1 times in [from, to).
std::vector<clock_type::time_point> between(const std::vector<clock_type::time_point>& times,
                                            clock_type::time_point from, clock_type::time_point to) {
    std::vector<clock_type::time_point> out;
    for (auto t : times) {
        if (t >= from && t < to) out.push_back(t);
    }
    return out;
}

/// The longest gap between consecutive times, counting from `from` to the
/// first and from the last to `to`.
milliseconds longest_gap(const std::vector<clock_type::time_point>& times, clock_type::time_point from,
                         clock_type::time_point to) {
    auto prev = from;
    clock_type::duration gap{};
    for (auto t : times) {
        gap = std::max(gap, t - prev);
        prev = t;
    }
    gap = std::max(gap, to - prev);
    return std::chrono::duration_cast<milliseconds>(gap);
}

/// apilb started as systemd starts it with WatchdogSec=1s: NOTIFY_SOCKET,
/// WATCHDOG_USEC, and WATCHDOG_PID = its own pid, which sd_watchdog_enabled()
/// compares with getpid(): the shell learns it ($$) and execs apilb in its
/// place, keeping the PID (and keeping apilb this test's child, for ptrace).
struct watched_apilb {
    temp_dir dir;
    notify_socket notify{dir.file("notify")};
    tcp_server backend{"127.0.0.1", echo_handler()};
    std::uint16_t port = free_port();
    std::uint16_t admin = free_port();
    clock_type::time_point origin = clock_type::now();
    apilb_process lb{dir,
                     liveness_config(port, backend.address(), admin),
                     "127.0.0.1",
                     port,
                     {},
                     {"/usr/bin/env", "NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=1000000", "/bin/sh", "-c",
                      "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\""}};
};

TEST(SystemdWatchdog, GoesUnfedWhileOneWorkerIsStoppedAndResumes) {
    watched_apilb w;
    notify_socket& notify = w.notify;
    apilb_process& lb = w.lb;
    const auto origin = w.origin;
    ASSERT_TRUE(notify.wait_for("READY=1", origin, milliseconds(10000))) << "no READY=1; notifications:\n"
                                                                         << notify.transcript(origin) << "log:\n"
                                                                         << lb.log();
    ASSERT_TRUE(lb.wait_for_log("systemd watchdog: 1000ms; fed while every worker answers within 250ms"))
        << "apilb did not take up the watchdog (built without libsystemd, or WATCHDOG_PID wrong?):\n"
        << lb.log();

    // Fed regularly: apilb pings twice per period, so well within 1 s.
    const auto fed_from = clock_type::now();
    std::this_thread::sleep_for(milliseconds(2000));
    const auto fed_to = clock_type::now();
    const auto fed = between(notify.times_of("WATCHDOG=1"), fed_from, fed_to);
    EXPECT_GE(fed.size(), 3u) << notify.transcript(origin);
    EXPECT_LT(longest_gap(fed, fed_from, fed_to), milliseconds(1000)) << notify.transcript(origin);

    const auto workers = worker_threads(lb.proc().pid(), 2);
    ASSERT_TRUE(workers.contains("apilb-w0")) << "no thread named apilb-w0 in /proc/" << lb.proc().pid() << "/task";
    {
        stopped_thread stopped(lb.proc().pid(), workers.at("apilb-w0"));
        ASSERT_EQ(stopped.error(), "");
        const auto stalled_at = clock_type::now();
        // A round already under way when the worker stopped may still
        // complete with its earlier answer: allow its ping deadline (250 ms).
        const auto quiet_from = stalled_at + milliseconds(300);
        std::this_thread::sleep_for(milliseconds(2500));
        const auto quiet_to = clock_type::now();
        const auto during = between(notify.times_of("WATCHDOG=1"), quiet_from, quiet_to);
        EXPECT_TRUE(during.empty()) << during.size() << " WATCHDOG=1 while worker 0 was stopped:\n"
                                    << notify.transcript(origin);
        // Unfed for longer than WatchdogSec (1 s): systemd would have killed it.
        EXPECT_GT(quiet_to - quiet_from, milliseconds(2000));
        EXPECT_TRUE(lb.wait_for_log("1 of 2 worker(s) did not answer; not feeding the watchdog", milliseconds(100)))
            << lb.log();
        ASSERT_EQ(stopped.resume(), "");

        const auto resumed_at = clock_type::now();
        EXPECT_TRUE(notify.wait_for("WATCHDOG=1", resumed_at, milliseconds(1500)))
            << "no WATCHDOG=1 within 1.5 s of resuming:\n"
            << notify.transcript(origin);
        std::this_thread::sleep_for(milliseconds(1500));
        const auto again = between(notify.times_of("WATCHDOG=1"), resumed_at, clock_type::now());
        EXPECT_GE(again.size(), 2u) << notify.transcript(origin);
    }
    EXPECT_EQ(lb.terminate(), 0) << lb.log();
    EXPECT_TRUE(notify.wait_for("STOPPING=1", origin, milliseconds(2000))) << notify.transcript(origin);
}

TEST(SystemdWatchdog, TheUpgradedProcessFeedsItOnceTheOldOneIsGone) {
    watched_apilb w;
    notify_socket& notify = w.notify;
    apilb_process& lb = w.lb;
    const auto origin = w.origin;
    ASSERT_TRUE(notify.wait_for("READY=1", origin, milliseconds(10000))) << notify.transcript(origin) << lb.log();
    ASSERT_TRUE(lb.wait_for_log("systemd watchdog: 1000ms")) << lb.log();
    lb.proc().signal(SIGUSR2);
    // Nothing to drain: the old process exits once the new one serves.
    ASSERT_EQ(lb.proc().wait(std::chrono::seconds(60)), 0) << lb.log();
    const auto gone = clock_type::now();
    std::smatch m;
    const std::string log = lb.log();
    ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(upgrade: pid (\d+) serves)"))) << log;
    const pid_t new_pid = static_cast<pid_t>(std::stoi(m[1]));
    struct end_it {
        pid_t pid;
        ~end_it() {
            ::kill(pid, SIGTERM);
            wait_until([&] { return ::kill(pid, 0) != 0; }, std::chrono::seconds(15), milliseconds(20));
        }
    } ender{new_pid};
    EXPECT_TRUE(notify.wait_for(fmt::format("MAINPID={}", new_pid), origin, milliseconds(100)))
        << notify.transcript(origin);
    // systemd now expects the new main process's WATCHDOG=1 within WatchdogSec
    // (1 s), or it kills the unit: it must have taken the watchdog up.
    std::this_thread::sleep_for(milliseconds(2500));
    const auto fed = between(notify.times_of("WATCHDOG=1"), gone, clock_type::now());
    EXPECT_GE(fed.size(), 3u) << "the new process does not feed the watchdog:\n"
                              << notify.transcript(origin) << lb.log();
    EXPECT_LT(longest_gap(fed, gone, clock_type::now()), milliseconds(1000)) << notify.transcript(origin);
}

}  // namespace
}  // namespace apilb::test
