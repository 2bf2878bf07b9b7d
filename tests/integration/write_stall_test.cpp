// Clients that never read: what one session may hold in kernel buffers is
// bounded (tcp.socket_buffer), and a session whose writes make no progress
// for timeouts.write_stall is reset and counted, while a client that reads
// slowly keeps its session. Through the real binary; kernel memory is read
// from the sockets' own accounting (ss -tm).
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstring>
#include <regex>
#include <sstream>

#include "harness.hpp"

namespace apilb::test {
namespace {

using steady = std::chrono::steady_clock;

/// A backend that, on every connection, reads the request, sends `total`
/// bytes as fast as the connection takes them, then FIN, and waits for the
/// client's end; records how each send loop ended.
class flood_backend {
public:
    flood_backend(const std::string& ip, std::uint64_t total, int sndbuf = 0)
        : server_(ip, [this, total, sndbuf](int& fd) {
              timeval tv{30, 0};
              ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
              ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
              char request[64];
              if (::recv(fd, request, sizeof request, 0) <= 0) return;
              // Keeps the test's own side small when many connections wait.
              if (sndbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
              static const std::string chunk = random_bytes(64 * 1024, 5);
              std::uint64_t sent = 0;
              int err = 0;
              while (sent < total) {
                  const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), total - sent));
                  const ssize_t n = ::send(fd, chunk.data(), len, MSG_NOSIGNAL);
                  if (n <= 0) {
                      err = n < 0 ? errno : EPIPE;
                      break;
                  }
                  sent += static_cast<std::uint64_t>(n);
              }
              errors_.add(err);
              if (err != 0) return;
              // A close with the request unread would be a reset.
              ::shutdown(fd, SHUT_WR);
              while (::recv(fd, request, sizeof request, 0) > 0) {}
          }) {}
    std::uint16_t port() const { return server_.port(); }
    std::string address() const { return server_.address(); }
    /// How the send loops ended, once `n` have (bounded wait).
    std::vector<int> errors(std::size_t n) { return errors_.wait_for(n); }

private:
    recorder<int> errors_;
    tcp_server server_;
};

/// A GET of the admin endpoint with curl; the body.
std::string admin_get(std::uint16_t admin_port, const std::string& path) {
    const auto r = run_command(
        {"/usr/bin/curl", "-sS", "--max-time", "5", fmt::format("http://127.0.0.1:{}{}", admin_port, path)});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
}

class WriteStall : public ::testing::TestWithParam<std::string> {
protected:
    void start(const std::string& backend, const std::string& top) {
        apilb_.emplace(dir_,
                       single_pool_config(port_, {backend}, "round-robin", 2,
                                          fmt::format("relay: {{mode: {}}}\nadmin:\n  address: \"127.0.0.1:{}\"\n{}",
                                                      GetParam(), admin_port_, top)),
                       "127.0.0.1", port_);
    }
    void TearDown() override {
        if (apilb_ && HasFailure()) std::cerr << "apilb log:\n" << apilb_->log() << '\n';
    }

    temp_dir dir_;
    const std::uint16_t port_ = free_port();
    const std::uint16_t admin_port_ = free_port();
    std::optional<apilb_process> apilb_;
};

TEST_P(WriteStall, AClientThatNeverReadsIsResetAndCounted) {
    flood_backend backend("127.0.0.2", 256ull << 20);
    start(backend.address(), "timeouts: {write_stall: 1s}\n");
    client c;
    ASSERT_EQ(c.connect("127.0.0.1", port_), 0);
    ASSERT_TRUE(c.send_all("GET /huge"));
    // The client reads nothing; its window closes and apilb's writes stop.
    ASSERT_TRUE(apilb_->wait_for_log("end=write-stalled", 15s));
    // What it had taken is still there to read, then the reset: not a clean end.
    c.set_timeout(5s);
    int end = -1;
    const std::string got = c.recv_until_eof(end, 256u << 20);
    EXPECT_EQ(end, ECONNRESET) << (end == 0 ? "a clean end" : strerror(end)) << " after " << got.size() << " bytes";
    EXPECT_LT(got.size(), 256u << 20);
    const auto errs = backend.errors(1);
    ASSERT_EQ(errs.size(), 1u);
    EXPECT_TRUE(errs[0] == ECONNRESET || errs[0] == EPIPE) << "the backend saw " << strerror(errs[0]);
    EXPECT_NE(admin_get(admin_port_, "/metrics").find("apilb_sessions_closed_total{reason=\"write_stall\"} 1"),
              std::string::npos);
    EXPECT_NE(admin_get(admin_port_, "/api/v1/status").find("\"write_stall\":1"), std::string::npos);
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
    EXPECT_TRUE(apilb_->wait_for_log("1 reset because a peer stopped taking data"));
}

