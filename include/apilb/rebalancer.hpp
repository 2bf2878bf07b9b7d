// Moves long-lived sessions back onto backends that returned or were added:
// after a rolling apiserver restart, the last one back would otherwise get
// no connections for hours, since watches never end on their own.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "apilb/runtime.hpp"

namespace apilb {

/// What the rebalancer asks the workers to close in one tick: at most
/// `quota` sessions on `backend`, oldest first, or (maglev pools, `backend`
/// null) sessions of pool `pool` that are not on their preferred backend.
/// Quotas are shared by all workers and taken with fetch_sub. Pool and
/// backend are named by identities a reload keeps (name, health block), not
/// by position: the order may reach a worker after a reload renumbered them.
struct rebalance_order {
    std::string pool;
    std::shared_ptr<const backend_health> backend;
    std::shared_ptr<std::atomic<std::int64_t>> quota;
};

/// Runs on the control thread (start, stop and each tick check it); ticks every 100 ms while some pool has
/// rebalancing enabled. Per pool, a token bucket caps closes at
/// rebalance.max_closes_per_second; each tick closes what
/// rebalance_plan() (or, for Maglev, the sessions' own preferences) asks.
class rebalancer {
public:
    using snapshot_fn = std::function<std::shared_ptr<const snapshot>()>;
    using close_fn = std::function<void(std::vector<rebalance_order>)>;

    rebalancer(boost::asio::io_context& control, snapshot_fn current, close_fn close);

    /// Starts ticking (if any pool has rebalancing enabled); call again after
    /// a reload.
    void start();
    void stop();

private:
    void tick();

    struct pool_state {
        double tokens = 0;
        std::vector<std::shared_ptr<std::atomic<std::int64_t>>> issued;  ///< last tick's quotas
    };

    boost::asio::steady_timer timer_;
    snapshot_fn current_;
    close_fn close_;
    std::map<std::string, pool_state> pools_;
    bool running_ = false;
};

}  // namespace apilb
