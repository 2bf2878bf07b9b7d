// The relay through the real apilb binary, run once per relay implementation
// (splice and copy): bytes arrive untouched, half-close and resets cross over.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <future>
#include <mutex>

#include "../io_uring_host.hpp"
#include "harness.hpp"

namespace apilb::test {
namespace {

std::string relay_config(const std::string& mode, std::uint16_t port, const std::vector<std::string>& backends,
                         const std::string& extra = {}) {
    return single_pool_config(port, backends, "round-robin", 2, "relay: {mode: " + mode + "}\n" + extra);
}

class Relay : public ::testing::TestWithParam<std::string> {
protected:
    void start(const std::vector<std::string>& backends, const std::string& extra = {}) {
        port_ = free_port();
        apilb_ = std::make_unique<apilb_process>(dir_, relay_config(GetParam(), port_, backends, extra), "127.0.0.1",
                                                 port_);
    }
    void TearDown() override {
        if (apilb_) {
            auto code = apilb_->terminate();
            EXPECT_EQ(code, std::optional<int>(0)) << apilb_->log();
            if (HasFailure()) std::cerr << "apilb log:\n" << apilb_->log() << '\n';
        }
    }
    client connect() {
        client c;
        EXPECT_EQ(c.connect("127.0.0.1", port_), 0);
        return c;
    }

    temp_dir dir_;
    std::uint16_t port_ = 0;
    std::unique_ptr<apilb_process> apilb_;
};

/// Sends `payload` and reads the echo at the same time; checks it byte for byte.
void echo_round_trip(client& c, const std::string& payload) {
    auto sender = std::async(std::launch::async, [&] {
        const bool ok = c.send_all(payload);
        c.shutdown_write();
        return ok;
    });
    int end = -1;
    const std::string got = c.recv_until_eof(end, payload.size() + 1);
    EXPECT_TRUE(sender.get());
    EXPECT_EQ(end, 0) << strerror(end);
    ASSERT_EQ(got.size(), payload.size());
    EXPECT_EQ(fnv1a(got.data(), got.size()), fnv1a(payload.data(), payload.size()));
}

TEST_P(Relay, PayloadsOfEverySizeArriveUntouchedBothWays) {
    tcp_server echo("127.0.0.2", echo_handler());
    start({echo.address()});
    std::uint32_t seed = 1;
    for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{64} << 10, std::size_t{64} << 20}) {
        SCOPED_TRACE(fmt::format("payload {} bytes", size));
        auto c = connect();
        echo_round_trip(c, random_bytes(size, seed++));
    }
}

TEST_P(Relay, ClientHalfCloseStillGetsTheReply) {
    // The backend answers only after the client's FIN, as a request body ended by EOF would.
    std::atomic<std::uint64_t> hash_seen{0};
    tcp_server backend("127.0.0.2", [&](int& fd) {
        std::string got;
        char buf[4096];
        ssize_t n;
        while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<std::size_t>(n));
        hash_seen = fnv1a(got.data(), got.size());
        const std::string reply = "got " + std::to_string(got.size()) + " bytes";
        ::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
    });
    start({backend.address()});
    auto c = connect();
    const std::string request = random_bytes(100000, 7);
    ASSERT_TRUE(c.send_all(request));
    c.shutdown_write();
    int end = -1;
    EXPECT_EQ(c.recv_until_eof(end), "got 100000 bytes");
    EXPECT_EQ(end, 0);
    EXPECT_EQ(hash_seen.load(), fnv1a(request.data(), request.size()));
}

TEST_P(Relay, BackendHalfCloseLetsTheClientKeepSending) {
    std::promise<std::string> received;
    tcp_server backend("127.0.0.2", [&](int& fd) {
        ::send(fd, "hello", 5, MSG_NOSIGNAL);
        ::shutdown(fd, SHUT_WR);
        std::string got;
        char buf[4096];
        ssize_t n;
        while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<std::size_t>(n));
        received.set_value(got);
    });
    start({backend.address()});
    auto c = connect();
    int end = -1;
    EXPECT_EQ(c.recv_until_eof(end), "hello");
    EXPECT_EQ(end, 0);
    // After the backend's FIN the client's direction is still open.
    const std::string late = random_bytes(300000, 9);
    ASSERT_TRUE(c.send_all(late));
    c.shutdown_write();
    auto fut = received.get_future();
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    const std::string got = fut.get();
    EXPECT_EQ(got.size(), late.size());
    EXPECT_EQ(fnv1a(got.data(), got.size()), fnv1a(late.data(), late.size()));
}

