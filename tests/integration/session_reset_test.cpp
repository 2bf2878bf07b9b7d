// Every close that apilb starts on an established session reaches both peers
// as a reset, never as a clean end of stream: a download cut at 29.9 of 30 MB
// must not look complete, and neither must an upload. Each reason apilb has
// to cut a session (idle timeout, drain deadline, unhealthy backend, reload
// removal, rebalancing) cuts long paced transfers in both directions through
// the real binary; a transfer that ends normally still ends with FIN.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <csignal>
#include <cstring>

#include "harness.hpp"

namespace apilb::test {
namespace {

using steady = std::chrono::steady_clock;

/// Bytes per paced write, and the pause after each (at most ~16 MB/s).
constexpr std::size_t piece = 64 * 1024;
constexpr auto pace = 4ms;

/// How one side of a one-way transfer ended.
struct side_end {
    std::uint64_t bytes = 0;
    int err = -1;  ///< 0: a clean end (FIN); else the errno that ended it
    bool reset() const { return err == ECONNRESET || err == EPIPE; }
};

/// Sends `total` bytes in paced pieces, stopping after `pause_after` bytes to
/// wait for the peer to end (bounded by the socket's timeout). 0 on success.
int send_paced(int fd, std::uint64_t total, std::uint64_t pause_after, std::uint64_t& sent) {
    static const std::string chunk = random_bytes(piece, 3);
    while (sent < total) {
        if (sent >= pause_after) {
            char b;
            const ssize_t n = ::recv(fd, &b, 1, 0);
            return n == 0 ? 0 : n < 0 ? errno : EPROTO;
        }
        const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(piece, total - sent));
        const ssize_t n = ::send(fd, chunk.data(), len, MSG_NOSIGNAL);
        if (n <= 0) return n < 0 ? errno : EPIPE;
        sent += static_cast<std::uint64_t>(n);
        std::this_thread::sleep_for(pace);
    }
    return 0;
}

/// Reads until the end; how it ended.
side_end read_to_end(int fd) {
    side_end e;
    char buf[65536];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            e.bytes += static_cast<std::uint64_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        e.err = n == 0 ? 0 : errno;
        return e;
    }
}

