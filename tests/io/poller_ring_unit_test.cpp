// The poller in a ring (relay.io: io_uring): its loop's wait, a session's
// recv, send and close through the ring, the provided buffers. Part of
// poller_unit_test, whose other file interposes the system calls counted
// here (poller_test_support.hpp).
#include <gtest/gtest.h>

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>

#include "../io_uring_host.hpp"
#include "apilb/dataplane/poller.hpp"
#include "poller_test_support.hpp"

namespace apilb {
namespace {

using namespace poller_test;

TEST(Poller, InARingItsLoopBlocksInTheRingAndTakesEventsOnlyWhenTheSetHasThem) {
    APILB_SKIP_WITHOUT_IO_URING();
    // relay.io: io_uring: the loop's one blocking system call per wake-up is
    // the ring's io_uring_enter; epoll_wait only takes the events the
    // ring's poll of the set announced, and never blocks.
    run_fixture f(poller::wait_by::ring);
    tcp::socket peer(f.setup);
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.adopt(f.pair(peer)));
    byte_reader r{&s};
    s.wait(poll_socket::wait_type::read, &byte_reader::on_ready, &r);
    const long blocking_before = loop_blocking_epoll_waits.load();
    f.start();
    ASSERT_TRUE(f.on_loop([] {}));
    EXPECT_TRUE(f.sockets.waits_in_ring());
    const long waits_before = loop_epoll_waits.load();
    constexpr int rounds = 100;
    for (int i = 0; i < rounds; ++i) {
        peer.send(asio::buffer("x", 1));
        ASSERT_TRUE(within_5s([&] { return r.got.load() == i + 1; })) << "round " << i;
    }
    const long waits = loop_epoll_waits.load() - waits_before;
    ASSERT_TRUE(f.on_loop([&] { s.close(); }));
    EXPECT_EQ(loop_blocking_epoll_waits.load(), blocking_before) << "the loop blocked in epoll_wait, not in its ring";
    // One look per byte (each wake-up of the set), plus those for on_loop's
    // wake-ups; none while nothing came.
    EXPECT_GE(waits, rounds);
    EXPECT_LE(waits, rounds + 4);
    // Quiet: the loop sleeps in the ring and looks at nothing.
    const long quiet_before = loop_epoll_waits.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(loop_epoll_waits.load(), quiet_before);
    EXPECT_TRUE(f.stop());
}

/// One operation submitted to the ring, and how it completed.
struct ring_op {
    std::atomic<bool> done{false};
    error_code ec;
    std::size_t bytes = 0;
    poll_socket* s = nullptr;
    poll_socket::wait_type w = poll_socket::wait_type::read;
    static void record(void* self, const error_code& ec) {
        auto& o = *static_cast<ring_op*>(self);
        o.ec = ec;
        o.bytes = o.s->transferred(o.w);
        o.done = true;
    }
};

/// A loop waiting in a ring, one adopted socket `s` in it and its peer.
struct ring_rig {
    run_fixture f{poller::wait_by::ring};
    tcp::socket peer{f.setup};
    poll_socket s{f.sockets};
    char in[64] = {};
    ring_rig() {
        EXPECT_FALSE(s.adopt(f.pair(peer)));
        f.start();
    }
    ~ring_rig() { f.stop(); }  // before `s` goes: the loop may still touch it
    /// Submits, from the loop, a recv into `in` that `op` records.
    bool recv(ring_op& op) {
        op.s = &s;
        return f.on_loop([&] { s.submit_recv(in, sizeof in, &ring_op::record, &op); });
    }
};

TEST(Poller, InARingARecvAndASendCompleteFromTheLoopWithTheirByteCounts) {
    APILB_SKIP_WITHOUT_IO_URING();
    ring_rig g;
    ring_op r;
    ASSERT_TRUE(g.recv(r));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(r.done.load()) << "a recv completed with nothing sent";
    g.peer.send(asio::buffer("hello", 5));
    ASSERT_TRUE(within_5s([&] { return r.done.load(); }));
    EXPECT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.bytes, 5u);
    EXPECT_EQ(std::string(g.in, 5), "hello");
    ring_op w;
    w.s = &g.s;
    w.w = poll_socket::wait_type::write;
    ASSERT_TRUE(g.f.on_loop([&] { g.s.submit_send("world", 5, &ring_op::record, &w); }));
    ASSERT_TRUE(within_5s([&] { return w.done.load(); }));
    EXPECT_FALSE(w.ec) << w.ec.message();
    EXPECT_EQ(w.bytes, 5u);
    char out[5];
    EXPECT_EQ(asio::read(g.peer, asio::buffer(out)), 5u);
    EXPECT_EQ(std::string(out, 5), "world");
    // The peer's FIN: a recv of 0 bytes, no error.
    ring_op fin;
    ASSERT_TRUE(g.recv(fin));
    g.peer.shutdown(tcp::socket::shutdown_send);
    ASSERT_TRUE(within_5s([&] { return fin.done.load(); }));
    EXPECT_FALSE(fin.ec);
    EXPECT_EQ(fin.bytes, 0u);
    ASSERT_TRUE(g.f.on_loop([&] { g.s.close(); }));
    EXPECT_TRUE(g.f.stop());
}

