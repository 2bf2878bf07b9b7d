// The edges of the upgrade's session phase (docs/upgrade.md "Sessions"): no
// session stays with the old process because of when it came. Clients that
// connect all through the upgrade are the new process's from `ready` (the
// old one holds its accepts, the kernel's queues are shared); sessions
// still connecting to their backend finish first, then move; a rollback in
// the phase accepts again at once; timeouts.upgrade_quiesce gives a slow
// destination longer to take what apilb holds for it.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <mutex>
#include <thread>

#include "harness.hpp"
#include "upgrade_support.hpp"

namespace apilb::test {
namespace {

/// A backend whose accept queue is full until release(): listen backlog 0
/// and connections of its own waiting in the queue, so the kernel drops
/// further SYNs and a connect to it retries (after 1 s, then 3 s) until
/// then. From release() on it accepts and echoes every connection.
class gated_backend {
public:
    gated_backend() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
        EXPECT_EQ(::listen(fd_, 0), 0);
        socklen_t len = sizeof sa;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
        port_ = ntohs(sa.sin_port);
        // Backlog 0 queues one or two; the fillers that cannot get in time out.
        for (int i = 0; i < 3; ++i) {
            client c;
            if (c.connect("127.0.0.1", port_, 300ms) == 0) fillers_.push_back(std::move(c));
        }
        EXPECT_FALSE(fillers_.empty());
    }
    ~gated_backend() {
        stop_ = true;
        if (acceptor_.joinable()) acceptor_.join();
        {
            std::lock_guard lock(mu_);
            for (int fd : conns_) ::shutdown(fd, SHUT_RDWR);
        }
        for (auto& t : echoes_) t.join();
        ::close(fd_);
    }
    gated_backend(const gated_backend&) = delete;
    gated_backend& operator=(const gated_backend&) = delete;
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    /// Starts accepting: the queue empties, and the next SYN each waiting
    /// connect retransmits gets in.
    void release() {
        // A wide queue first: with room for one, the connects whose SYNs
        // come together would each get a SYN-ACK, but the final ACK of all
        // but the first would be dropped (the queue is full again), and
        // apilb would take those connects for established ones the backend
        // never saw.
        EXPECT_EQ(::listen(fd_, 128), 0);
        acceptor_ = std::thread([this] {
            while (!stop_) {
                pollfd p{fd_, POLLIN, 0};
                if (::poll(&p, 1, 50) <= 0) continue;
                const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (c < 0) continue;
                std::lock_guard lock(mu_);
                conns_.push_back(c);
                echoes_.emplace_back([c] {
                    char buf[4096];
                    for (;;) {
                        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
                        if (n <= 0 || ::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
                    }
                    ::shutdown(c, SHUT_WR);
                });
            }
        });
    }

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::vector<client> fillers_;
    std::atomic<bool> stop_{false};
    std::thread acceptor_;
    std::mutex mu_;
    std::vector<int> conns_;  // closed by their sessions' ends, or at exit
    std::vector<std::thread> echoes_;
};

/// Long-lived sessions opened at a steady rate: `count` of them, one every
/// `gap`, each echoing one line and then held open (a kubelet's watch).
/// Bounded in time: past count * gap + 20 s it stops.
class long_lived_load {
public:
    long_lived_load(std::uint16_t port, int count, std::chrono::milliseconds gap)
        : sessions_(static_cast<std::size_t>(count)), thread_([this, port, count, gap] {
              auto next = std::chrono::steady_clock::now();
              const auto end = next + count * gap + 20s;
              for (int i = 0; i < count && std::chrono::steady_clock::now() < end; ++i) {
                  next += gap;
                  client& c = sessions_[static_cast<std::size_t>(i)];
                  c.set_timeout(5s);
                  const std::string line = fmt::format("open {}\n", i);
                  if (const int err = c.connect("127.0.0.1", port, 2s); err != 0) {
                      failures_.push_back(fmt::format("connect {}: errno {}", i, err));
                  } else if (!c.send_all(line) || c.recv_exact(line.size()) != line) {
                      failures_.push_back(fmt::format("echo {} not returned", i));
                  }
                  ++opened_;
                  std::this_thread::sleep_until(next);
              }
          }) {}
    ~long_lived_load() {
        if (thread_.joinable()) thread_.join();
    }
    int opened() const { return opened_; }
    /// Waits for the last to open; what failed while opening.
    std::vector<std::string> join() {
        thread_.join();
        return failures_;
    }
    /// After join(): every session relays a line both ways once more; what failed.
    std::vector<std::string> relay_all(const std::string& what) {
        std::vector<std::string> out;
        for (int i = 0; i < opened_; ++i) {
            client& c = sessions_[static_cast<std::size_t>(i)];
            const std::string line = fmt::format("{} {}\n", what, i);
            if (!c.send_all(line) || c.recv_exact(line.size()) != line) out.push_back(fmt::format("session {}", i));
        }
        return out;
    }
    /// After join(): closes every session (a reset), so that no drain waits for them.
    void close_all() {
        for (auto& c : sessions_) c.reset();
    }

private:
    std::vector<client> sessions_;
    std::vector<std::string> failures_;
    std::atomic<int> opened_{0};
    std::thread thread_;
};

/// The first few of `v`, for a failure message.
std::string first_of(const std::vector<std::string>& v) {
    std::string out;
    for (std::size_t i = 0; i < v.size() && i < 5; ++i) out += v[i] + "; ";
    return out;
}

class UpgradePhaseTest : public ::testing::Test {
protected:
    tcp_server b0{"127.0.0.1", echo_handler()};
    tcp_server b1{"127.0.0.1", echo_handler()};
    temp_dir dir;
    std::uint16_t port = free_port();
    std::uint16_t admin_port = free_port();

