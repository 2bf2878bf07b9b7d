#include "apilb/dataplane/relay.hpp"

#include <sys/ioctl.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include "../io_uring_host.hpp"

/// recv calls on one descriptor (`counted_fd`), made by the relay under test.
std::atomic<int> counted_fd{-1};
std::atomic<int> counted_recvs{0};

// Interposed for the whole test binary (Asio reads with recvmsg); forwards
// to the kernel.
extern "C" ssize_t recv(int fd, void* buf, size_t len, int flags) {
    if (fd == counted_fd.load(std::memory_order_relaxed)) counted_recvs.fetch_add(1, std::memory_order_relaxed);
    return ::syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
}

namespace apilb {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

TEST(PipePool, ReusesEmptyPipes) {
    pipe_pool pool(0);
    boost::system::error_code ec;
    auto a = pool.acquire(ec);
    ASSERT_FALSE(ec);
    EXPECT_EQ(pool.in_use(), 1u);
    pool.release(a, true);
    EXPECT_EQ(pool.idle(), 1u);
    auto b = pool.acquire(ec);
    EXPECT_EQ(b.read_fd, a.read_fd);
    EXPECT_EQ(b.write_fd, a.write_fd);
    pool.release(b, true);
}

TEST(PipePool, ClosesPipesThatMayHoldBytes) {
    pipe_pool pool(0);
    boost::system::error_code ec;
    auto a = pool.acquire(ec);
    ASSERT_EQ(::write(a.write_fd, "x", 1), 1);
    pool.release(a, false);
    EXPECT_EQ(pool.idle(), 0u);
    EXPECT_FALSE(fd_open(a.read_fd));
    EXPECT_FALSE(fd_open(a.write_fd));
}

TEST(PipePool, IdleListIsBounded) {
    pipe_pool pool(0, 2);
    boost::system::error_code ec;
    std::vector<pipe_pair> pipes;
    for (int i = 0; i < 5; ++i) pipes.push_back(pool.acquire(ec));
    for (auto& p : pipes) pool.release(p, true);
    EXPECT_EQ(pool.idle(), 2u);
    EXPECT_EQ(pool.in_use(), 0u);
}

TEST(BufferPool, ReusesBuffers) {
    buffer_pool pool(4096, 1);
    auto a = pool.acquire();
    auto* raw = a.get();
    pool.release(std::move(a));
    EXPECT_EQ(pool.acquire().get(), raw);
}

/// Connects a session's two legs through `acc`: client_peer to the first
/// descriptor returned, the second to upstream_peer; both non-blocking.
std::pair<int, int> connect_leg_fds(tcp::acceptor& acc, tcp::socket& client_peer, tcp::socket& upstream_peer) {
    auto& io = static_cast<asio::io_context&>(acc.get_executor().context());
    tcp::socket a{io}, c{io};
    client_peer.connect(acc.local_endpoint());
    acc.accept(a);
    c.connect(acc.local_endpoint());
    acc.accept(upstream_peer);
    a.native_non_blocking(true);
    c.native_non_blocking(true);
    return {a.release(), c.release()};
}

/// connect_leg_fds(), the relay's ends adopted by their poller.
void connect_legs(tcp::acceptor& acc, tcp::socket& client_peer, tcp::socket& upstream_peer, poll_socket& client,
                  poll_socket& upstream) {
    const auto [a, c] = connect_leg_fds(acc, client_peer, upstream_peer);
    EXPECT_FALSE(client.adopt(a));
    EXPECT_FALSE(upstream.adopt(c));
}

/// A session's two legs over loopback: client_peer → client ==relay==> upstream → upstream_peer.
/// The relay's two sockets sit in a poller, as a worker's do.
struct rig {
    poller sockets;
    asio::io_context io;
    tcp::socket client_peer{io}, upstream_peer{io};
    poll_socket client{sockets}, upstream{sockets};
    std::chrono::steady_clock::time_point last{};
    rig() {
        sockets.attach(io);
        tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        connect_legs(acc, client_peer, upstream_peer, client, upstream);
    }
    ~rig() { sockets.detach(); }
    /// Runs the io_context until `done` (the poller keeps it busy forever).
    void run_until(const bool& done) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!done && std::chrono::steady_clock::now() < deadline) io.run_one_for(std::chrono::milliseconds(100));
        ASSERT_TRUE(done) << "the relay did not complete within 10 s";
    }
    /// Runs `rel` as the session does: once it completes, `done` is set and
    /// both sockets are closed (the last FIN is the close, not a shutdown).
    void start(relay& rel, bool& done) {
        rel.async_run([this, &done] {
            done = true;
            client.close();
            upstream.close();
        });
    }
    /// The backend sends `bytes` and its FIN; returns once the FIN is in the
    /// relay's upstream socket (before the relay looks, unless it runs).
    void backend_sends_and_ends(std::string_view bytes) {
        asio::write(upstream_peer, asio::buffer(bytes.data(), bytes.size()));
        upstream_peer.shutdown(tcp::socket::shutdown_send);
        pollfd fin{.fd = upstream.native_handle(), .events = POLLRDHUP, .revents = 0};
        ASSERT_EQ(::poll(&fin, 1, 5000), 1);
    }
    /// A thread that reads the client leg to its end into `into`, then ends
    /// the client's side.
    std::thread client_reads_to_end(std::string& into) {
        return std::thread([this, &into] {
            boost::system::error_code ec;
            asio::read(client_peer, asio::dynamic_buffer(into), ec);
            EXPECT_EQ(ec, asio::error::eof);
            client_peer.shutdown(tcp::socket::shutdown_send);
        });
    }
    /// A blocking write on the client leg, as its owner might after the relay.
    void write_client(std::string_view bytes) {
        ASSERT_EQ(::send(client.native_handle(), bytes.data(), bytes.size(), MSG_NOSIGNAL),
                  static_cast<ssize_t>(bytes.size()));
    }
};

