// What a worker's sessions share: rate-limited warnings, the pause on
// running out of descriptors, storm control's connect-slot waiters and the
// deadline queue of pending backend connects.
#include "apilb/session.hpp"
#include "apilb/thread_role.hpp"

#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>

#include <algorithm>
#include <cerrno>

namespace apilb {

namespace asio = boost::asio;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

bool is_resource_exhaustion(const error_code& ec) {
    if (ec.category() != boost::system::system_category() && ec.category() != asio::error::get_system_category()) {
        return false;
    }
    const int e = ec.value();
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

void worker_context::pause_accepting(const error_code& ec, const char* where) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    stats.resource_errors_total.fetch_add(1, std::memory_order_relaxed);
    const auto now = clock_type::now();
    if (exhausted_since == clock_type::time_point{}) exhausted_since = now;
    const bool resetting = resetting_clients();
    if (!resetting) accept_paused_until = now + accept_backoff;
    std::uint64_t suppressed = 0;
    if (resource_warnings.allow(suppressed)) {
        const std::string what =
            resetting ? fmt::format("for {}ms now; resetting new clients until it is over",
                                    std::chrono::duration_cast<std::chrono::milliseconds>(now - exhausted_since).count())
                      : fmt::format("pausing accepts for {}ms", accept_backoff.count());
        spdlog::warn("{} failed: {}; {}{}", where, ec.message(), what,
                     suppressed ? fmt::format(" [{} similar suppressed]", suppressed) : "");
    }
    if (!resetting) accept_backoff = std::min(accept_backoff * 2, std::chrono::milliseconds(1000));
}

bool worker_context::resetting_clients() const {
    return exhausted_since != clock_type::time_point{} && clock_type::now() - exhausted_since >= max_backlog_wait;
}

bool worker_context::reserve_spare() {
    if (spare_fd < 0) spare_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    return spare_fd >= 0;
}

void worker_context::wake_slot_waiters(bool all) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    for (auto* t : slot_waiters) {
        t->cancel();
        if (!all) break;
    }
}

void worker_context::arm_slot_tick(const asio::any_io_executor& ex) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    if (slot_tick_armed || slot_waiters.empty()) return;
    if (!slot_tick) slot_tick = std::make_unique<asio::steady_timer>(ex);
    slot_tick_armed = true;
    slot_tick->expires_after(std::chrono::milliseconds(10));
    slot_tick->async_wait([this, ex](const error_code& ec) {
        slot_tick_armed = false;
        if (ec) return;
        wake_slot_waiters(true);  // each retries; who finds no slot waits again
        arm_slot_tick(ex);
    });
}

void worker_context::watch_connect(pending_connect& c, std::chrono::milliseconds timeout,
                                   const asio::any_io_executor& ex) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    // Appending to the queue of its timeout keeps every queue in deadline
    // order at O(1); there is one queue, or two across a reload that
    // changed timeouts.connect.
    auto q = std::find_if(connect_queues.begin(), connect_queues.end(),
                          [timeout](const connect_queue& x) { return x.timeout == timeout; });
    if (q == connect_queues.end()) q = connect_queues.insert(connect_queues.end(), connect_queue{timeout, {}});
    q->entries.push_back(c);
    if (c.deadline >= connect_timer_at || connects_stopped) return;
    if (!connect_timer) connect_timer = std::make_unique<asio::steady_timer>(ex);
    arm_connect_timer(c.deadline, ex);
}

void worker_context::arm_connect_timer(clock_type::time_point at, const asio::any_io_executor& ex) {
    if (connects_stopped) return;
    connect_timer_at = at;
    connect_timer->expires_at(at);  // a wait still pending completes as aborted
    connect_timer->async_wait([this, ex](const error_code& ec) {
        if (ec) return;  // moved earlier (that wait re-arms), or the worker is going
        expire_connects(ex);
    });
}

void worker_context::expire_connects(const asio::any_io_executor& ex) {
    APILB_ASSERT_DATA_PATH_ROLE(worker);
    connect_timer_at = clock_type::time_point::max();
    if (connects_stopped) return;
    const auto now = clock_type::now();
    auto next = clock_type::time_point::max();
    for (auto q = connect_queues.begin(); q != connect_queues.end();) {
        while (!q->entries.empty() && q->entries.front().deadline <= now) {
            pending_connect& c = q->entries.front();
            q->entries.pop_front();
            c.expire(c);  // closes the socket; the connect completes later, aborted
        }
        if (q->entries.empty() && connect_queues.size() > 1) {
            q = connect_queues.erase(q);  // a timeout no longer in use
            continue;
        }
        if (!q->entries.empty()) next = std::min(next, q->entries.front().deadline);
        ++q;
    }
    if (next != clock_type::time_point::max()) arm_connect_timer(next, ex);
}

void worker_context::stop_connect_timer() {
    connects_stopped = true;
    connect_timer_at = clock_type::time_point::max();
    if (connect_timer) connect_timer->cancel();
}

generation::generation(std::shared_ptr<const snapshot> s) : snap(std::move(s)) {
    for (const auto& p : snap->pools) balancers.emplace_back(p.backends.size());
}

worker_context::worker_context(std::shared_ptr<const snapshot> s, process_stats& st, poller& p)
    : current(std::make_shared<generation>(std::move(s))),
      stats(st),
      sockets(p),
      relay(snap().cfg->relay),
      max_connections(snap().cfg->limits.max_connections) {}

}  // namespace apilb