/// Closes (abortively or not) a socket with a recv in the ring; returns
/// the recv's outcome and what the peer then read (0 for FIN, -errno).
std::pair<error_code, int> close_with_a_recv_in_the_ring(bool abortive) {
    ring_rig g;
    ring_op r;
    EXPECT_TRUE(g.recv(r));
    EXPECT_TRUE(g.f.on_loop([&] {
        if (abortive) g.s.set_abortive_close();
        g.s.close();
    }));
    EXPECT_TRUE(within_5s([&] { return r.done.load(); })) << "the recv never completed after the close";
    // The peer learns of the close only once the kernel let go of the
    // socket: without the cancellation the recv would hold it open.
    timeval tv{.tv_sec = 5, .tv_usec = 0};
    ::setsockopt(g.peer.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c;
    const ssize_t n = ::recv(g.peer.native_handle(), &c, 1, 0);
    const int seen = n < 0 ? -errno : static_cast<int>(n);
    EXPECT_TRUE(g.f.stop());
    return {r.ec, seen};
}

TEST(Poller, InARingCloseCancelsARecvInFlightSoThePeerSeesTheFin) {
    APILB_SKIP_WITHOUT_IO_URING();
    const auto [ec, peer_read] = close_with_a_recv_in_the_ring(false);
    EXPECT_EQ(ec, asio::error::operation_aborted);
    EXPECT_EQ(peer_read, 0) << "the peer saw no FIN (-11: the socket stayed open)";
}

TEST(Poller, InARingAnAbortiveCloseWithARecvInFlightResetsThePeer) {
    APILB_SKIP_WITHOUT_IO_URING();
    const auto [ec, peer_read] = close_with_a_recv_in_the_ring(true);
    EXPECT_EQ(ec, asio::error::operation_aborted);
    EXPECT_EQ(peer_read, -ECONNRESET);
}

TEST(Poller, InARingCancelEndsARecvAndKeepsTheSocket) {
    APILB_SKIP_WITHOUT_IO_URING();
    ring_rig g;
    ring_op r;
    ASSERT_TRUE(g.recv(r));
    ASSERT_TRUE(g.f.on_loop([&] { g.s.cancel(); }));
    ASSERT_TRUE(within_5s([&] { return r.done.load(); }));
    EXPECT_EQ(r.ec, asio::error::operation_aborted);
    // The socket still works: what the peer sends now is the next recv's.
    ring_op again;
    ASSERT_TRUE(g.recv(again));
    g.peer.send(asio::buffer("x", 1));
    ASSERT_TRUE(within_5s([&] { return again.done.load(); }));
    EXPECT_FALSE(again.ec);
    EXPECT_EQ(again.bytes, 1u);
    ASSERT_TRUE(g.f.on_loop([&] { g.s.close(); }));
    EXPECT_TRUE(g.f.stop());
}

/// A recv into a provided buffer, and the buffer it got.
struct provided_op : ring_op {
    int buffer = -1;
    static void record(void* self, const error_code& ec) {
        auto& o = *static_cast<provided_op*>(self);
        o.buffer = o.s->take_provided();
        ring_op::record(self, ec);
    }
};

TEST(Poller, InARingAnIdleRecvHoldsNoProvidedBufferAndOneThatFindsNoneFailsWithEnobufs) {
    APILB_SKIP_WITHOUT_IO_URING();
    // relay.io: io_uring: tens of thousands of idle watches each have a
    // recv in the ring; the kernel picks a buffer only when bytes arrive,
    // so one buffer serves whichever socket speaks first, and a recv that
    // finds none fails with ENOBUFS (the relay then reads after readiness).
    run_fixture f(poller::wait_by::ring);
    f.sockets.provide_buffers(4096, 1);
    tcp::socket first_peer(f.setup), second_peer(f.setup);
    poll_socket first(f.sockets), second(f.sockets);
    ASSERT_FALSE(first.adopt(f.pair(first_peer)));
    ASSERT_FALSE(second.adopt(f.pair(second_peer)));
    f.start();
    provided_op a, b;
    a.s = &first;
    b.s = &second;
    ASSERT_TRUE(f.on_loop([&] {
        ASSERT_TRUE(f.sockets.provides_buffers());
        first.submit_recv_provided(&provided_op::record, &a);
        second.submit_recv_provided(&provided_op::record, &b);
    }));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(a.done.load() || b.done.load()) << "a recv completed with nothing sent";
    second_peer.send(asio::buffer("late", 4));
    ASSERT_TRUE(within_5s([&] { return b.done.load(); })) << "the idle recv submitted first held the only buffer";
    EXPECT_FALSE(b.ec) << b.ec.message();
    ASSERT_EQ(b.buffer, 0);
    EXPECT_EQ(b.bytes, 4u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.sockets.provided_buffer(0)), 4), "late");
    // The one buffer is taken: bytes for the first socket find none.
    first_peer.send(asio::buffer("early", 5));
    ASSERT_TRUE(within_5s([&] { return a.done.load(); }));
    EXPECT_EQ(a.ec, error_code(ENOBUFS, boost::system::system_category())) << a.ec.message();
    EXPECT_EQ(a.buffer, -1);
    // Given back, it takes the first socket's bytes, still in its socket.
    provided_op again;
    again.s = &first;
    ASSERT_TRUE(f.on_loop([&] {
        f.sockets.give_back(0);
        first.submit_recv_provided(&provided_op::record, &again);
    }));
    ASSERT_TRUE(within_5s([&] { return again.done.load(); }));
    EXPECT_FALSE(again.ec) << again.ec.message();
    EXPECT_EQ(again.buffer, 0);
    EXPECT_EQ(again.bytes, 5u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.sockets.provided_buffer(0)), 5), "early");
    ASSERT_TRUE(f.on_loop([&] {
        f.sockets.give_back(0);
        first.close();
        second.close();
    }));
    EXPECT_TRUE(f.stop());
}

