// A timer in a worker's epoll set: a timerfd waited for through the poller.
// An Asio timer allocates an operation for every wait it starts, and from a
// coroutine Asio starts it only after the coroutine has suspended: out of
// memory there, the coroutine is destroyed unseen and its loop never runs
// again. Starting a wait here allocates nothing, so the worker's long-lived
// loops (accept, sweep, publish) cannot be lost that way. Worker thread only.
#pragma once

#include <boost/system/error_code.hpp>

#include <chrono>

#include "apilb/dataplane/poller.hpp"

namespace apilb {

/// One timer of a worker, one wait at a time; it lives in `p`'s epoll set
/// (one descriptor). Destroy it only without a pending wait, as a poll_socket.
class poll_timer {
public:
    /// Throws std::system_error if no timerfd can be made or registered.
    explicit poll_timer(poller& p);
    poll_timer(const poll_timer&) = delete;
    poll_timer& operator=(const poll_timer&) = delete;

    /// Calls `fn(arg, ec)` from the poller's loop once `at` has come (in
    /// the next wake-up if it has already): ec is empty, or operation_aborted
    /// if cancel() came first. Starting the wait allocates nothing.
    void wait_until(std::chrono::steady_clock::time_point at, poll_socket::callback fn, void* arg) noexcept;
    /// A pending wait completes with operation_aborted. May throw: queueing
    /// that completion can post to the io_context, which allocates.
    void cancel();

private:
    static void on_ready(void* self, const boost::system::error_code& ec);

    poll_socket fd_;
    poll_socket::callback fn_ = nullptr;
    void* arg_ = nullptr;
};

}  // namespace apilb