    /// Two echo backends, `workers` workers, an admin endpoint.
    std::string config(unsigned workers = 2, const std::string& timeouts = "drain: 3s") const {
        return single_pool_config(
            port, {b0.address(), b1.address()}, "round-robin", workers,
            fmt::format("timeouts: {{{}}}\nadmin: {{address: \"127.0.0.1:{}\"}}\n", timeouts, admin_port));
    }
};

struct worker_counts {
    unsigned before, after;
};

class SteadyClientsTest : public UpgradePhaseTest, public ::testing::WithParamInterface<worker_counts> {};

// 50 new long-lived sessions a second, before, during and after the
// handover; the old process's last pass and its sessions_end 500 ms apart
// (test only), as on a loaded machine. A client the old process accepted
// in that time would stay with it and be reset by its drain; from `ready`
// it accepts none, and the new process serves the same queues. With fewer
// workers after, one worker of the new process takes several handed-over
// sockets; with more, the extra ones bind fresh SO_REUSEPORT sockets, whose
// queues only the new process ever served.
TEST_P(SteadyClientsTest, LongLivedSessionsOpenedAllThroughTheUpgradeRelayAfterIt) {
    scoped_env delay("APILB_UPGRADE_TEST_SESSIONS_END_DELAY_MS", "500");
    const worker_counts w = GetParam();
    apilb_process old(dir, config(w.before), "127.0.0.1", port);
    long_lived_load load(port, 150, 20ms);
    ASSERT_TRUE(wait_until([&] { return load.opened() >= 50; }, 20s));
    // The new binary reads the file again.
    dir.write("apilb.yaml", config(w.after));
    const upgrade_outcome up = upgrade(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    end_at_exit guard{{up.new_pid}};
    EXPECT_EQ(up.kept, 0) << up.log;
    const auto failed = load.join();
    EXPECT_EQ(failed.size(), 0u) << first_of(failed);
    EXPECT_GT(up.handed, 40) << up.log;
    // Nothing to drain: the old process exits at once, and only the new
    // one relays from here.
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    const auto cut = load.relay_all("after");
    EXPECT_EQ(cut.size(), 0u) << cut.size() << " session(s) no longer relay: " << first_of(cut);
    EXPECT_NE(old.log().find(fmt::format("took {} handed-over socket(s)", w.before)), std::string::npos) << old.log();
    load.close_all();
    end_by_pid(up.new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

INSTANTIATE_TEST_SUITE_P(Workers, SteadyClientsTest,
                         ::testing::Values(worker_counts{2, 2}, worker_counts{1, 3}, worker_counts{3, 1}),
                         [](const auto& info) {
                             return fmt::format("From{}To{}", info.param.before, info.param.after);
                         });

// Sessions whose backend connect is under way when the phase starts (its
// accept queue is full, so their SYNs are dropped and retried): the phase
// waits for them, and they move once established.
TEST_F(UpgradePhaseTest, SessionsStillConnectingFinishFirstThenMove) {
    gated_backend gated;
    apilb_process old(dir,
                      single_pool_config(port, {gated.address()}, "round-robin", 2,
                                         fmt::format("timeouts: {{drain: 3s, connect: 10s}}\n"
                                                     "admin: {{address: \"127.0.0.1:{}\"}}\n",
                                                     admin_port)),
                      "127.0.0.1", port);
    constexpr int n = 20;
    std::vector<client> connecting(n);
    for (int i = 0; i < n; ++i) {
        connecting[i].set_timeout(20s);
        ASSERT_EQ(connecting[i].connect("127.0.0.1", port), 0) << i;
        ASSERT_TRUE(connecting[i].send_all(fmt::format("first {}\n", i)));
    }
    // All accepted, each waiting for its backend.
    const std::string accepted = "apilb_listener_connections_accepted_total{listener=\"front\"}";
    ASSERT_TRUE(wait_until([&] { return metric(admin_port, accepted) >= n; }, 10s)) << metric(admin_port, accepted);
    old.proc().signal(SIGUSR2);
    // The new process said ready: the old one's session phase runs, with
    // every session still connecting.
    ASSERT_TRUE(old.wait_for_log("upgrade: ready sent to the old process", 60s)) << old.log();
    gated.release();
    const upgrade_outcome up = wait_for_handover(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    end_at_exit guard{{up.new_pid}};
    std::cout << "[ MEASURED ] session phase with " << n << " session(s) still connecting: " << up.phase_ms << " ms\n";
    EXPECT_GE(up.handed, n) << up.log;
    EXPECT_EQ(up.kept, 0) << up.log;
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    // Only the new process relays now: the line each sent while connecting,
    // then another.
    std::vector<std::string> failed;
    for (int i = 0; i < n; ++i) {
        const std::string first = fmt::format("first {}\n", i), after = fmt::format("after {}\n", i);
        if (const std::string got = connecting[i].recv_exact(first.size()); got != first) {
            failed.push_back(fmt::format("#{} got \"{}\" first", i, got));
        } else if (!connecting[i].send_all(after) || connecting[i].recv_exact(after.size()) != after) {
            failed.push_back(fmt::format("#{} no echo after", i));
        }
    }
    EXPECT_EQ(failed.size(), 0u) << "session(s) caught connecting that do not relay after the upgrade: "
                                 << first_of(failed) << "\n"
                                 << old.log();
    EXPECT_GE(metric(admin_port, "apilb_session_handover_total{result=\"adopted\"}"), n);
    end_by_pid(up.new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

// The new binary dies in the session phase (after its third session frame,
// test only), when the old process holds its accepts: it takes its sessions
// back and accepts again at once.
TEST_F(UpgradePhaseTest, RollbackInTheSessionPhaseAcceptsAgainAtOnce) {
    scoped_env die("APILB_UPGRADE_TEST_DIE_AFTER_SESSIONS", "3");
    apilb_process old(dir, config(), "127.0.0.1", port);
    std::vector<client> idle = open_idle_sessions(port, 40);
    steady_load load(port, 200, 20ms);
    ASSERT_TRUE(wait_until([&] { return load.done() >= 25; }, 20s));
    old.proc().signal(SIGUSR2);
    ASSERT_TRUE(old.wait_for_log("upgrade failed:", 60s)) << old.log();
    const int at_rollback = load.done();
    load.join();
    EXPECT_TRUE(old.wait_for_log("took back", 5s)) << old.log();
    // A client the dying process had accepted is lost with it (the one
    // window, docs/upgrade.md); every connect is served, and every client
    // from the rollback on is answered by the old process.
    EXPECT_EQ(load.connect_failed(), 0) << load.last_error();
    EXPECT_LT(load.last_failed(), at_rollback) << load.last_error() << "\n" << old.log();
    std::cout << "[ MEASURED ] rollback in the session phase: " << load.failed() << " of " << load.done()
              << " short connections failed (accepted by the process that died)\n";
    expect_idle_sessions_relay(idle, "after");
    EXPECT_TRUE(old.proc().running());
    idle.clear();
    EXPECT_EQ(old.terminate(), 0);
}

/// A backend that reads its client's first bytes, then nothing until
/// `release` (at most 30 s): its receive buffer fills, and apilb holds
/// bytes it cannot write out. Then it reads to the end and answers with
/// the fnv1a of all it read, in hex, and a FIN.
tcp_server::handler slow_destination(const std::atomic<bool>& release) {
    return [&release](int& fd) {
        char buf[65536];
        std::uint64_t h = fnv1a(nullptr, 0);
        bool first = true;
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            h = fnv1a(buf, static_cast<std::size_t>(n), h);
            if (first) wait_until([&] { return release.load(); }, 30s, 5ms);
            first = false;
        }
        const std::string answer = fmt::format("{:016x}", h);
        (void)::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
        ::shutdown(fd, SHUT_WR);
    };
}

// timeouts.upgrade_quiesce: 4s. The destination takes what apilb holds for
// it only 2 s into the session phase: past the default 1 s, which would
// keep the session with the old process, but within 4 s, so it finishes
// writing out and moves.
TEST(UpgradeQuiesce, LongerLimitLetsASlowDestinationFinishAndMove) {
    std::atomic<bool> release{false};
    tcp_server backend{"127.0.0.1", slow_destination(release)};
    temp_dir dir;
    const std::uint16_t port = free_port();
    apilb_process old(
        dir,
        single_pool_config(port, {backend.address()}, "round-robin", 2, "timeouts: {drain: 3s, upgrade_quiesce: 4s}\n"),
        "127.0.0.1", port);
    const std::string payload = random_bytes(16u << 20, 77);
    stalling_upload upload(port, payload);
    struct release_at_exit {
        std::atomic<bool>& r;
        ~release_at_exit() { r = true; }
    } unblock{release};  // destroyed before `upload`, whose sends then end
    ASSERT_TRUE(upload.connected());
    ASSERT_TRUE(upload.wait_stalled());
    ASSERT_LT(upload.sent(), payload.size()) << "the backend's buffers took all of it";
    old.proc().signal(SIGUSR2);
    ASSERT_TRUE(old.wait_for_log("upgrade: ready sent to the old process", 60s)) << old.log();
    // The scenario, not a wait for a condition: the destination is slow.
    std::this_thread::sleep_for(2s);
    release = true;
    const upgrade_outcome up = wait_for_handover(old);
    ASSERT_NE(up.new_pid, 0) << old.log();
    end_at_exit guard{{up.new_pid}};
    std::cout << "[ MEASURED ] session phase with a destination slow by 2 s: " << up.phase_ms << " ms\n";
    EXPECT_EQ(up.handed, 1) << up.log;
    EXPECT_EQ(up.kept, 0) << up.log;
    EXPECT_EQ(old.proc().wait(20s), 0) << old.log();
    upload.join();
    int end_errno = -1;
    const std::string answer = upload.conn().recv_until_eof(end_errno);
    EXPECT_EQ(end_errno, 0) << "the session did not end with a clean FIN";
    EXPECT_EQ(answer, fmt::format("{:016x}", fnv1a(payload.data(), payload.size()))) << "bytes lost or doubled";
    end_by_pid(up.new_pid);
    expect_no_sanitizer_report(old.log(), "apilb (new)");
}

}  // namespace
}  // namespace apilb::test