std::string pattern(std::size_t n, int seed) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 7 + seed);
    return s;
}

class Relay : public ::testing::TestWithParam<relay_mode> {
protected:
    relay_resources res{relay_config{.mode = GetParam(), .buffer_size = 4096, .pipe_size = 0}};
};

TEST_P(Relay, CopiesBothWaysAndPassesEachEofOnAsHalfClose) {
    rig r;
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    r.start(rel, done);
    const std::string request = pattern(1 << 20, 3), response = pattern(3 << 20, 5);
    std::string at_backend, at_client;
    // The backend reads the whole request (to the client's half-close) and
    // only then answers: the upstream leg must stay open after the client's EOF.
    std::thread backend([&] {
        boost::system::error_code ec;
        asio::read(r.upstream_peer, asio::dynamic_buffer(at_backend), ec);
        EXPECT_EQ(ec, asio::error::eof);
        asio::write(r.upstream_peer, asio::buffer(response));
        r.upstream_peer.shutdown(tcp::socket::shutdown_send);
    });
    std::thread client([&] {
        asio::write(r.client_peer, asio::buffer(request));
        r.client_peer.shutdown(tcp::socket::shutdown_send);
        boost::system::error_code ec;
        asio::read(r.client_peer, asio::dynamic_buffer(at_client), ec);
        EXPECT_EQ(ec, asio::error::eof);
    });
    r.run_until(done);
    backend.join();
    client.join();
    ASSERT_TRUE(done);
    EXPECT_EQ(rel.to_backend().end, pump_end::eof);
    EXPECT_EQ(rel.from_backend().end, pump_end::eof);
    EXPECT_EQ(rel.to_backend().bytes, request.size());
    EXPECT_EQ(rel.from_backend().bytes, response.size());
    EXPECT_TRUE(at_backend == request);
    EXPECT_TRUE(at_client == response);
    EXPECT_FALSE(rel.backend_failed_early());
    EXPECT_NE(r.last, std::chrono::steady_clock::time_point{});
    // Every borrowed pipe went back to the pool.
    EXPECT_EQ(res.pipes.in_use(), 0u);
}

