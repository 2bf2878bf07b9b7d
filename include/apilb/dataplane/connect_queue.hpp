// The deadlines of a worker's backend connects in progress, kept in queues
// and expired from one timer: an Asio timer per connect (armed, then
// cancelled, its handler run anyway) cost about 2 µs of a new connection's
// ~75. The one timer is a poll_timer: an Asio wait that could not allocate
// would have ended every connect deadline of the worker for good. Worker
// thread only.
#pragma once

#include <boost/intrusive/list.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>

#include "apilb/dataplane/poll_timer.hpp"

namespace apilb {

/// A backend connect in progress and when it times out. Lives in the
/// connecting session; unlinks itself when destroyed.
struct pending_connect : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
    std::chrono::steady_clock::time_point deadline;
    /// Called by the worker, unlinked, once the deadline has passed.
    void (*expire)(pending_connect&) = nullptr;
};

using pending_connect_list = boost::intrusive::list<pending_connect, boost::intrusive::constant_time_size<false>>;

/// Pending connects with one timeout, in the order they started, which is
/// deadline order. Each config generation of a worker has its own, made
/// with it (worker start, reload), so that a connect never allocates one;
/// the sessions that start in a generation hold it, and its queue, until
/// they end. Not movable: the worker's deadlines link to it.
struct connect_queue {
    explicit connect_queue(std::chrono::milliseconds t) : timeout(t) {}
    connect_queue(const connect_queue&) = delete;
    connect_queue& operator=(const connect_queue&) = delete;

    const std::chrono::milliseconds timeout;
    pending_connect_list entries;
    /// In connect_deadlines' list of queues with pending connects.
    boost::intrusive::list_member_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> pending_hook;
};

/// A worker's pending connects, in the queues of the generations that have
/// any (one, or two for a while after a reload changed timeouts.connect),
/// and the one timer that expires them, armed for the earliest deadline
/// while any is pending.
class connect_deadlines {
public:
    /// Its timer is in `p`'s epoll set. Throws std::system_error if no
    /// timerfd can be made.
    explicit connect_deadlines(poller& p) : timer_(p) {}

    /// Starts timing `c` out at c.deadline, `q.timeout` after its start; `q`
    /// is the queue of the session's generation. Allocates nothing.
    void watch(pending_connect& c, connect_queue& q) noexcept;
    /// The worker is stopping: the timer is cancelled and never armed again,
    /// so it cannot hold the loop open (sessions are aborted instead).
    void stop() noexcept;

private:
    void arm(std::chrono::steady_clock::time_point at) noexcept;
    static void on_timer(void* self, const boost::system::error_code& ec);
    /// The timer fired: expires what is due, re-arms for the rest.
    void expire();

    using queue_list =
        boost::intrusive::list<connect_queue, boost::intrusive::constant_time_size<false>,
                               boost::intrusive::member_hook<connect_queue, decltype(connect_queue::pending_hook),
                                                             &connect_queue::pending_hook>>;
    queue_list queues_;  ///< those with pending connects (or emptied since the last expiry)
    poll_timer timer_;
    std::chrono::steady_clock::time_point timer_at_ = std::chrono::steady_clock::time_point::max();
    bool stopped_ = false;
};

}  // namespace apilb
