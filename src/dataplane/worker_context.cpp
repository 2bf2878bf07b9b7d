// What a worker's sessions share: rate-limited warnings, the pause on
// running out of descriptors and the generations sessions start in.
#include "apilb/dataplane/worker_context.hpp"
#include "apilb/core/thread_role.hpp"

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
            resetting
                ? fmt::format("for {}ms now; resetting new clients until it is over",
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

generation::generation(std::shared_ptr<const snapshot> s) : snap(std::move(s)), connects(snap->cfg->timeouts.connect) {
    for (const auto& p : snap->pools) balancers.emplace_back(p.backends.size());
}

worker_context::worker_context(std::shared_ptr<const snapshot> s, process_stats& st, poller& p)
    : current(std::make_shared<generation>(std::move(s))),
      stats(st),
      sockets(p),
      relay(snap().cfg->relay),
      max_connections(snap().cfg->limits.max_connections),
      gate(p),
      connects(p) {}

}  // namespace apilb
