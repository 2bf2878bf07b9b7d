#include "apilb/dataplane/poller.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>

namespace apilb {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

/// A poller on its own io_context, and a loopback listener to make pairs.
struct fixture {
    poller sockets;
    asio::io_context io;
    tcp::acceptor acc{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    fixture() { sockets.attach(io); }
    ~fixture() { sockets.detach(); }

    /// A connected pair: `peer` (plain Asio, blocking) and the accepted end as a descriptor.
    int pair(tcp::socket& peer) {
        peer.connect(acc.local_endpoint());
        tcp::socket s(io);
        acc.accept(s);
        s.native_non_blocking(true);
        return s.release();
    }

    /// Runs handlers until `done` or 5 s.
    void run_until(const bool& done) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!done && std::chrono::steady_clock::now() < deadline) io.run_one_for(std::chrono::milliseconds(50));
    }
    /// Runs what is ready now and for `ms` more.
    void run_for(int ms) { io.run_for(std::chrono::milliseconds(ms)); }
};

/// Records one completion.
struct outcome {
    bool done = false;
    error_code ec;
    static void record(void* self, const error_code& ec) {
        auto& o = *static_cast<outcome*>(self);
        o.done = true;
        o.ec = ec;
    }
};

TEST(Poller, ReadWaitCompletesWhenDataArrivesAndNotBefore) {
    fixture f;
    tcp::socket peer(f.io);
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.adopt(f.pair(peer)));
    outcome o;
    s.wait(poll_socket::wait_type::read, &outcome::record, &o);
    f.run_for(50);
    EXPECT_FALSE(o.done) << "nothing was sent yet";
    peer.send(asio::buffer("abc", 3));
    f.run_until(o.done);
    ASSERT_TRUE(o.done);
    EXPECT_FALSE(o.ec);
    char buf[16];
    EXPECT_EQ(::recv(s.native_handle(), buf, sizeof buf, 0), 3);
    // The edge was consumed and the socket drained: the next wait needs new data.
    outcome again;
    s.wait(poll_socket::wait_type::read, &outcome::record, &again);
    f.run_for(50);
    EXPECT_FALSE(again.done);
    peer.send(asio::buffer("d", 1));
    f.run_until(again.done);
    EXPECT_TRUE(again.done);
    EXPECT_FALSE(again.ec);
}

TEST(Poller, AWaitNeverCompletesInsideTheCallThatStartsIt) {
    fixture f;
    tcp::socket peer(f.io);
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.adopt(f.pair(peer)));
    peer.send(asio::buffer("abc", 3));
    f.run_for(50);  // the edge arrives with no waiter: the socket is marked ready
    outcome o;
    s.wait(poll_socket::wait_type::read, &outcome::record, &o);
    EXPECT_FALSE(o.done) << "completed inside wait(): callers would recurse";
    f.run_until(o.done);
    EXPECT_TRUE(o.done);
    EXPECT_FALSE(o.ec);
}

/// Reads like the relay: after a read shorter than asked, wait again.
struct reader {
    poll_socket* s;
    std::string got;
    bool eof = false;
    static void on_ready(void* self, const error_code& ec) {
        auto& r = *static_cast<reader*>(self);
        if (ec) return;
        std::string buf(4096, '\0');
        const ssize_t n = ::recv(r.s->native_handle(), buf.data(), buf.size(), 0);
        if (n == 0) {
            r.eof = true;
            return;
        }
        if (n > 0) r.got += buf.substr(0, static_cast<std::size_t>(n));
        r.s->wait(poll_socket::wait_type::read, &reader::on_ready, &r);
    }
};

TEST(Poller, AFinBehindDataReadInPartIsNotLost) {
    // The data's edge queues the waiter; the FIN's edge comes before the
    // waiter runs; the waiter's read returns the data only (shorter than
    // asked) and it waits again: that wait must see the FIN.
    for (int round = 0; round < 20; ++round) {
        fixture f;
        tcp::socket peer(f.io);
        poll_socket s(f.sockets);
        ASSERT_FALSE(s.adopt(f.pair(peer)));
        peer.send(asio::buffer("abc", 3));
        f.run_for(5);  // harvested with no waiter: marked ready
        peer.shutdown(tcp::socket::shutdown_send);
        reader r{.s = &s, .got = {}, .eof = false};
        s.wait(poll_socket::wait_type::read, &reader::on_ready, &r);
        for (int i = 0; i < 100 && !r.eof; ++i) f.run_for(10);
        ASSERT_TRUE(r.eof) << "round " << round << ": the FIN was lost";
        EXPECT_EQ(r.got, "abc");
    }
}