void set_timeouts(int fd, std::chrono::seconds t) {
    timeval tv{static_cast<time_t>(t.count()), 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/// A backend for one-way transfers. The client's first byte picks the way:
/// 'D' (download) makes the backend send `total` paced bytes, then FIN, then
/// wait for the client's end; 'U' (upload) makes it read until the end. How
/// the backend's side ended is recorded per connection.
class transfer_backend {
public:
    transfer_backend(const std::string& ip, std::uint64_t total, std::uint64_t pause_after)
        : server_(ip, [this, total, pause_after](int& fd) {
              set_timeouts(fd, 20s);
              char way = 0;
              if (::recv(fd, &way, 1, 0) != 1) return;
              side_end e;
              if (way == 'D') {
                  e.err = send_paced(fd, total, pause_after, e.bytes);
                  if (e.err == 0 && e.bytes == total) {
                      ::shutdown(fd, SHUT_WR);
                      e.err = read_to_end(fd).err;
                  }
              } else {
                  e = read_to_end(fd);
                  if (e.err == 0) ::send(fd, "OK", 2, MSG_NOSIGNAL);
              }
              ends_.add(e);
          }) {}
    std::string address() const { return server_.address(); }
    tcp_server& server() { return server_; }
    /// The ends recorded so far, once `n` connections have ended (bounded wait).
    std::vector<side_end> ends(std::size_t n) { return ends_.wait_for(n); }

private:
    recorder<side_end> ends_;
    tcp_server server_;
};

/// One transfer through apilb, run on its own thread from start().
class transfer {
public:
    transfer(bool download, std::uint64_t total, std::uint64_t pause_after)
        : download_(download), total_(total), pause_after_(pause_after) {}
    ~transfer() {
        if (thread_.joinable()) thread_.join();
    }
    bool start(std::uint16_t port) {
        if (c_.connect("127.0.0.1", port) != 0) return false;
        set_timeouts(c_.fd(), 20s);
        if (!c_.send_all(download_ ? "D" : "U")) return false;
        thread_ = std::thread([this] { run(); });
        return true;
    }
    /// How the client's side ended (waits for it).
    side_end end() {
        if (thread_.joinable()) thread_.join();
        return end_;
    }
    bool download() const { return download_; }

private:
    void run() {
        if (download_) {
            end_ = read_to_end(c_.fd());
            if (end_.err == 0) c_.shutdown_write();
            return;
        }
        end_.err = send_paced(c_.fd(), total_, pause_after_, end_.bytes);
        if (end_.err != 0 || end_.bytes < total_) return;
        c_.shutdown_write();
        const side_end answer = read_to_end(c_.fd());
        end_.err = answer.bytes == 2 ? answer.err : EPROTO;
    }

    bool download_;
    std::uint64_t total_;
    std::uint64_t pause_after_;
    client c_;
    std::thread thread_;
    side_end end_;
};

constexpr std::uint64_t long_transfer = 48ull << 20;  // at least 3 s at the pace above
constexpr std::uint64_t no_pause = ~0ull;

/// The config of these tests: pool p over `backends` (b0, b1, ...) with the
/// pool settings `pool_extra` (indented YAML lines), and top-level `extra`.
std::string reset_config(std::uint16_t port, const std::vector<std::string>& backends,
                         const std::string& pool_extra = {}, const std::string& extra = {},
                         const std::string& backend_extra = {}) {
    std::string b;
    for (std::size_t i = 0; i < backends.size(); ++i) {
        b += fmt::format("      - {{name: b{}, address: \"{}\"{}}}\n", i, backends[i], i == 1 ? backend_extra : "");
    }
    return fmt::format(
        "workers: 2\nlisteners:\n  - {{name: front, address: \"127.0.0.1:{}\", pool: p}}\n"
        "pools:\n  - name: p\n    balance: least-connections\n    backends:\n{}{}"
        "log: {{level: debug}}\n{}",
        port, b, pool_extra, extra);
}

/// How many of `ends` were cut (a reset, short of the whole transfer); the
/// others must have ended cleanly with every byte.
int count_cut(const std::vector<side_end>& ends, const char* who) {
    int cut = 0;
    for (const side_end& e : ends) {
        SCOPED_TRACE(who);
        if (e.reset()) {
            ++cut;
            EXPECT_LT(e.bytes, long_transfer);
        } else {
            EXPECT_EQ(e.err, 0) << strerror(e.err);
            EXPECT_EQ(e.bytes, long_transfer) << "a clean end must mean every byte";
        }
    }
    return cut;
}

class SessionReset : public ::testing::Test {
protected:
    void start(const std::string& yaml) { apilb_.emplace(dir_, yaml, "127.0.0.1", port_); }
    /// `n` transfers through apilb, downloads and uploads in turn.
    void start_both_ways(std::uint64_t total = long_transfer, std::uint64_t pause_after = no_pause, int n = 2) {
        for (int i = 0; i < n; ++i) {
            transfers_.push_back(std::make_unique<transfer>(i % 2 == 0, total, pause_after));
            ASSERT_TRUE(transfers_.back()->start(port_));
        }
    }
    /// How every transfer's client side ended (waits for them).
    std::vector<side_end> client_ends() {
        std::vector<side_end> ends;
        for (auto& t : transfers_) ends.push_back(t->end());
        return ends;
    }
    /// Every transfer was cut mid-way and both of its peers saw a reset.
    void expect_all_reset(transfer_backend& backend) {
        for (auto& t : transfers_) {
            const side_end c = t->end();
            SCOPED_TRACE(t->download() ? "download" : "upload");
            EXPECT_TRUE(c.reset()) << "the client saw " << (c.err == 0 ? "a clean end" : strerror(c.err)) << " after "
                                   << c.bytes << " bytes: a cut stream must not look complete";
            EXPECT_LT(c.bytes, long_transfer) << "the cut came after the end";
        }
        const auto ends = backend.ends(transfers_.size());
        ASSERT_EQ(ends.size(), transfers_.size());
        for (const auto& e : ends) {
            EXPECT_TRUE(e.reset()) << "the backend saw " << (e.err == 0 ? "a clean end" : strerror(e.err)) << " after "
                                   << e.bytes << " bytes";
        }
    }
    void TearDown() override {
        transfers_.clear();
        if (apilb_ && HasFailure()) std::cerr << "apilb log:\n" << apilb_->log() << '\n';
    }

    temp_dir dir_;
    const std::uint16_t port_ = free_port();
    std::optional<apilb_process> apilb_;
    std::vector<std::unique_ptr<transfer>> transfers_;
};

TEST_F(SessionReset, ACompleteTransferStillEndsWithFinAndEveryByte) {
    constexpr std::uint64_t total = 8ull << 20;
    transfer_backend backend("127.0.0.2", total, no_pause);
    start(reset_config(port_, {backend.address()}));
    start_both_ways(total);
    for (auto& t : transfers_) {
        const side_end c = t->end();
        SCOPED_TRACE(t->download() ? "download" : "upload");
        EXPECT_EQ(c.err, 0) << strerror(c.err);
        EXPECT_EQ(c.bytes, total);
    }
    for (const auto& e : backend.ends(2)) {
        EXPECT_EQ(e.err, 0) << strerror(e.err);
        EXPECT_EQ(e.bytes, total);
    }
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
}

TEST_F(SessionReset, IdleTimeoutResetsBothPeers) {
    // Both ways stop half-way and stay silent: the idle timeout cuts them.
    transfer_backend backend("127.0.0.2", long_transfer, 2 << 20);
    start(reset_config(port_, {backend.address()}, "", "timeouts: {idle: 1s}\n"));
    start_both_ways(long_transfer, 2 << 20);
    expect_all_reset(backend);
    EXPECT_TRUE(apilb_->wait_for_log("end=idle-timeout"));
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
}

TEST_F(SessionReset, DrainDeadlineResetsBothPeers) {
    transfer_backend backend("127.0.0.2", long_transfer, no_pause);
    start(reset_config(port_, {backend.address()}, "", "timeouts: {drain: 1s}\n"));
    start_both_ways();
    std::this_thread::sleep_for(300ms);  // under way; the drain deadline cuts them a second later
    apilb_->proc().signal(SIGTERM);
    expect_all_reset(backend);
    EXPECT_EQ(apilb_->proc().wait(10s), std::optional<int>(0));
}

TEST_F(SessionReset, AnUnhealthyBackendsSessionsAreResetAfterTheGrace) {
    // Transfers spread over b0 and b1; b0's listener goes away (its probes
    // are refused) while its transfers go on, until apilb cuts them. b1's
    // transfers finish with every byte.
    transfer_backend b0("127.0.0.2", long_transfer, no_pause);
    transfer_backend b1("127.0.0.3", long_transfer, no_pause);
    start(reset_config(port_, {b0.address(), b1.address()},
                       "    health: {type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1, "
                       "close_sessions_after: 0s}\n"));
    start_both_ways(long_transfer, no_pause, 4);
    std::this_thread::sleep_for(300ms);
    b0.server().stop();
    const int cut = count_cut(client_ends(), "client");
    EXPECT_GE(cut, 1);
    // (b0's accept count includes the probes' connections: count its ends.)
    const auto on_b0 = b0.ends(static_cast<std::size_t>(cut));
    EXPECT_EQ(on_b0.size(), static_cast<std::size_t>(cut));
    EXPECT_EQ(count_cut(on_b0, "b0"), cut);
    EXPECT_EQ(count_cut(b1.ends(transfers_.size() - on_b0.size()), "b1"), 0);
    EXPECT_TRUE(apilb_->wait_for_log("end=backend-unhealthy"));
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
}

TEST_F(SessionReset, AReloadThatRemovesTheBackendResetsItsSessions) {
    transfer_backend backend("127.0.0.2", long_transfer, no_pause);
    tcp_server other("127.0.0.3", echo_handler());
    const std::string top = "timeouts: {reload_drain: 0s}\n";
    start(reset_config(port_, {backend.address()}, "", top));
    start_both_ways();
    std::this_thread::sleep_for(300ms);
    dir_.write("apilb.yaml", reset_config(port_, {other.address()}, "", top));
    apilb_->proc().signal(SIGHUP);
    expect_all_reset(backend);
    EXPECT_TRUE(apilb_->wait_for_log("end=backend-removed"));
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
}

TEST_F(SessionReset, RebalancingResetsTheSessionsItMoves) {
    // All sessions start on b0 while b1 is drained; once b1 takes sessions
    // again, rebalancing moves about half of them: those it cuts see a
    // reset, the others finish with every byte.
    transfer_backend b0("127.0.0.2", long_transfer, no_pause);
    tcp_server b1("127.0.0.3", echo_handler());
    const std::string pool = "    rebalance: {enabled: true, max_closes_per_second: 10, tolerance: 0.2}\n";
    start(reset_config(port_, {b0.address(), b1.address()}, pool, "", ", drain: true"));
    start_both_ways(long_transfer, no_pause, 6);
    std::this_thread::sleep_for(300ms);
    dir_.write("apilb.yaml", reset_config(port_, {b0.address(), b1.address()}, pool));
    apilb_->proc().signal(SIGHUP);
    const int cut = count_cut(client_ends(), "client");
    EXPECT_GE(cut, 1);
    EXPECT_EQ(count_cut(b0.ends(transfers_.size()), "backend"), cut);
    EXPECT_TRUE(apilb_->wait_for_log("end=rebalanced"));
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
