// The sessions of one worker waiting at storm control's gate (a paced turn,
// a connect slot), ordered by when each wait ends, and the one poll_timer
// that ends them. Waiting allocates nothing: each session carries its place
// in the order (an intrusive hook), and the timer is armed without an
// allocation. A timer per session was rejected: an Asio timer allocates an
// operation per wait, and when that failed the session died with the
// backend's reservation still counted; a poll_timer per session costs a
// timerfd, its epoll_ctl and close for every gated client, in a storm, the
// moment descriptors run short. Worker thread only.
#pragma once

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>

#include "apilb/dataplane/poll_timer.hpp"

namespace apilb {

class gate_waits;

/// One session's wait at the gate. Lives in the session; leaves the order
/// when destroyed.
class gate_wait {
public:
    /// Called from the poller's loop once the wait is over.
    using callback = void (*)(void* arg);

    /// Ends the wait early, from the loop's next turn (never inside the
    /// call): a connect slot freed, the session aborted. Nothing if it is
    /// not waiting. Allocates nothing.
    void wake() noexcept;
    /// Waiting: the callback has not run yet.
    bool waiting() const noexcept { return order_hook_.is_linked(); }

private:
    friend class gate_waits;
    using auto_unlink = boost::intrusive::link_mode<boost::intrusive::auto_unlink>;

    boost::intrusive::set_member_hook<auto_unlink> order_hook_;  ///< in gate_waits::order_
    boost::intrusive::list_member_hook<auto_unlink> slot_hook_;  ///< in gate_waits::slot_waiters_
    std::chrono::steady_clock::time_point at_{};
    gate_waits* owner_ = nullptr;
    callback fn_ = nullptr;
    void* arg_ = nullptr;
};

/// The gate waits of one worker; see the file comment.
class gate_waits {
public:
    /// Its timer is in `p`'s epoll set. Throws std::system_error if no
    /// timerfd can be made.
    explicit gate_waits(poller& p) : timer_(p) {}
    gate_waits(const gate_waits&) = delete;
    gate_waits& operator=(const gate_waits&) = delete;

    /// Calls `fn(arg)` from the poller's loop at `at`, or earlier if woken.
    /// `for_slot`: waiting for a connect slot, so wake_slot_waiters() and the
    /// slot tick wake it too. `w` must not be waiting. Allocates nothing,
    /// never completes inside the call.
    void wait(gate_wait& w, std::chrono::steady_clock::time_point at, bool for_slot, gate_wait::callback fn,
              void* arg) noexcept;
    /// Wakes the first slot waiter (a slot freed on this worker); with
    /// `all`, every one. Allocates nothing.
    void wake_slot_waiters(bool all) noexcept;
    /// The worker is stopping: every wait ends now (its sessions were
    /// aborted) and so does every wait started later; the timer is not
    /// armed again, so it cannot hold the loop open.
    void stop() noexcept;

private:
    friend class gate_wait;
    struct by_time {
        bool operator()(const gate_wait& a, const gate_wait& b) const noexcept { return a.at_ < b.at_; }
    };
    using order_list = boost::intrusive::multiset<
        gate_wait, boost::intrusive::compare<by_time>, boost::intrusive::constant_time_size<false>,
        boost::intrusive::member_hook<gate_wait, boost::intrusive::set_member_hook<gate_wait::auto_unlink>,
                                      &gate_wait::order_hook_>>;
    using slot_list = boost::intrusive::list<
        gate_wait, boost::intrusive::constant_time_size<false>,
        boost::intrusive::member_hook<gate_wait, boost::intrusive::list_member_hook<gate_wait::auto_unlink>,
                                      &gate_wait::slot_hook_>>;

    /// Moves `w` to the front: it ends in the loop's next turn.
    void make_due(gate_wait& w) noexcept;
    /// Arms the timer for the earliest wait or slot tick, if earlier than
    /// it is armed for.
    void arm() noexcept;
    static void on_timer(void* self, const boost::system::error_code& ec);
    /// The timer fired: ends what is due, ticks the slot waiters, re-arms.
    /// A callback's exception (out of memory in a session, which unwound)
    /// goes to the poller, which counts it; the timer is re-armed first.
    void expire(bool all);

    order_list order_;
    slot_list slot_waiters_;
    poll_timer timer_;
    std::chrono::steady_clock::time_point timer_at_ = std::chrono::steady_clock::time_point::max();
    /// The next slot tick: slots freed on other workers are noticed every
    /// 10 ms while anyone here waits for one. max() while nobody does.
    std::chrono::steady_clock::time_point tick_at_ = std::chrono::steady_clock::time_point::max();
    bool stopped_ = false;
};

}  // namespace apilb