TEST_P(WriteStall, AClientThatReadsSlowlyKeepsItsSession) {
    // 2 MiB read 128 KiB at a time with a pause between: the whole transfer
    // takes longer than write_stall, but no write waits that long.
    constexpr std::uint64_t total = 2ull << 20;
    flood_backend backend("127.0.0.2", total);
    start(backend.address(), "timeouts: {write_stall: 2s}\n");
    client c;
    ASSERT_TRUE(c.open());
    const int small = 64 * 1024;
    ::setsockopt(c.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    ASSERT_EQ(c.connect("127.0.0.1", port_), 0);
    ASSERT_TRUE(c.send_all("GET /big"));
    c.set_timeout(10s);
    const auto t0 = steady::now();
    std::uint64_t got = 0;
    int end = -1;
    std::vector<char> buf(128 * 1024);
    while (end < 0) {
        std::size_t taken = 0;
        while (taken < buf.size()) {
            const long n = c.recv_some(buf.data(), buf.size() - taken);
            if (n <= 0) {
                end = n == 0 ? 0 : static_cast<int>(-n);
                break;
            }
            taken += static_cast<std::size_t>(n);
        }
        got += taken;
        if (end < 0) std::this_thread::sleep_for(200ms);
    }
    const auto took = steady::now() - t0;
    EXPECT_EQ(end, 0) << strerror(end);
    EXPECT_EQ(got, total);
    EXPECT_GT(took, 2s) << "the transfer was not slower than write_stall: the test proves nothing";
    c.close();
    EXPECT_NE(admin_get(admin_port_, "/metrics").find("apilb_sessions_closed_total{reason=\"write_stall\"} 0"),
              std::string::npos);
    EXPECT_EQ(apilb_->terminate(), std::optional<int>(0));
    EXPECT_EQ(apilb_->log().find("write-stalled"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(BothRelays, WriteStall, ::testing::Values("splice", "copy"),
                         [](const auto& info) { return info.param; });

/// Kernel memory of the sockets `ss` selects with `filter`: the sum of each
/// socket's receive queue (skmem r) and send queue (skmem w), and the count.
struct socket_memory {
    std::uint64_t bytes = 0;
    std::size_t sockets = 0;
};
socket_memory measure(const std::string& filter) {
    const auto r = run_command({"/usr/bin/ss", "-tmnH", "state", "established", filter});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    socket_memory m;
    static const std::regex skmem(R"(skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+))");
    for (auto it = std::sregex_iterator(r.output.begin(), r.output.end(), skmem); it != std::sregex_iterator(); ++it) {
        m.bytes += std::stoull((*it)[1]) + std::stoull((*it)[2]);
        ++m.sockets;
    }
    return m;
}

TEST(SocketBuffer, ClientsThatNeverReadHoldABoundedAmountEach) {
    // 200 clients each ask for far more than buffers hold and read nothing.
    // Each session's two sockets in apilb may then hold the upstream receive
    // buffer (socket_buffer) and the unsent client queue (socket_buffer plus
    // the last write, at most a pipe of 64 KiB): about 2 x socket_buffer.
    constexpr int clients = 200;
    constexpr std::uint64_t socket_buffer = 256 * 1024;
    flood_backend backend("127.0.0.2", 64ull << 20, 64 * 1024);
    temp_dir dir;
    const auto port = free_port();
    apilb_process apilb(dir,
                        single_pool_config(port, {backend.address()}, "round-robin", 2,
                                           fmt::format("tcp: {{socket_buffer: {}}}\n"
                                                       "timeouts: {{write_stall: 0, drain: 1s}}\n",
                                                       socket_buffer)),
                        "127.0.0.1", port);
    std::vector<client> cs(clients);
    for (auto& c : cs) {
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        ASSERT_TRUE(c.send_all("GET /huge"));
    }
    const std::string filter = fmt::format("( sport = :{} or dport = :{} )", port, backend.port());
    // Wait until the buffers are full: the total stops growing (bounded).
    socket_memory m, last;
    const auto deadline = steady::now() + 20s;
    while (steady::now() < deadline) {
        std::this_thread::sleep_for(500ms);
        m = measure(filter);
        if (m.sockets == 2 * clients && last.bytes > 0 && m.bytes <= last.bytes + last.bytes / 100) break;
        last = m;
    }
    ASSERT_EQ(m.sockets, 2u * clients) << "not every session is established";
    const std::uint64_t per_session = m.bytes / clients;
    std::cout << fmt::format(
        "[ MEASURE ] {} sessions whose clients never read: apilb's sockets hold {} KiB in all, "
        "{} KiB per session (tcp.socket_buffer {} KiB)\n",
        clients, m.bytes / 1024, per_session / 1024, socket_buffer / 1024);
    EXPECT_GT(per_session, socket_buffer / 2) << "the buffers never filled: the test proves nothing";
    EXPECT_LE(per_session, 2 * socket_buffer + 128 * 1024);
    cs.clear();
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0));
}

}  // namespace
}  // namespace apilb::test