TEST(Poller, InARingCancellingOneDirectionLeavesTheOtherInFlight) {
    APILB_SKIP_WITHOUT_IO_URING();
    // An upgrade's quiesce cancels a session's idle recv, never the send
    // of the other direction on the same socket.
    ring_rig g;
    ring_op r;
    ASSERT_TRUE(g.recv(r));
    ASSERT_TRUE(g.f.on_loop([&] {
        EXPECT_TRUE(g.s.submitted(poll_socket::wait_type::read));
        g.s.cancel_submitted(poll_socket::wait_type::write);  // none in flight: nothing happens
        g.s.cancel_submitted(poll_socket::wait_type::read);
    }));
    ASSERT_TRUE(within_5s([&] { return r.done.load(); }));
    EXPECT_EQ(r.ec, asio::error::operation_aborted);
    ASSERT_TRUE(g.f.on_loop([&] { EXPECT_FALSE(g.s.submitted(poll_socket::wait_type::read)); }));
    ASSERT_TRUE(g.f.on_loop([&] { g.s.close(); }));
    EXPECT_TRUE(g.f.stop());
}

TEST(Poller, InARingASessionsSocketsWaitThroughTheRingAndNeverEnterTheEpollSet) {
    APILB_SKIP_WITHOUT_IO_URING();
    // relay.io: io_uring: a session's sockets kept in the epoll set cost an
    // epoll_ctl each and, per wake-up, an epoll_wait(0) beside the ring's
    // io_uring_enter. Watched by the ring, a wait is a POLL_ADD batched into
    // the loop's next enter: reads, writes and connects complete as before
    // (a refused connect says so), and the set is neither touched nor looked at.
    run_fixture f(poller::wait_by::ring);
    tcp::socket peer(f.setup);
    const int accepted = f.pair(peer);
    tcp::endpoint refusing;
    {
        tcp::acceptor a(f.setup, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        refusing = a.local_endpoint();
    }
    poll_socket s(f.sockets), up(f.sockets), down(f.sockets);
    f.start();
    ASSERT_TRUE(f.on_loop([] {}));
    const int adds_before = epoll_adds.load();
    const long looks_before = loop_epoll_waits.load();
    ring_op readable, writable, connected, refused;
    readable.s = writable.s = &s;
    connected.s = &up;
    refused.s = &down;
    ASSERT_TRUE(f.on_loop([&] {
        EXPECT_FALSE(s.adopt_connected(accepted));
        EXPECT_TRUE(s.watched_by_ring());
        s.wait(poll_socket::wait_type::read, &ring_op::record, &readable);
        s.wait(poll_socket::wait_type::write, &ring_op::record, &writable);
        EXPECT_FALSE(up.open(tcp::v4()));
        up.connect(f.acc.local_endpoint(), &ring_op::record, &connected);
        EXPECT_FALSE(down.open(tcp::v4()));
        down.connect(refusing, &ring_op::record, &refused);
    }));
    ASSERT_TRUE(within_5s([&] { return writable.done.load() && connected.done.load() && refused.done.load(); }));
    EXPECT_FALSE(writable.ec);
    EXPECT_FALSE(connected.ec) << connected.ec.message();
    EXPECT_EQ(refused.ec, asio::error::connection_refused);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(readable.done.load()) << "a read wait completed with nothing to read";
    peer.send(asio::buffer("x", 1));
    ASSERT_TRUE(within_5s([&] { return readable.done.load(); }));
    EXPECT_FALSE(readable.ec);
    EXPECT_EQ(epoll_adds.load(), adds_before) << "a session's socket was added to the epoll set";
    // Waits completed by the ring, not by events taken from the set (the
    // on_loop() calls wake it through its eventfd, in the set: a look each).
    EXPECT_LE(loop_epoll_waits.load() - looks_before, 4);
    ring_op closed;
    closed.s = &s;
    ASSERT_TRUE(f.on_loop([&] {
        char c;
        EXPECT_EQ(::recv(s.native_handle(), &c, 1, 0), 1);
        s.wait(poll_socket::wait_type::read, &ring_op::record, &closed);
        s.close();  // the POLL_ADD in the ring is cancelled: the wait ends aborted
        up.close();
        down.close();
    }));
    ASSERT_TRUE(within_5s([&] { return closed.done.load(); }));
    EXPECT_EQ(closed.ec, asio::error::operation_aborted);
    EXPECT_TRUE(f.stop());
}

TEST(Poller, InARingASessionsSocketClosesByAnEntryInTheRingAndStillSendsItsFinOrReset) {
    APILB_SKIP_WITHOUT_IO_URING();
    // relay.io: io_uring: a session's socket closed with close(2), one
    // system call each, where the loop's next io_uring_enter can carry an
    // IORING_OP_CLOSE. Closed with a wait in the ring, the peer still gets
    // a FIN, or a reset when the close is abortive.
    run_fixture f(poller::wait_by::ring);
    tcp::socket graceful_peer(f.setup), abortive_peer(f.setup);
    const int graceful_fd = f.pair(graceful_peer);
    const int abortive_fd = f.pair(abortive_peer);
    ASSERT_LT(std::max(graceful_fd, abortive_fd), 64);
    poll_socket graceful(f.sockets), abortive(f.sockets);
    f.start();
    ring_op a, b;
    a.s = &graceful;
    b.s = &abortive;
    closes_watched = (std::uint64_t{1} << graceful_fd) | (std::uint64_t{1} << abortive_fd);
    ASSERT_TRUE(f.on_loop([&] {
        EXPECT_FALSE(graceful.adopt_connected(graceful_fd));
        EXPECT_FALSE(abortive.adopt_connected(abortive_fd));
        graceful.wait(poll_socket::wait_type::read, &ring_op::record, &a);
        abortive.wait(poll_socket::wait_type::read, &ring_op::record, &b);
    }));
    ASSERT_TRUE(f.on_loop([&] {
        graceful.close();
        abortive.set_abortive_close();
        abortive.close();
    }));
    ASSERT_TRUE(within_5s([&] { return a.done.load() && b.done.load(); }));
    EXPECT_EQ(a.ec, asio::error::operation_aborted);
    EXPECT_EQ(b.ec, asio::error::operation_aborted);
    char c;
    error_code ec;
    graceful_peer.read_some(asio::buffer(&c, 1), ec);
    EXPECT_EQ(ec, asio::error::eof);
    abortive_peer.read_some(asio::buffer(&c, 1), ec);
    EXPECT_EQ(ec, asio::error::connection_reset);
    closes_watched = 0;
    EXPECT_EQ(watched_closes.load(), 0) << "a session's socket was closed by a system call of its own";
    EXPECT_TRUE(f.stop());
}

TEST(Poller, InARingTheLoopEndsOnlyOnceItsCancelledOperationsCompleted) {
    APILB_SKIP_WITHOUT_IO_URING();
    // A worker's shutdown closes its sessions and stops watching: run()
    // must still deliver the cancelled recvs, or their sessions are never
    // freed.
    ring_rig g;
    ring_op r;
    r.s = &g.s;
    g.f.sockets.post([&] {
        g.s.submit_recv(g.in, sizeof g.in, &ring_op::record, &r);
        g.s.close();
        g.f.sockets.stop_watching();
    });
    ASSERT_EQ(g.f.ended.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
    g.f.runner.join();
    EXPECT_TRUE(r.done.load());
    EXPECT_EQ(r.ec, asio::error::operation_aborted);
}

}  // namespace
}  // namespace apilb