TEST(Poller, CloseAbortsPendingWaitsFromTheLoop) {
    fixture f;
    tcp::socket peer(f.io);
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.adopt(f.pair(peer)));
    outcome o;
    s.wait(poll_socket::wait_type::read, &outcome::record, &o);
    s.close();
    EXPECT_FALSE(o.done);
    EXPECT_FALSE(s.is_open());
    f.run_until(o.done);
    ASSERT_TRUE(o.done);
    EXPECT_EQ(o.ec, asio::error::operation_aborted);
    // A wait on a closed socket is aborted too, never left hanging.
    outcome late;
    s.wait(poll_socket::wait_type::write, &outcome::record, &late);
    f.run_until(late.done);
    EXPECT_EQ(late.ec, asio::error::operation_aborted);
}

TEST(Poller, CancelAbortsWaitsAndKeepsTheSocket) {
    fixture f;
    tcp::socket peer(f.io);
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.adopt(f.pair(peer)));
    outcome o;
    s.wait(poll_socket::wait_type::read, &outcome::record, &o);
    s.cancel();
    f.run_until(o.done);
    EXPECT_EQ(o.ec, asio::error::operation_aborted);
    EXPECT_TRUE(s.is_open());
    outcome next;
    s.wait(poll_socket::wait_type::read, &outcome::record, &next);
    peer.send(asio::buffer("x", 1));
    f.run_until(next.done);
    EXPECT_FALSE(next.ec);
}

TEST(Poller, CancellingAWaiterQueuedForAnEdgeKeepsTheEdge) {
    // relay::fail_early cancels the client's wait; the session then relays
    // to another backend and waits on the client again: bytes that arrived
    // meanwhile must not be forgotten.
    fixture f;
    tcp::socket peer(f.io);
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.adopt(f.pair(peer)));
    peer.send(asio::buffer("abc", 3));
    f.run_for(20);  // the edge: marked ready
    outcome first;
    s.wait(poll_socket::wait_type::read, &outcome::record, &first);  // queued for it
    s.cancel();
    f.run_until(first.done);
    EXPECT_EQ(first.ec, asio::error::operation_aborted);
    outcome again;
    s.wait(poll_socket::wait_type::read, &outcome::record, &again);
    f.run_until(again.done);
    ASSERT_TRUE(again.done) << "the bytes sent before the cancel were forgotten";
    EXPECT_FALSE(again.ec);
}

TEST(Poller, ConnectSucceedsOrReportsRefusal) {
    fixture f;
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.open(tcp::v4()));
    std::optional<error_code> result;
    s.async_connect(f.acc.local_endpoint(), [&](const error_code& ec) { result = ec; });
    for (int i = 0; i < 100 && !result; ++i) f.run_for(20);
    ASSERT_TRUE(result);
    EXPECT_FALSE(*result) << result->message();

    // A port nobody listens on: take one and close it.
    tcp::endpoint closed;
    {
        tcp::acceptor a(f.io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        closed = a.local_endpoint();
    }
    poll_socket r(f.sockets);
    ASSERT_FALSE(r.open(tcp::v4()));
    std::optional<error_code> refused;
    r.async_connect(closed, [&](const error_code& ec) { refused = ec; });
    for (int i = 0; i < 100 && !refused; ++i) f.run_for(20);
    ASSERT_TRUE(refused);
    EXPECT_EQ(*refused, asio::error::connection_refused);
}

TEST(Poller, ClosingAbandonsAConnect) {
    fixture f;
    poll_socket s(f.sockets);
    ASSERT_FALSE(s.open(tcp::v4()));
    std::optional<error_code> result;
    // Closed before the loop runs: whatever the connect did, the waiter
    // hears operation_aborted (the session's connect timeout does this).
    s.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.acc.local_endpoint().port()),
                    [&](const error_code& ec) { result = ec; });
    s.close();
    for (int i = 0; i < 100 && !result; ++i) f.run_for(20);
    ASSERT_TRUE(result);
    EXPECT_EQ(*result, asio::error::operation_aborted);
}

TEST(Poller, AnEventOfAClosedSocketNeverReachesTheOneInItsSlot) {
    // A descriptor that lives on elsewhere (a child between fork and exec
    // holds a copy) stays in the epoll set after close(): its events must
    // not wake whichever socket took its place in the table.
    fixture f;
    tcp::socket peer_a(f.io), peer_b(f.io);
    auto a = std::make_unique<poll_socket>(f.sockets);
    ASSERT_FALSE(a->adopt(f.pair(peer_a)));
    const int copy = ::dup(a->native_handle());
    a->close();
    poll_socket b(f.sockets);  // takes the freed slot
    ASSERT_FALSE(b.adopt(f.pair(peer_b)));
    outcome o;
    b.wait(poll_socket::wait_type::read, &outcome::record, &o);
    peer_a.send(asio::buffer("stale", 5));
    f.run_for(100);
    EXPECT_FALSE(o.done) << "b was woken by a's data";
    peer_b.send(asio::buffer("b", 1));
    f.run_until(o.done);
    EXPECT_TRUE(o.done);
    ::close(copy);
}

}  // namespace
}  // namespace apilb
