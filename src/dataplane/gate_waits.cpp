#include "apilb/dataplane/gate_waits.hpp"

#include <algorithm>

#include "apilb/core/thread_role.hpp"

namespace apilb {

using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

/// How often slot waiters look for a slot freed on another worker.
constexpr std::chrono::milliseconds slot_tick{10};
/// When a woken wait is due: before every real time (the clock counts from
/// boot), and, unlike time_point::min(), with no overflow in the timer's
/// `at - now`.
constexpr clock_type::time_point due_now{};

}  // namespace

void gate_wait::wake() noexcept {
    if (!waiting()) return;
    owner_->make_due(*this);
    owner_->arm();
}

void gate_waits::wait(gate_wait& w, clock_type::time_point at, bool for_slot, gate_wait::callback fn,
                      void* arg) noexcept {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    w.owner_ = this;
    w.fn_ = fn;
    w.arg_ = arg;
    w.at_ = at;
    order_.insert(w);
    if (for_slot) {
        slot_waiters_.push_back(w);
        if (tick_at_ == clock_type::time_point::max()) tick_at_ = clock_type::now() + slot_tick;
    }
    arm();
}

void gate_waits::wake_slot_waiters(bool all) noexcept {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    if (slot_waiters_.empty()) return;
    // make_due() takes each out of the list: a second slot freed before the
    // first waiter ran wakes the next one, not the same one again.
    do {
        make_due(slot_waiters_.front());
    } while (all && !slot_waiters_.empty());
    arm();
}

void gate_waits::make_due(gate_wait& w) noexcept {
    w.slot_hook_.unlink();
    order_.erase(order_.iterator_to(w));
    w.at_ = due_now;
    order_.insert(order_.begin(), w);
}

void gate_waits::arm() noexcept {
    if (stopped_) {
        // Every wait ends at once, aborted sessions all: through a cancelled
        // wait, which completes from the loop even once the worker no longer
        // watches its epoll set.
        if (order_.empty() || timer_.waiting()) return;
        timer_.wait_until(clock_type::now(), &gate_waits::on_timer, this);
        timer_.cancel();
        return;
    }
    auto next = order_.empty() ? clock_type::time_point::max() : order_.begin()->at_;
    if (!slot_waiters_.empty()) next = std::min(next, tick_at_);
    if (next >= timer_at_) return;  // armed for that or earlier already
    timer_at_ = next;
    timer_.wait_until(next, &gate_waits::on_timer, this);  // a pending wait moves to `next`
}

void gate_waits::on_timer(void* self, const error_code& ec) {
    static_cast<gate_waits*>(self)->expire(static_cast<bool>(ec));  // ec: stop()
}

void gate_waits::expire(bool all) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // Re-armed however this ends: waits still due then run in the next turn.
    struct rearm {
        gate_waits& g;
        ~rearm() { g.arm(); }
    } rearm_on_exit{*this};
    timer_at_ = clock_type::time_point::max();
    const auto now = clock_type::now();
    if (all) {
        // All keys become equal: the order stays valid.
        for (gate_wait& w : order_) w.at_ = due_now;
    }
    if (tick_at_ <= now) {
        tick_at_ = clock_type::time_point::max();  // set again by who waits on
        while (!slot_waiters_.empty()) make_due(slot_waiters_.front());
    }
    // A callback may start a wait again; it ends after `now`, so this loop
    // does not meet it (a woken one, due at once, runs in this batch).
    while (!order_.empty() && order_.begin()->at_ <= now) {
        gate_wait& w = *order_.begin();
        order_.erase(order_.begin());
        w.slot_hook_.unlink();
        w.fn_(w.arg_);
    }
}

void gate_waits::stop() noexcept {
    stopped_ = true;
    tick_at_ = clock_type::time_point::max();
    timer_at_ = clock_type::time_point::max();
    // A pending wait completes aborted, which ends every wait; without one,
    // a wait started only to be cancelled does the same.
    if (!timer_.waiting()) timer_.wait_until(clock_type::now(), &gate_waits::on_timer, this);
    timer_.cancel();
}

}  // namespace apilb