TEST_P(Relay, BackendResetReachesTheClientAsReset) {
    tcp_server backend("127.0.0.2", [&](int& fd) {
        char buf[16];
        ::recv(fd, buf, sizeof buf, 0);
        linger l{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        ::close(fd);
        fd = -1;
    });
    start({backend.address()});
    auto c = connect();
    ASSERT_TRUE(c.send_all("ping"));
    int end = -1;
    c.recv_until_eof(end);
    EXPECT_EQ(end, ECONNRESET) << "a reset must not become a clean EOF: " << strerror(end);
}

TEST_P(Relay, ClientResetReachesTheBackendAsReset) {
    std::promise<int> backend_end;
    tcp_server backend("127.0.0.2", [&](int& fd) {
        timeval tv{10, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[4096];
        ssize_t n;
        while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {}
        backend_end.set_value(n == 0 ? 0 : errno);
    });
    start({backend.address()});
    auto c = connect();
    ASSERT_TRUE(c.send_all("some request"));
    std::this_thread::sleep_for(100ms);
    c.reset();
    auto fut = backend_end.get_future();
    ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(fut.get(), ECONNRESET);
}

TEST_P(Relay, ManyConcurrentConnectionsEachGetTheirOwnBytes) {
    tcp_server echo1("127.0.0.2", echo_handler());
    tcp_server echo2("127.0.0.3", echo_handler());
    start({echo1.address(), echo2.address()});
    constexpr int connections = 400;
    std::vector<client> clients(connections);
    for (int i = 0; i < connections; ++i) ASSERT_EQ(clients[i].connect("127.0.0.1", port_), 0) << i;
    // Every connection is open at once before any finishes.
    for (int i = 0; i < connections; ++i) {
        const std::string msg = random_bytes(4096, 1000 + i);
        ASSERT_TRUE(clients[i].send_all(msg));
    }
    int ok = 0;
    for (int i = 0; i < connections; ++i) {
        const std::string expect = random_bytes(4096, 1000 + i);
        if (clients[i].recv_exact(expect.size()) == expect) ++ok;
    }
    EXPECT_EQ(ok, connections);
    // Round-robin over two backends.
    EXPECT_EQ(echo1.accepted() + echo2.accepted(), connections);
    EXPECT_NEAR(echo1.accepted(), connections / 2, connections / 10);
}

TEST_P(Relay, IdleTimeoutResetsASilentSession) {
    tcp_server echo("127.0.0.2", echo_handler());
    start({echo.address()}, "timeouts: {idle: 1s}\n");
    auto c = connect();
    ASSERT_TRUE(c.send_all("x"));
    EXPECT_EQ(c.recv_exact(1), "x");
    const auto t0 = std::chrono::steady_clock::now();
    int end = -1;
    c.recv_until_eof(end);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(end, ECONNRESET) << "a close apilb starts is a reset, never a clean end: " << strerror(end);
    EXPECT_GE(waited, 900ms);
    EXPECT_LT(waited, 5s);
    EXPECT_TRUE(apilb_->wait_for_log("end=idle-timeout"));
}

INSTANTIATE_TEST_SUITE_P(BothRelays, Relay, ::testing::Values("splice", "copy"),
                         [](const auto& info) { return info.param; });

// relay.io, the engine chosen at start: on this host, which has io_uring,
// and under a seccomp filter that refuses it as container runtimes' default
// profiles do (APILB_WITHOUT_IO_URING runs apilb so).
std::string io_config(const std::string& io, std::uint16_t port, const std::string& backend) {
    return single_pool_config(port, {backend}, "round-robin", 1, "relay: {mode: copy, io: " + io + "}\n");
}

void small_and_bulk_round_trips(std::uint16_t port) {
    for (std::size_t size : {std::size_t{1}, std::size_t{4} << 20}) {
        SCOPED_TRACE(fmt::format("payload {} bytes", size));
        client c;
        ASSERT_EQ(c.connect("127.0.0.1", port), 0);
        echo_round_trip(c, random_bytes(size, static_cast<std::uint32_t>(size)));
    }
}

TEST(RelayIo, IoUringCarriesTheBytesAndTheStartLineSaysSo) {
    APILB_SKIP_WITHOUT_IO_URING();
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const std::uint16_t port = free_port();
    apilb_process apilb(dir, io_config("io_uring", port, echo.address()), "127.0.0.1", port);
    EXPECT_TRUE(apilb.wait_for_log("relay copy through io_uring,")) << apilb.log();
    small_and_bulk_round_trips(port);
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0)) << apilb.log();
}

TEST(RelayIo, TheTestSetupsEngineIsTheOneApilbRuns) {
    // `meson test --setup io_uring` runs every apilb the harness starts
    // through io_uring (with_test_relay_io); the default setup, on epoll.
    for (const std::string relay : {"relay: {mode: copy}\n", "relay:\n  mode: copy\n", ""}) {
        SCOPED_TRACE(relay);
        temp_dir dir;
        const std::uint16_t port = free_port();
        apilb_process apilb(dir, single_pool_config(port, {"127.0.0.2:1"}, "round-robin", 1, relay), "127.0.0.1", port);
        const std::string engine = test_relay_io() == "io_uring" ? "io_uring," : "epoll,";
        EXPECT_TRUE(apilb.wait_for_log(" through " + engine)) << apilb.log();
        EXPECT_EQ(apilb.terminate(), std::optional<int>(0)) << apilb.log();
    }
}

TEST(RelayIo, AutoWhereSeccompRefusesIoUringRunsOnEpollAndSaysWhy) {
    tcp_server echo("127.0.0.2", echo_handler());
    temp_dir dir;
    const std::uint16_t port = free_port();
    apilb_process apilb(dir, io_config("auto", port, echo.address()), "127.0.0.1", port, {},
                        {required_env("APILB_WITHOUT_IO_URING")});
    EXPECT_TRUE(
        apilb.wait_for_log("relay copy through epoll (io_uring unavailable: io_uring_setup with "
                           "SINGLE_ISSUER|DEFER_TASKRUN failed: Operation not permitted),"))
        << apilb.log();
    small_and_bulk_round_trips(port);
    EXPECT_EQ(apilb.terminate(), std::optional<int>(0)) << apilb.log();
}

TEST(RelayIo, IoUringWhereSeccompRefusesItIsAConfigErrorAtStartNamingTheKey) {
    temp_dir dir;
    const std::uint16_t port = free_port();
    dir.write("apilb.yaml", io_config("io_uring", port, "127.0.0.2:1"));
    const auto r = run_command(
        {required_env("APILB_WITHOUT_IO_URING"), required_env("APILB_BIN"), "run", "--config", dir.file("apilb.yaml")},
        30s);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(dir.file("apilb.yaml") + ":"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(": relay.io: io_uring was asked for but this host does not give it: io_uring_setup"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("apilb started"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace apilb::test