TEST_P(Relay, ResponseWithItsFinBehindItIsRelayedInOneRead) {
    rig r;
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    r.start(rel, done);
    counted_fd = r.upstream.native_handle();
    counted_recvs = 0;
    // The backend answers and closes (Connection: close) before the relay
    // looks: the read that takes the answer also took the last byte.
    r.backend_sends_and_ends("HTTP/1.1 200 OK\r\n\r\nok\n");
    // The client gets all of it, then the half-close, and ends its side.
    std::string at_client;
    std::thread client = r.client_reads_to_end(at_client);
    r.run_until(done);
    client.join();
    counted_fd = -1;
    EXPECT_EQ(at_client, "HTTP/1.1 200 OK\r\n\r\nok\n");
    EXPECT_EQ(rel.from_backend().end, pump_end::eof);
    EXPECT_EQ(rel.from_backend().bytes, 22u);
    EXPECT_EQ(rel.to_backend().end, pump_end::eof);
    EXPECT_EQ(counted_recvs.load(), 1) << "a read after the one that emptied a finished socket";
}

TEST_P(Relay, BytesAndFinThatComeWhileTheSinkIsFullAreNotTakenForTheEnd) {
    rig r;
    // The client leg full (its peer reads nothing yet), so that the relay's
    // write of the backend's first bytes waits.
    // Both buffers fixed: left to the kernel, the send buffer grows at each
    // ACK to a zero-window probe (tcp_new_space), so a leg found full had
    // room again within a few probes (about 1 run in 6 under load). And
    // loopback moves what was sent into the peer's receive queue after the
    // send returned, late on a loaded machine (softirq work deferred to
    // ksoftirqd): full is when three looks 50 ms apart find no room and the
    // peer's receive queue no longer growing.
    const int fixed = 64 << 10;
    ASSERT_EQ(::setsockopt(r.client.native_handle(), SOL_SOCKET, SO_SNDBUF, &fixed, sizeof fixed), 0);
    ASSERT_EQ(::setsockopt(r.client_peer.native_handle(), SOL_SOCKET, SO_RCVBUF, &fixed, sizeof fixed), 0);
    std::string filler;
    const std::string chunk = pattern(64 << 10, 1);
    for (int i = 0, idle = 0, queued = -1; i < 1024 && idle < 3; ++i) {
        const ssize_t n = ::send(r.client.native_handle(), chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        int now_queued = 0;
        ASSERT_EQ(::ioctl(r.client_peer.native_handle(), FIONREAD, &now_queued), 0);
        if (n > 0) filler.append(chunk, 0, static_cast<std::size_t>(n));
        idle = n <= 0 && now_queued == queued ? idle + 1 : 0;
        queued = now_queued;
        if (n <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    r.start(rel, done);
    // A short read, before the FIN, whose write waits...
    asio::write(r.upstream_peer, asio::buffer("first", 5));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (rel.write_blocked_since() == std::chrono::steady_clock::time_point::max() &&
           std::chrono::steady_clock::now() < deadline) {
        r.io.run_one_for(std::chrono::milliseconds(10));
    }
    ASSERT_NE(rel.write_blocked_since(), std::chrono::steady_clock::time_point::max());
    // ...then more bytes and the FIN, seen by the poller while it waits.
    r.backend_sends_and_ends("second");
    r.io.run_for(std::chrono::milliseconds(50));
    std::string at_client;
    std::thread client = r.client_reads_to_end(at_client);
    r.run_until(done);
    client.join();
    EXPECT_EQ(at_client.size(), filler.size() + 11);
    EXPECT_TRUE(at_client == filler + "firstsecond");
    EXPECT_EQ(rel.from_backend().end, pump_end::eof);
    EXPECT_EQ(rel.from_backend().bytes, 11u);
}

TEST_P(Relay, SourceResetBecomesResetTowardsTheSink) {
    rig r;
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    rel.async_run([&] { done = true; });
    r.client_peer.set_option(asio::socket_base::linger(true, 0));
    asio::write(r.client_peer, asio::buffer("abc", 3));
    r.io.run_for(std::chrono::milliseconds(100));
    r.client_peer.close();
    r.run_until(done);
    ASSERT_TRUE(done);
    EXPECT_EQ(rel.to_backend().end, pump_end::source_reset);
    EXPECT_EQ(rel.from_backend().end, pump_end::aborted);
    char buf[8];
    boost::system::error_code ec;
    std::size_t n = 0;
    for (int i = 0; i < 3 && !ec; ++i) n += r.upstream_peer.read_some(asio::buffer(buf), ec);
    EXPECT_EQ(n, 3u);
    EXPECT_EQ(ec, asio::error::connection_reset);
}

TEST_P(Relay, BackendClosingBeforeItsFirstByteEndsEarlyWithTheClientsBytesKept) {
    rig r;
    std::string sent;
    relay rel(r.client, r.upstream, res, r.last);
    rel.keep_for_replay(&sent, 16 * 1024);
    bool done = false;
    rel.async_run([&] { done = true; });
    asio::write(r.client_peer, asio::buffer("\x16\x03\x01hello", 8));
    r.io.run_for(std::chrono::milliseconds(100));
    char buf[16];
    EXPECT_EQ(r.upstream_peer.read_some(asio::buffer(buf)), 8u);
    r.upstream_peer.close();  // FIN without a byte: an apiserver shutting down
    r.run_until(done);
    ASSERT_TRUE(done);
    EXPECT_TRUE(rel.backend_failed_early());
    EXPECT_EQ(rel.early_error(), asio::error::eof);
    EXPECT_EQ(sent, std::string("\x16\x03\x01hello", 8));
    EXPECT_FALSE(r.upstream.is_open());
    // The client saw nothing: its socket is open and its connection alive.
    ASSERT_TRUE(r.client.is_open());
    r.write_client("x");
    EXPECT_EQ(r.client_peer.read_some(asio::buffer(buf)), 1u);
}

TEST_P(Relay, BackendResettingBeforeItsFirstByteEndsEarly) {
    rig r;
    std::string sent;
    relay rel(r.client, r.upstream, res, r.last);
    rel.keep_for_replay(&sent, 16 * 1024);
    bool done = false;
    rel.async_run([&] { done = true; });
    r.upstream_peer.set_option(asio::socket_base::linger(true, 0));
    r.upstream_peer.close();
    r.run_until(done);
    ASSERT_TRUE(done);
    EXPECT_TRUE(rel.backend_failed_early());
    EXPECT_EQ(rel.early_error(), asio::error::connection_reset);
    EXPECT_TRUE(sent.empty());
    EXPECT_TRUE(r.client.is_open());
}

TEST_P(Relay, OnceTheBackendAnsweredItsFailureReachesTheClient) {
    rig r;
    std::string sent;
    relay rel(r.client, r.upstream, res, r.last);
    rel.keep_for_replay(&sent, 16 * 1024);
    bool done = false;
    rel.async_run([&] { done = true; });
    asio::write(r.client_peer, asio::buffer("hello", 5));
    asio::write(r.upstream_peer, asio::buffer("answer", 6));
    r.io.run_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(sent.empty()) << "the copy is dropped once the backend answers";
    r.upstream_peer.set_option(asio::socket_base::linger(true, 0));
    r.upstream_peer.close();
    r.run_until(done);
    ASSERT_TRUE(done);
    EXPECT_FALSE(rel.backend_failed_early());
    EXPECT_EQ(rel.from_backend().end, pump_end::source_reset);
    EXPECT_EQ(rel.from_backend().bytes, 6u);
    std::string got;
    boost::system::error_code ec;
    asio::read(r.client_peer, asio::dynamic_buffer(got), ec);
    EXPECT_EQ(got, "answer");
    EXPECT_EQ(ec, asio::error::connection_reset);
}

TEST_P(Relay, TooMuchBeforeTheFirstByteIsNotKeptForAReplay) {
    rig r;
    std::string sent;
    relay rel(r.client, r.upstream, res, r.last);
    rel.keep_for_replay(&sent, 1024);
    bool done = false;
    rel.async_run([&] { done = true; });
    const std::string big = pattern(4096, 1);
    asio::write(r.client_peer, asio::buffer(big));
    std::string at_backend;
    while (at_backend.size() < big.size()) {
        r.io.run_for(std::chrono::milliseconds(20));
        char buf[8192];
        boost::system::error_code ec;
        r.upstream_peer.non_blocking(true);
        const auto n = r.upstream_peer.read_some(asio::buffer(buf), ec);
        if (!ec) at_backend.append(buf, n);
    }
    EXPECT_TRUE(sent.empty());
    r.upstream_peer.close();
    r.io.run_for(std::chrono::milliseconds(200));
    // The backend owns the session: its close reaches the client as EOF.
    EXPECT_FALSE(rel.backend_failed_early());
    r.client_peer.close();
    r.run_until(done);
    ASSERT_TRUE(done);
    EXPECT_EQ(rel.from_backend().end, pump_end::eof);
    EXPECT_EQ(rel.to_backend().bytes, big.size());
}

TEST_P(Relay, ClosedFromOutsideEndsBothDirectionsAsAborted) {
    rig r;
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    rel.async_run([&] { done = true; });
    r.io.run_for(std::chrono::milliseconds(20));
    asio::post(r.io, [&] {
        r.client.close();
        r.upstream.close();
    });
    r.run_until(done);
    ASSERT_TRUE(done);
    EXPECT_EQ(rel.to_backend().end, pump_end::aborted);
    EXPECT_EQ(rel.from_backend().end, pump_end::aborted);
}

/// Starts `rel`, quiesces it, then has each peer send: the relay wakes for
/// each and stops at once, so the bytes wait in the kernel, as an upgrade
/// needs them to.
void quiesce_with_bytes_waiting(rig& r, relay& rel, bool& done, const std::string& to_backend,
                                const std::string& to_client) {
    rel.async_run([&done] { done = true; });
    r.io.run_for(std::chrono::milliseconds(20));
    rel.quiesce();
    asio::write(r.client_peer, asio::buffer(to_backend));
    asio::write(r.upstream_peer, asio::buffer(to_client));
    r.io.run_for(std::chrono::milliseconds(100));
}

TEST_P(Relay, QuiescedReadsNothingUntilItEndsThenGoesOnWhereItStopped) {
    rig r;
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    quiesce_with_bytes_waiting(r, rel, done, "to the backend", "to the client");
    EXPECT_EQ(r.upstream_peer.available(), 0u);
    EXPECT_EQ(r.client_peer.available(), 0u);
    EXPECT_TRUE(rel.quiet());
    EXPECT_EQ(rel.to_backend().bytes, 0u);
    rel.end_quiesce();
    std::string at_backend(14, '\0'), at_client(13, '\0');
    std::thread peers([&] {
        asio::read(r.upstream_peer, asio::buffer(at_backend));
        asio::read(r.client_peer, asio::buffer(at_client));
        r.client_peer.shutdown(tcp::socket::shutdown_send);
        r.upstream_peer.shutdown(tcp::socket::shutdown_send);
    });
    r.run_until(done);
    peers.join();
    EXPECT_EQ(at_backend, "to the backend");
    EXPECT_EQ(at_client, "to the client");
    EXPECT_EQ(rel.to_backend().end, pump_end::eof);
    EXPECT_EQ(rel.from_backend().end, pump_end::eof);
}

TEST_P(Relay, QuiescedAndClosedFromOutsideEnds) {
    // Both directions stopped (no wait pending): the close alone would
    // complete nothing, and the session would never be freed. abort() and
    // the hand-over follow it with end_quiesce().
    rig r;
    relay rel(r.client, r.upstream, res, r.last);
    bool done = false;
    quiesce_with_bytes_waiting(r, rel, done, "a", "b");
    ASSERT_FALSE(done);
    asio::post(r.io, [&] {
        r.client.close();
        r.upstream.close();
        rel.end_quiesce();
    });
    r.run_until(done);
    EXPECT_EQ(rel.to_backend().end, pump_end::aborted);
    EXPECT_EQ(rel.from_backend().end, pump_end::aborted);
}

/// One session's two legs for a relay in a ring: the peers are blocking
/// Asio sockets of `setup`, the relay's ends poll_sockets of `p`, adopted
/// by adopt() on the loop as a worker adopts them (watched by the ring).
struct ring_session {
    tcp::socket client_peer, upstream_peer;
    poll_socket client, upstream;
    std::pair<int, int> fds;
    std::chrono::steady_clock::time_point last{};
    std::optional<relay> rel;
    std::atomic<bool> done{false};
    ring_session(asio::io_context& setup, tcp::acceptor& acc, poller& p)
        : client_peer(setup), upstream_peer(setup), client(p), upstream(p) {
        fds = connect_leg_fds(acc, client_peer, upstream_peer);
    }
    void adopt() {
        EXPECT_FALSE(client.adopt_connected(fds.first));
        EXPECT_FALSE(upstream.adopt_connected(fds.second));
        EXPECT_TRUE(client.watched_by_ring() && upstream.watched_by_ring());
    }
    static void on_done(void* self) {
        auto& s = *static_cast<ring_session*>(self);
        s.client.close();
        s.upstream.close();
        s.done = true;
    }
};

/// A poller that waits in its ring, with `count` provided buffers of
/// `size` bytes, run by a thread of its own once start()ed.
struct ring_loop {
    asio::io_context setup;
    tcp::acceptor acc{setup, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    poller p;
    asio::io_context io{1};
    std::promise<void> ended;
    std::thread loop;
    ring_loop(std::size_t size, unsigned count) {
        p.attach(io, poller::wait_by::ring);
        p.provide_buffers(size, count);
    }
    ~ring_loop() { stop(); }
    void start() {
        loop = std::thread([this] {
            p.run();
            ended.set_value();
        });
    }
    /// Runs `fn` on the loop's thread and waits for it (5 s at most).
    bool on_loop(std::function<void()> fn) {
        auto done = std::make_shared<std::promise<void>>();
        auto f = done->get_future();
        p.post([fn = std::move(fn), done] {
            fn();
            done->set_value();
        });
        return f.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    }
    /// Closes `sessions` from the loop, waits (5 s) for their relays to
    /// complete, and ends the loop. True if every relay completed.
    bool end(std::initializer_list<ring_session*> sessions) {
        const bool closed = on_loop([&] {
            for (ring_session* s : sessions) {
                s->client.close();
                s->upstream.close();
            }
        });
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        auto all_done = [&] {
            for (ring_session* s : sessions)
                if (!s->done) return false;
            return true;
        };
        while (!all_done() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        stop();
        return closed && all_done();
    }
    void stop() {
        if (!loop.joinable()) return;
        p.post([this] { p.stop_watching(); });
        if (ended.get_future().wait_for(std::chrono::seconds(5)) != std::future_status::ready) p.stop_running();
        loop.join();
        p.detach();
    }
};

TEST(RelayInARing, AReadThatFindsEveryProvidedBufferTakenRelaysAfterReadinessAndIsCounted) {
    APILB_SKIP_WITHOUT_IO_URING();
    // relay.io: io_uring: a worker's provided buffers are few (64); a
    // session whose backend reads nothing holds one in its stuck send. A
    // read that finds none must still relay, through the pool after
    // readiness, not fail the session.
    ring_loop l(4096, 1);
    poller& p = l.p;
    std::atomic<std::uint64_t> empty{0};
    p.count_empty_buffers_in(&empty);
    relay_resources res{relay_config{.mode = relay_mode::copy, .buffer_size = 4096, .pipe_size = 0}};
    ring_session stuck(l.setup, l.acc, p), other(l.setup, l.acc, p);
    for (ring_session* s : {&stuck, &other}) s->rel.emplace(s->client, s->upstream, res, s->last);
    l.start();
    ASSERT_TRUE(l.on_loop([&] {
        ASSERT_TRUE(p.provides_buffers());
        for (ring_session* s : {&stuck, &other}) {
            s->adopt();
            s->rel->run(&ring_session::on_done, s);
        }
    }));
    // The stuck session's backend reads nothing: its client writes until
    // the whole path is full, 200 ms without progress (bounded: 64 MiB, 10 s).
    stuck.client_peer.non_blocking(true);
    const std::string chunk(65536, 'x');
    std::size_t written = 0;
    auto last_progress = std::chrono::steady_clock::now();
    const auto give_up = last_progress + std::chrono::seconds(10);
    while (written < (64u << 20) && std::chrono::steady_clock::now() < give_up &&
           std::chrono::steady_clock::now() - last_progress < std::chrono::milliseconds(200)) {
        boost::system::error_code ec;
        const std::size_t n = stuck.client_peer.write_some(asio::buffer(chunk), ec);
        if (n > 0) {
            written += n;
            last_progress = std::chrono::steady_clock::now();
        } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    ASSERT_LT(written, 64u << 20) << "the backend's side never filled";
    asio::write(other.client_peer, asio::buffer("hello", 5));
    std::string got;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (got.size() < 5 && std::chrono::steady_clock::now() < until) {
        pollfd in{.fd = other.upstream_peer.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&in, 1, 100) != 1) continue;
        char b[16];
        const ssize_t n = ::recv(in.fd, b, sizeof b, MSG_DONTWAIT);
        if (n <= 0) break;
        got.append(b, static_cast<std::size_t>(n));
    }
    EXPECT_EQ(got, "hello");
    EXPECT_GE(empty.load(), 1u) << "the read found a buffer: the stuck send did not hold the only one";
    EXPECT_TRUE(l.end({&stuck, &other})) << "a relay did not complete after its sockets closed";
}

/// Bytes waiting in `fd`'s receive queue.
int unread(int fd) {
    int n = -1;
    EXPECT_EQ(::ioctl(fd, FIONREAD, &n), 0);
    return n;
}

/// Waits (1 s at most) until the relay has read all the client sent.
bool client_side_emptied(const ring_session& s) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (unread(s.fds.first) != 0 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return unread(s.fds.first) == 0;
}

/// Fills the path from `s`'s relay to its backend (which reads nothing
/// yet; `filled` bytes, 64 MiB at most), starts the relay on `l`'s loop,
/// and has the client send "first": the relay reads it and its send waits
/// in the ring.
void start_with_a_send_waiting(ring_loop& l, ring_session& s, relay_resources& res, std::size_t& filled) {
    s.rel.emplace(s.client, s.upstream, res, s.last);
    const std::string filler(65536, '.');
    for (ssize_t n; filled < (64u << 20) && (n = ::send(s.fds.second, filler.data(), filler.size(), MSG_DONTWAIT)) > 0;)
        filled += static_cast<std::size_t>(n);
    ASSERT_LT(filled, 64u << 20) << "the backend's side never filled";
    l.start();
    ASSERT_TRUE(l.on_loop([&] {
        s.adopt();
        s.rel->run(&ring_session::on_done, &s);
    }));
    asio::write(s.client_peer, asio::buffer("first", 5));
    ASSERT_TRUE(client_side_emptied(s)) << "the relay did not read the client's first bytes";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    bool sending = false;
    ASSERT_TRUE(l.on_loop([&] { sending = s.upstream.submitted(poll_socket::wait_type::write); }));
    ASSERT_TRUE(sending) << "the send of the first bytes did not wait for the backend";
}

TEST(RelayInARing, TheNextRecvGoesIntoTheRingWithTheSendAndItsBytesFollowInOrder) {
    APILB_SKIP_WITHOUT_IO_URING();
    // relay.io: io_uring: a direction's next recv was submitted only once
    // the send of the bytes before it completed, in another io_uring_enter.
    // Submitted with the send, it takes what the client sends while that
    // send waits for the backend (one buffer sent, one filled), and the
    // backend still gets the bytes in order.
    ring_loop l(4096, 4);
    relay_resources res{relay_config{.mode = relay_mode::copy, .buffer_size = 4096, .pipe_size = 0}};
    ring_session s(l.setup, l.acc, l.p);
    std::size_t filled = 0;
    ASSERT_NO_FATAL_FAILURE(start_with_a_send_waiting(l, s, res, filled));
    asio::write(s.client_peer, asio::buffer("second", 6));
    EXPECT_TRUE(client_side_emptied(s)) << "no recv was in the ring while the send before it waited";
    // The backend reads: the path's filler, then the client's bytes in order.
    std::string got;
    const std::size_t want = filled + 11;
    got.reserve(want);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    char buf[65536];
    while (got.size() < want && std::chrono::steady_clock::now() < until) {
        pollfd in{.fd = s.upstream_peer.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&in, 1, 100) != 1) continue;
        const ssize_t n = ::recv(in.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
    }
    ASSERT_EQ(got.size(), want);
    EXPECT_EQ(got.substr(filled), "firstsecond");
    EXPECT_EQ(got.find_first_not_of('.'), filled);
    // The relay's counts are the loop thread's: read there.
    std::uint64_t to_backend = 0;
    ASSERT_TRUE(l.on_loop([&] { to_backend = s.rel->to_backend().bytes; }));
    EXPECT_EQ(to_backend, 11u);
    EXPECT_TRUE(l.end({&s}));
}

TEST(RelayInARing, ASendThatFailsWithTheNextRecvInTheRingEndsOnceThatRecvLetGo) {
    APILB_SKIP_WITHOUT_IO_URING();
    // The direction ends by its send (the backend resets) while its next
    // recv is in the ring: the relay completes only once the kernel let go
    // of that recv, and the client is reset, not sent a FIN.
    ring_loop l(4096, 4);
    relay_resources res{relay_config{.mode = relay_mode::copy, .buffer_size = 4096, .pipe_size = 0}};
    ring_session s(l.setup, l.acc, l.p);
    std::size_t filled = 0;
    ASSERT_NO_FATAL_FAILURE(start_with_a_send_waiting(l, s, res, filled));
    s.upstream_peer.set_option(asio::socket_base::linger(true, 0));
    s.upstream_peer.close();  // RST
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!s.done && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_TRUE(s.done) << "the relay did not complete after its backend reset";
    EXPECT_EQ(s.rel->to_backend().end, pump_end::sink_failed);
    s.client_peer.non_blocking(false);
    char c;
    boost::system::error_code ec;
    s.client_peer.read_some(asio::buffer(&c, 1), ec);
    EXPECT_EQ(ec, asio::error::connection_reset);
    EXPECT_TRUE(l.end({&s}));
}

INSTANTIATE_TEST_SUITE_P(BothRelays, Relay, ::testing::Values(relay_mode::splice, relay_mode::copy),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace apilb
