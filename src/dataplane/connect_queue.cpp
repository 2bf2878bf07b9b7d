#include "apilb/dataplane/connect_queue.hpp"

#include <algorithm>

#include "apilb/core/thread_role.hpp"

namespace apilb {

using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

void connect_deadlines::watch(pending_connect& c, connect_queue& q) noexcept {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // Appending to the queue of its timeout keeps every queue in deadline
    // order at O(1); the queue was made with its generation, so nothing
    // here allocates (a std::list node per new timeout once did, and a
    // connect out of memory then lost its session).
    q.entries.push_back(c);
    if (!q.pending_hook.is_linked()) queues_.push_back(q);
    if (c.deadline >= timer_at_ || stopped_) return;
    arm(c.deadline);
}

void connect_deadlines::arm(clock_type::time_point at) noexcept {
    if (stopped_) return;
    timer_at_ = at;
    timer_.wait_until(at, &connect_deadlines::on_timer, this);  // a pending wait moves to `at`
}

void connect_deadlines::on_timer(void* self, const error_code& ec) {
    if (ec) return;  // stop(): the worker is going
    static_cast<connect_deadlines*>(self)->expire();
}

void connect_deadlines::expire() {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    timer_at_ = clock_type::time_point::max();
    if (stopped_) return;
    const auto now = clock_type::now();
    auto next = clock_type::time_point::max();
    for (auto q = queues_.begin(); q != queues_.end();) {
        while (!q->entries.empty() && q->entries.front().deadline <= now) {
            pending_connect& c = q->entries.front();
            q->entries.pop_front();
            c.expire(c);  // closes the socket; the connect completes later, aborted
        }
        if (q->entries.empty()) {
            q = queues_.erase(q);  // linked again by its next connect
            continue;
        }
        next = std::min(next, q->entries.front().deadline);
        ++q;
    }
    if (next != clock_type::time_point::max()) arm(next);
}

void connect_deadlines::stop() noexcept {
    stopped_ = true;
    timer_at_ = clock_type::time_point::max();
    timer_.cancel();
}

}  // namespace apilb
