// A timer in a worker's epoll set: a timerfd waited for through the poller.
// An Asio timer allocates an operation for every wait it starts, and from a
// coroutine Asio starts it only after the coroutine has suspended: out of
// memory there, the coroutine is destroyed unseen and its loop never runs
// again. Starting, moving or cancelling a wait here allocates nothing (its
// completion is queued in the poller, posted by the poller's own operation),
// so the worker's long-lived loops (accept, sweep, publish, connect
// deadlines, storm control's slot tick) cannot be lost that way. Worker
// thread only.
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
    /// if cancel() came first. With a wait pending already, moves it to `at`
    /// (and `fn`, `arg`); a cancelled one still completes aborted. Allocates
    /// nothing, never completes inside the call.
    void wait_until(std::chrono::steady_clock::time_point at, poll_socket::callback fn, void* arg) noexcept;
    /// A pending wait completes with operation_aborted. Allocates nothing.
    void cancel() noexcept;
    /// A wait is pending (its callback has not run yet).
    bool waiting() const noexcept { return fn_ != nullptr; }

private:
    static void on_ready(void* self, const boost::system::error_code& ec);

    poll_socket fd_;
    poll_socket::callback fn_ = nullptr;
    void* arg_ = nullptr;
};

}  // namespace apilb
