// What poller_unit_test.cpp and poller_ring_unit_test.cpp share: the
// counters of the system calls poller_unit_test.cpp interposes for the
// whole test binary, and the fixtures of the tests of the poller's loop.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <thread>

#include "apilb/dataplane/poller.hpp"

/// EPOLL_CTL_MOD calls made by this process: the poller adds a socket once
/// and Asio re-arms a descriptor with MOD, so these count re-arms.
extern std::atomic<int> epoll_mods;
extern std::atomic<int> epoll_adds;
/// close(2) calls on descriptors `closes_watched` marks (any thread).
extern std::atomic<std::uint64_t> closes_watched;  ///< a bit per descriptor below 64
extern std::atomic<int> watched_closes;
/// Set on the thread that runs a poller's own loop (poller::run): its
/// epoll_wait calls, and those that could block (one per wake-up).
extern thread_local bool counting_epoll_waits;
extern std::atomic<long> loop_epoll_waits;
extern std::atomic<long> loop_blocking_epoll_waits;

namespace apilb::poller_test {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

/// Connects `peer` (plain Asio, blocking) to `acc` and returns the
/// accepted end as a non-blocking descriptor.
inline int accepted_end(tcp::acceptor& acc, tcp::socket& peer) {
    peer.connect(acc.local_endpoint());
    tcp::socket s(acc.get_executor());
    acc.accept(s);
    s.native_non_blocking(true);
    return s.release();
}

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

/// A poller waited for by its own loop (poller::wait_by::run, as in a
/// worker), run on a thread of its own. The loopback pairs are made with
/// Asio on another io_context: the poller's must hold no reactor.
struct run_fixture {
    asio::io_context setup;
    tcp::acceptor acc{setup, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    poller sockets;
    asio::io_context io{1};
    std::thread runner;
    std::promise<void> ended;

    explicit run_fixture(poller::wait_by by = poller::wait_by::run) { sockets.attach(io, by); }
    ~run_fixture() {
        stop();
        sockets.detach();
    }
    int pair(tcp::socket& peer) { return accepted_end(acc, peer); }
    /// Starts the loop; sockets made before are handled from now on only
    /// through on_loop().
    void start() {
        runner = std::thread([this] {
            counting_epoll_waits = true;
            sockets.run();
            ended.set_value();
        });
    }
    /// Runs `fn` on the loop's thread and waits for it (5 s at most).
    bool on_loop(std::function<void()> fn) {
        auto done = std::make_shared<std::promise<void>>();
        auto f = done->get_future();
        sockets.post([fn = std::move(fn), done] {
            fn();
            done->set_value();
        });
        return f.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    }
    /// Stops watching and waits for run() to return; forces it after 5 s.
    /// True if it ended by itself.
    bool stop() {
        if (!runner.joinable()) return true;
        sockets.post([this] { sockets.stop_watching(); });
        const bool by_itself = ended.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready;
        if (!by_itself) sockets.stop_running();
        runner.join();
        return by_itself;
    }
};

/// Waits up to 5 s for `pred`.
template <typename Pred>
bool within_5s(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::yield();
    }
    return true;
}

/// Reads every byte that comes, one wait per edge, counting them.
struct byte_reader {
    poll_socket* s;
    std::atomic<int> got{0};
    static void on_ready(void* self, const error_code& ec) {
        auto& r = *static_cast<byte_reader*>(self);
        if (ec) return;
        char c;
        while (::recv(r.s->native_handle(), &c, 1, 0) == 1) r.got.fetch_add(1);
        r.s->wait(poll_socket::wait_type::read, &byte_reader::on_ready, self);
    }
};

}  // namespace apilb::poller_test
